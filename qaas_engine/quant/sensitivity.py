"""How much output noise each quantizer contributes, to first order, from one backward pass.

A quantizer adds noise of variance s²/12 (grid step s) to its tensor. Through the network that
noise reaches the outputs as J·n (J: the outputs' Jacobian with respect to the tensor), whose
expected power is s²/12 · ||J||²_F. For a random projection v of the outputs, the gradient of
vᵀf with respect to the tensor is Jᵀv, and E||Jᵀv||² = ||J||²_F (Hutchinson): so a few backward
passes of the float model on calibration samples price every activation and weight quantizer at
once, where measuring each one would take a forward pass per quantizer.

The estimate is linear: it ranks quantizers well where noise is small next to the signal and
only roughly where 8 bits already destroy the output; the caller measures the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.sim import QuantSim
from qaas_engine.tensors import to_torch

PROJECTIONS = 1


@dataclass
class NoiseEstimate:
    """Expected output noise power per quantizer, beside the outputs' own power (same units:
    squared values summed over the samples' output elements)."""

    signal: float = 0.0
    activations: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def sqnr_db(self, excluded: frozenset[str] = frozenset()) -> float:
        """Predicted output SQNR with every quantizer but ``excluded`` applied."""
        noise = sum(p for n, p in {**self.activations, **self.weights}.items() if n not in excluded)
        if noise <= 0:
            return float("inf")
        return 10.0 * float(np.log10(max(self.signal, 1e-30) / noise))


def estimate_noise(
    sim: QuantSim, feeds: Mapping[str, Any], seed: int = 0, *, per_channel: bool = False
) -> NoiseEstimate:
    """First-order output noise of every activation and weight quantizer of ``sim`` on ``feeds``
    (the float model in the torch executor, ``PROJECTIONS`` random projections averaged).

    ``per_channel``: each output channel's noise is counted relative to that channel's power
    (channel as the worst-channel SQNR takes it: axis 1 of a 4-D output, else the last axis),
    so the ranking follows what that target measures; otherwise noise counts in the outputs'
    units, where a large-range channel outweighs a small-range one. Either way ``signal`` is
    in the same units as the noise (with ``per_channel``, the number of channels)."""
    import torch

    executor = sim.torch_executor()
    inputs = to_torch(dict(feeds))
    # leaves sharing the executor's storage (nothing here writes to a weight): a clone would
    # hold a second copy of every weight while the gradients are taken
    weights = {
        name: executor.weights[name].detach().requires_grad_(True) for name in sim.weight_encodings
    }
    probes: dict[str, torch.Tensor] = {}
    taken: set[int] = {id(w) for w in weights.values()}  # tensors whose gradient is spoken for

    def hook(name: str, value: Any) -> Any:
        if (
            name not in sim.activation_encodings
            or not isinstance(value, torch.Tensor)
            or not value.is_floating_point()
        ):
            return value
        if value.requires_grad and not value.is_leaf and id(value) not in taken:
            # the tensor the graph computed: every consumer reads it from here on, so its
            # gradient is exactly a zero probe's added at this point, without a zero tensor
            # and an addition per activation (a large share of the pass on a detector)
            taken.add(id(value))
            probes[name] = value
            return value
        # a feed, a constant, or a tensor another name already holds (an Identity): its
        # gradient would count other consumers too, so a zero probe marks this name alone
        probe = torch.zeros_like(value, requires_grad=True)
        probes[name] = probe
        taken.add(id(probe))
        return value + probe

    generator = torch.Generator().manual_seed(seed)
    estimate = NoiseEstimate()
    for _ in range(PROJECTIONS):
        probes.clear()
        taken.intersection_update(id(w) for w in weights.values())
        outputs = executor.run(inputs, hook=hook, weights=weights)
        floats = [
            o for o in outputs.values() if isinstance(o, torch.Tensor) and o.is_floating_point()
        ]
        if not floats:
            return estimate
        if per_channel:
            factors = [_channel_weights(o) for o in floats]
            estimate.signal = float(sum(_channels(o) for o in floats))
            projection = torch.stack(
                [
                    (torch.randn(o.shape, generator=generator, dtype=o.dtype) * w * o).sum()
                    for o, w in zip(floats, factors, strict=True)
                ]
            ).sum()
        else:
            estimate.signal = float(sum(float((o.detach() ** 2).sum()) for o in floats))
            projection = torch.stack(
                [
                    (torch.randn(o.shape, generator=generator, dtype=o.dtype) * o).sum().float()
                    for o in floats
                ]
            ).sum()
        names = list(probes) + list(weights)
        tensors = [probes[n] for n in probes] + [weights[n] for n in weights]
        grads = torch.autograd.grad(projection, tensors, allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is None:
                continue
            if name in probes:
                power = _noise_power(sim.activation_encodings[name], grad)
                estimate.activations[name] = estimate.activations.get(name, 0.0) + power
            else:
                power = _noise_power(sim.weight_encodings[name], grad)
                estimate.weights[name] = estimate.weights.get(name, 0.0) + power
    for table in (estimate.activations, estimate.weights):
        for name in table:
            table[name] /= PROJECTIONS
    return estimate


def _channels(output: Any) -> int:
    if output.dim() < 2:
        return 1
    return int(output.shape[1 if output.dim() == 4 else output.dim() - 1])


def _channel_weights(output: Any) -> Any:
    """The projection's weight per element, 1 / sqrt(power of the element's channel): the
    projected noise is then the sum over channels of noise relative to the channel's power.
    A channel under 1e-6 of the mean channel's power counts at that floor (a channel that is
    ~zero everywhere would otherwise outweigh every other)."""
    import torch

    values = output.detach().double()
    if values.dim() < 2:
        return torch.full_like(values, 1.0 / max(float((values**2).sum()), 1e-30) ** 0.5)
    axis = 1 if values.dim() == 4 else values.dim() - 1
    dims = [d for d in range(values.dim()) if d != axis]
    power = (values**2).sum(dim=dims)
    power = torch.clamp(power, min=max(float(power.mean()) * 1e-6, 1e-30))
    shape = [1] * values.dim()
    shape[axis] = -1
    return (1.0 / power.sqrt()).reshape(shape).expand_as(values).to(output.dtype)


def _noise_power(encoding: Encoding, grad: Any) -> float:
    """s²/12 times the squared gradient, channel by channel for a per-channel grid."""
    squared = grad.detach().double()
    squared.mul_(squared)  # in place: one float64 copy per gradient, not two (same values)
    scale = np.asarray(encoding.scale, dtype=np.float64)
    if encoding.scheme.per_channel and scale.size > 1:
        axis = encoding.scheme.axis
        dims = [d for d in range(squared.dim()) if d != axis]
        per_channel = squared.sum(dim=dims).numpy() if dims else squared.numpy()
        return float(np.sum(scale**2 / 12.0 * per_channel))
    return float(scale.reshape(-1)[0] ** 2 / 12.0 * float(squared.sum()))
