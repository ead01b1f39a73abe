"""Bias correction (Nagel et al. 2019, section 4.2): undo the mean shift quantization causes.

Quantized weights ``W~ = W + eps`` shift each output channel's mean by ``eps E[x]``. Empirical
correction measures the float and quantized per-channel means of every layer's output on the
calibration data, layer by layer so each correction sees the corrected layers before it.
Analytical correction needs no data: ``E[x]`` comes from the preceding BN's statistics through
its activation. Only the bias changes; its int32 grid follows the weight and input scales.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from qaas_engine.quant.moments import Moments
from qaas_engine.quant.sim import QuantSim

Feeds = dict[str, torch.Tensor]


def _channel_mean(value: torch.Tensor) -> tuple[np.ndarray, int]:
    """Sum over every axis but the channel axis (1, or the last for 2-D), and the count."""
    if value.dim() >= 3:
        dims = [0] + list(range(2, value.dim()))
    else:
        dims = [0]
    count = value.numel() // value.shape[1 if value.dim() >= 2 else 0]
    return value.double().sum(dim=dims).cpu().numpy(), count


class _MeanMeter:
    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, value: torch.Tensor) -> None:
        total, count = _channel_mean(value.detach())
        self.total = total if self.total is None else self.total + total
        self.count += count

    @property
    def mean(self) -> np.ndarray:
        if self.total is None:
            raise ValueError("no batch was measured")
        return np.asarray(self.total / max(self.count, 1))


def correctable_layers(sim: QuantSim) -> list[tuple[str, str, str]]:
    """(weight, bias, output tensor) of quantized layers with a constant bias, in graph order."""
    layers = []
    for node in sim.torch_executor().nodes:
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3:
            continue
        weight, bias = node.inputs[1], node.inputs[2]
        if weight in sim.weight_encodings and bias in sim.executor.weights:
            layers.append((weight, bias, node.outputs[0]))
    return layers


def layer_names(sim: QuantSim) -> dict[str, str]:
    """Output tensor -> the node that writes it: a report names the layer as it exists in the
    exported model (a folded BatchNorm leaves its output tensor's name on the Conv before it)."""
    return {n.outputs[0]: n.name or n.outputs[0] for n in sim.executor.nodes if n.outputs}


def _float_means(
    sim: QuantSim, batches: Callable[[], Iterable[Feeds]], tensors: set[str], float_weights
):
    meters = {name: _MeanMeter() for name in tensors}

    def hook(name: str, value: torch.Tensor) -> torch.Tensor:
        if name in meters:
            meters[name].add(value)
        return value

    with torch.no_grad():
        for feeds in batches():
            sim.executor.run(feeds, hook=hook, weights=float_weights)
    return {name: meter.mean for name, meter in meters.items()}


def _quantized_means(sim: QuantSim, batches, tensors: list[str]) -> dict[str, np.ndarray]:
    meters = {name: _MeanMeter() for name in tensors}
    with torch.no_grad():
        for feeds in batches():
            outputs = sim.run(feeds, outputs=tensors)
            for name in tensors:
                meters[name].add(outputs[name])
    return {name: meter.mean for name, meter in meters.items()}


def empirical_bias_correction(
    sim: QuantSim,
    batches: Callable[[], Iterable[Feeds]],
    progress: Callable[[str, float], None] | None = None,
    float_weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    layers = correctable_layers(sim)
    names = layer_names(sim)
    reference = _float_means(sim, batches, {out for _, _, out in layers}, float_weights)
    rows = []
    for index, (_, bias, output) in enumerate(layers):
        quantized = _quantized_means(sim, batches, [output])[output]
        delta = reference[output] - quantized
        _add_to_bias(sim, bias, delta)
        rows.append(
            {
                "layer": names.get(output, output),
                "output": output,
                "bias": bias,
                "error_before": np.abs(delta).tolist(),
            }
        )
        if progress:
            progress("bias_correction", (index + 1) / max(len(layers), 1))
    after = _quantized_means(sim, batches, [out for _, _, out in layers])
    for row, (_, _, output) in zip(rows, layers, strict=True):
        row["error_after"] = np.abs(reference[output] - after[output]).tolist()
    return {"mode": "empirical", "layers": rows}


def analytical_bias_correction(sim: QuantSim, input_moments: dict[str, Moments]) -> dict[str, Any]:
    """``b -= eps E[x]`` with ``E[x]`` from BN statistics propagated to each layer's input."""
    rows, skipped = [], []
    quantized = sim.quantized_weights()  # builds the torch executor
    inputs_of = {node.outputs[0]: node.inputs[0] for node in sim.executor.nodes if node.outputs}
    names = layer_names(sim)
    for weight, bias, output in correctable_layers(sim):
        source = inputs_of[output]
        moments = input_moments.get(source)
        if moments is None:
            skipped.append(
                {
                    "layer": names.get(output, output),
                    "reason": f"no statistics for its input {source}",
                }
            )
            continue
        eps = (quantized[weight] - sim.executor.weights[weight]).double().cpu().numpy()
        site = sim.placement.weights[weight]
        shift = _expected_shift(eps, site.op_type, site.channel_axis, moments.mean)
        if shift is None:
            skipped.append(
                {"layer": names.get(output, output), "reason": "channel layout not supported"}
            )
            continue
        _add_to_bias(sim, bias, -shift)
        rows.append(
            {
                "layer": names.get(output, output),
                "output": output,
                "bias": bias,
                "error_before": np.abs(shift).tolist(),
                "error_after": None,
            }
        )
    return {"mode": "analytical", "layers": rows, "skipped": skipped}


def _expected_shift(eps: np.ndarray, op_type: str, channel_axis, mean_in: np.ndarray):
    if op_type == "Conv":
        if eps.shape[1] == mean_in.size:
            return eps.reshape(eps.shape[0], eps.shape[1], -1).sum(axis=2) @ mean_in
        if eps.shape[1] == 1 and eps.shape[0] == mean_in.size:  # depthwise
            return eps.reshape(eps.shape[0], -1).sum(axis=1) * mean_in
        return None
    if op_type == "Gemm":
        return eps @ mean_in if channel_axis == 0 else mean_in @ eps
    return None


def _add_to_bias(sim: QuantSim, bias: str, delta: np.ndarray) -> None:
    tensor = sim.executor.weights[bias]
    update = torch.as_tensor(delta, dtype=tensor.dtype).reshape(tensor.shape)
    sim.executor.weights[bias] = tensor + update
    sim.invalidate()
