"""Steps that train on the simulation: QAT and Bayesian Bits, from labels or by distillation.

Both take shuffled training batches per epoch and validation batches for model selection,
from ``--validation`` or else a held-out part of the training data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qaas_engine.cost.shapes import layer_shapes
from qaas_engine.data import Dataset
from qaas_engine.quant.bayesian_bits import BayesianBitsConfig, cost_terms, train_bayesian_bits
from qaas_engine.quant.qat import QATConfig, train_qat
from qaas_engine.state import PipelineState, to_torch

VALIDATION_FRACTION = 0.1

Batches = Iterator[tuple[dict[str, torch.Tensor], torch.Tensor | None]]


def qat(state: PipelineState) -> dict[str, Any]:
    data = TrainingData.of(state)
    spec = state.spec
    target = None
    if spec.max_accuracy_drop is not None and data.validation.labels is not None:
        target = _float_top1(state, data.validation) - spec.max_accuracy_drop / 100.0
    config = QATConfig(
        epochs=spec.qat_epochs,
        weight_lr=spec.qat_weight_lr,
        range_lr=spec.qat_range_lr,
        learn_ranges=spec.qat_learn_ranges,
        seed=spec.seed,
        target_top1=target,
    )
    report = train_qat(
        state.quantized(),
        data.epoch_batches,
        data.validation_batches,
        state.reference_weights(),
        config,
        state.progress,
        state.should_stop,
    )
    report["validation_source"] = data.source
    return report


def bayesian_bits(state: PipelineState) -> dict[str, Any]:
    spec = state.spec
    data = TrainingData.of(state)
    feeds, _ = next(data.training.batches(1))
    layers = layer_shapes(state.model, state.executor, to_torch(feeds))
    config = BayesianBitsConfig(
        epochs=spec.bayesian_bits_epochs,
        finetune_epochs=spec.bayesian_bits_finetune_epochs,
        strength=spec.bayesian_bits_strength,
        cost=spec.bayesian_bits_cost,
        prune=spec.bayesian_bits_prune,
        seed=spec.seed,
    )
    sim = state.quantized()
    report = train_bayesian_bits(
        sim,
        data.epoch_batches,
        data.validation_batches,
        state.reference_weights(),
        cost_terms(sim, layers),
        state.energy_profile,
        config,
        state.progress,
        state.should_stop,
    )
    report["validation_source"] = data.source
    return report


@dataclass(frozen=True)
class TrainingData:
    """The training set, the validation set, and where the validation set came from."""

    training: Dataset
    validation: Dataset
    source: str
    seed: int
    batch_size: int

    @classmethod
    def of(cls, state: PipelineState) -> TrainingData:
        # The registry's needs are checked before any step runs; this guards direct callers.
        if state.training is None:
            raise RuntimeError("a training step ran without training data")
        spec = state.spec
        if state.validation is not None:
            return cls(state.training, state.validation, "--validation", spec.seed, spec.batch_size)
        training, validation = state.training.split(VALIDATION_FRACTION, seed=spec.seed)
        source = f"held-out {VALIDATION_FRACTION:.0%} of the training data"
        return cls(training, validation, source, spec.seed, spec.batch_size)

    def epoch_batches(self, epoch: int) -> Batches:
        """The training set in an order fixed by seed and epoch."""
        order = np.random.default_rng(self.seed * 1000 + epoch).permutation(
            self.training.num_samples
        )
        for feeds, labels in self.training.subset(order).batches(self.batch_size):
            yield to_torch(feeds), _labels(labels)

    def validation_batches(self) -> Batches:
        for feeds, labels in self.validation.batches(self.batch_size):
            yield to_torch(feeds), _labels(labels)


def _labels(labels: np.ndarray | None) -> torch.Tensor | None:
    return None if labels is None else torch.from_numpy(labels)


def _float_top1(state: PipelineState, data: Dataset) -> float:
    output = state.executor.output_names[0]
    hits = 0
    with torch.no_grad():
        for feeds, labels in data.batches(state.spec.batch_size):
            assert labels is not None  # called only for labelled validation data
            out = state.executor.run(to_torch(feeds), weights=state.float_weights)[output]
            hits += int((out.reshape(len(labels), -1).argmax(1).numpy() == labels).sum())
    return hits / data.num_samples
