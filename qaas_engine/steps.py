"""Pipeline steps registered by name: each is a thin adapter from ``PipelineState`` to one
algorithm module, returning the data its part of the report needs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qaas_engine.errors import SpecError
from qaas_engine.pipeline import PipelineState, Step, register_step, seeds
from qaas_engine.quant.adaround import AdaRoundConfig, adaround
from qaas_engine.quant.bayesian_bits import BayesianBitsConfig, cost_terms, train_bayesian_bits
from qaas_engine.quant.bias_correction import (
    analytical_bias_correction,
    empirical_bias_correction,
)
from qaas_engine.quant.moments import propagate
from qaas_engine.quant.qat import QATConfig, train_qat
from qaas_engine.reporting.energy import layer_shapes
from qaas_engine.transforms.bias_absorption import absorb_high_biases
from qaas_engine.transforms.cle import equalize


def _cle(state: PipelineState) -> dict[str, Any]:
    report = equalize(state.model, state.channel_stats)
    return {
        "iterations": report.iterations,
        "equalized": report.equalized,
        "skipped": report.skipped,
        "clips_made_exact": report.clips_made_exact,
        "weight_ranges": report.ranges,
    }


def _observed_minimum(state: PipelineState, tensors: set[str]) -> dict[str, np.ndarray]:
    """Per-channel minimum of the given tensors over the calibration data."""
    minimum: dict[str, np.ndarray] = {}

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        if name in tensors:
            dims = [0] + list(range(2, value.dim())) if value.dim() >= 3 else [0]
            low = value.detach().double().amin(dim=dims).cpu().numpy()
            minimum[name] = low if name not in minimum else np.minimum(minimum[name], low)
        return value

    with torch.no_grad():
        for feeds in state.calibration_feeds():
            state.executor.run(feeds, hook=hook)
    return minimum


def _bias_absorption(state: PipelineState) -> dict[str, Any]:
    observed = None
    if state.calibration is not None:
        layer_outputs = {
            n.outputs[0] for n in state.executor.nodes if n.op_type in ("Conv", "Gemm")
        }
        observed = _observed_minimum(state, layer_outputs)
    result = absorb_high_biases(state.model, state.channel_stats, observed)
    result["source"] = "calibration minimum" if observed is not None else "BatchNorm statistics"
    return result


def _bias_correction(state: PipelineState) -> dict[str, Any]:
    sim = state.sim
    if state.calibration is not None:
        return empirical_bias_correction(
            sim, state.calibration_feeds, state.progress, state.float_weights
        )
    if not state.channel_stats:
        raise SpecError(
            "bias_correction without calibration data needs BatchNorm statistics, and the model "
            "has none; give --calibration NPZ"
        )
    return analytical_bias_correction(sim, propagate(state.model, seeds(state)))


register_step(
    Step(
        "cle",
        "float",
        _cle,
        "cross-layer equalization of Conv/Gemm -> (P)ReLU -> Conv/Gemm chains, depthwise included",
    )
)
register_step(
    Step(
        "bias_absorption",
        "float",
        _bias_absorption,
        "high-bias absorption into the next layer (after cle)",
    )
)
register_step(
    Step(
        "bias_correction",
        "quantized",
        _bias_correction,
        "empirical bias correction with calibration data; analytical from BN statistics without",
    )
)


def _adaround(state: PipelineState) -> dict[str, Any]:
    if state.calibration is None:
        raise SpecError("adaround learns from data: give --calibration NPZ (labels not needed)")
    config = AdaRoundConfig(iterations=state.spec.adaround_iterations)
    return adaround(
        state.sim,
        state.calibration_feeds,
        config,
        state.progress,
        state.should_stop,
        state.float_weights,
    )


register_step(
    Step(
        "adaround",
        "quantized",
        _adaround,
        "learned rounding of weights, layer by layer, from unlabelled calibration data",
    )
)


VALIDATION_FRACTION = 0.1


def _qat(state: PipelineState) -> dict[str, Any]:
    epoch_batches, validation_batches, validation, source = _training_data(state, "qat")
    spec = state.spec
    target = None
    if spec.max_accuracy_drop is not None and validation.labels is not None:
        float_top1 = _float_top1(state, validation)
        target = float_top1 - spec.max_accuracy_drop / 100.0
    config = QATConfig(
        epochs=spec.qat_epochs,
        weight_lr=spec.qat_weight_lr,
        range_lr=spec.qat_range_lr,
        learn_ranges=spec.qat_learn_ranges,
        seed=spec.seed,
        target_top1=target,
    )
    report = train_qat(
        state.sim,
        epoch_batches,
        validation_batches,
        state.float_weights,
        config,
        state.progress,
        state.should_stop,
    )
    report["validation_source"] = source
    return report


def _tensors(feeds: dict) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in feeds.items()}


def _labels(labels) -> torch.Tensor | None:
    return None if labels is None else torch.from_numpy(labels)


def _float_top1(state: PipelineState, data) -> float:
    output = state.executor.output_names[0]
    hits = 0
    with torch.no_grad():
        for feeds, labels in data.batches(state.spec.batch_size):
            out = state.executor.run(_tensors(feeds), weights=state.float_weights)[output]
            hits += int((out.reshape(len(labels), -1).argmax(1).numpy() == labels).sum())
    return hits / data.num_samples


register_step(
    Step(
        "qat",
        "quantized",
        _qat,
        "quantization-aware training with learned ranges, from labels or by distillation",
    )
)


def _training_data(state: PipelineState, step: str):
    """Shuffled training batches per epoch, validation batches, the validation set, and where
    it came from (``--validation``, else a held-out part of the training data)."""
    if state.training is None:
        raise SpecError(f"{step} needs training data: --training NPZ (labels used when present)")
    training, validation = state.training, state.validation
    if validation is None:
        training, validation = training.split(VALIDATION_FRACTION, seed=state.spec.seed)
    spec = state.spec

    def epoch_batches(epoch: int):
        order = np.random.default_rng(spec.seed * 1000 + epoch).permutation(training.num_samples)
        for feeds, labels in training.subset(order).batches(spec.batch_size):
            yield _tensors(feeds), _labels(labels)

    def validation_batches():
        for feeds, labels in validation.batches(spec.batch_size):
            yield _tensors(feeds), _labels(labels)

    source = (
        "--validation"
        if state.validation is not None
        else f"held-out {VALIDATION_FRACTION:.0%} of the training data"
    )
    return epoch_batches, validation_batches, validation, source


def _bayesian_bits(state: PipelineState) -> dict[str, Any]:
    spec = state.spec
    epoch_batches, validation_batches, _, source = _training_data(state, "bayesian_bits")
    feeds, _ = next(state.training.batches(1))
    layers = layer_shapes(state.model, state.executor, _tensors(feeds))
    config = BayesianBitsConfig(
        epochs=spec.bayesian_bits_epochs,
        finetune_epochs=spec.bayesian_bits_finetune_epochs,
        strength=spec.bayesian_bits_strength,
        cost=spec.bayesian_bits_cost,
        prune=spec.bayesian_bits_prune,
        seed=spec.seed,
    )
    report = train_bayesian_bits(
        state.sim,
        epoch_batches,
        validation_batches,
        state.float_weights,
        cost_terms(state.sim, layers),
        state.energy_profile,
        config,
        state.progress,
        state.should_stop,
    )
    report["validation_source"] = source
    return report


register_step(
    Step(
        "bayesian_bits",
        "quantized",
        _bayesian_bits,
        "mixed precision: learned bit-width per weight and activation (2/4/8/16) and pruned "
        "channels, weighted by the energy model; from labels or by distillation",
    )
)
