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
# what one backward pass may hold of activations (float bytes the forward computes); more
# samples go through in chunks (``estimate_noise``)
MAX_GRAPH_BYTES = 256 * 2**20


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
    sim: QuantSim,
    feeds: Mapping[str, Any],
    seed: int = 0,
    *,
    per_channel: bool = False,
    max_graph_bytes: int = MAX_GRAPH_BYTES,
    channel_axes: Mapping[str, int] | None = None,
) -> NoiseEstimate:
    """First-order output noise of every activation and weight quantizer of ``sim`` on ``feeds``
    (the float model in the torch executor, ``PROJECTIONS`` random projections averaged).

    ``per_channel``: each output channel's noise is counted relative to that channel's power
    (channel as the worst-channel SQNR takes it: axis 1 of a 4-D output, else the last axis),
    so the ranking follows what that target measures; otherwise noise counts in the outputs'
    units, where a large-range channel outweighs a small-range one. Either way ``signal`` is
    in the same units as the noise (with ``per_channel``, the number of channels).

    The backward pass holds every activation of every sample at once: on a BERT-base-sized
    encoder, 8 samples of 128 tokens took 3.5 GB over the model's 1.4. Where one sample's
    activations times the sample count pass ``max_graph_bytes``, the samples go through in
    chunks that fit and their noise powers add up (the estimate is a sum over samples); the
    random projections then differ from one pass's, so a model that fits keeps its one pass.

    ``channel_axes``: an output's channel axis where it is not the default one
    (``output_axes.channel_axes``: the rows of a YOLOv8-style output, not its anchors)."""
    import torch

    executor = sim.torch_executor()
    # leaves sharing the executor's storage (nothing here writes to a weight): a clone would
    # hold a second copy of every weight while the gradients are taken
    weights = {
        name: executor.weights[name].detach().requires_grad_(True) for name in sim.weight_encodings
    }
    chunks = [to_torch(chunk) for chunk in _chunks(sim, feeds, max_graph_bytes)]
    axes = dict(channel_axes or {})
    channel_power = _channel_power(sim, chunks, axes) if per_channel and len(chunks) > 1 else None
    generator = torch.Generator().manual_seed(seed)
    estimate = NoiseEstimate()
    for _ in range(PROJECTIONS):
        signal = 0.0
        for inputs in chunks:
            chunk_signal = _accumulate(
                sim, inputs, weights, per_channel, channel_power, generator, estimate, axes
            )
            if chunk_signal is None:
                return estimate
            signal = chunk_signal if per_channel else signal + chunk_signal
        estimate.signal = signal
    for table in (estimate.activations, estimate.weights):
        for name in table:
            table[name] /= PROJECTIONS
    return estimate


def _chunks(sim: QuantSim, feeds: Mapping[str, Any], max_graph_bytes: int) -> list[dict[str, Any]]:
    """``feeds`` whole, or cut along the batch axis into pieces whose activations fit
    ``max_graph_bytes`` (sized by a gradient-free forward of the first sample)."""

    feeds = dict(feeds)
    count = _batch_size(feeds)
    if count <= 1:
        return [feeds]
    per_chunk = max(1, max_graph_bytes // max(sample_activation_bytes(sim, feeds), 1))
    if per_chunk >= count:
        return [feeds]
    return [_samples(feeds, i, i + per_chunk) for i in range(0, count, per_chunk)]


def sample_activation_bytes(sim: QuantSim, feeds: Mapping[str, Any]) -> int:
    """The bytes of the quantized activations of the first sample of ``feeds`` (a
    gradient-free forward): what pricing holds per sample, counted, not timed."""
    import torch

    held = [0]

    def measure(name: str, value: Any) -> Any:
        if (
            name in sim.activation_encodings
            and isinstance(value, torch.Tensor)
            and value.is_floating_point()
        ):
            held[0] += value.numel() * value.element_size()
        return value

    with torch.no_grad():
        sim.torch_executor().run(to_torch(_samples(dict(feeds), 0, 1)), hook=measure)
    return held[0]


def _batch_size(feeds: Mapping[str, Any]) -> int:
    """The samples the feeds hold along axis 0 (0-d feeds go whole to every chunk); 1 where
    the batched feeds disagree, so they are never cut."""
    sizes = {int(np.shape(value)[0]) for value in feeds.values() if np.ndim(value)}
    return sizes.pop() if len(sizes) == 1 else 1


def _samples(feeds: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {name: value[start:stop] if np.ndim(value) else value for name, value in feeds.items()}


def _channel_power(
    sim: QuantSim, chunks: list[dict[str, Any]], axes: Mapping[str, int]
) -> list[Any]:
    """Each float output's power per channel over every chunk: what one pass's
    ``_channel_weights`` reads from the whole batch."""
    import torch

    totals: list[Any] = []
    with torch.no_grad():
        for inputs in chunks:
            outputs = sim.torch_executor().run(inputs)
            floats = [(n, o) for n, o in outputs.items() if _is_float(o)]
            powers = [_power_by_channel(o, _axis(o, axes.get(n))) for n, o in floats]
            totals = powers if not totals else [t + p for t, p in zip(totals, powers, strict=True)]
    return totals


def _is_float(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _accumulate(
    sim: QuantSim,
    inputs: dict[str, Any],
    weights: dict[str, Any],
    per_channel: bool,
    channel_power: list[Any] | None,
    generator: Any,
    estimate: NoiseEstimate,
    axes: Mapping[str, int],
) -> float | None:
    """One projection's noise powers on ``inputs``, added to ``estimate``; the outputs' signal
    there (with ``per_channel``, their channel count), None where no output is float."""
    import torch

    probes: dict[str, torch.Tensor] = {}
    taken: set[int] = {id(w) for w in weights.values()}  # tensors whose gradient is spoken for

    def hook(name: str, value: Any) -> Any:
        if name not in sim.activation_encodings or not _is_float(value):
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

    executor = sim.torch_executor()
    # any other weight that asks for a gradient (a torch.export archive's parameters) is read
    # detached: backward below fills the ``.grad`` of every leaf it reaches
    frozen = {n: w.detach() for n, w in executor.weights.items() if getattr(w, "requires_grad", 0)}
    outputs = executor.run(inputs, hook=hook, weights={**frozen, **weights})
    named = [(n, o) for n, o in outputs.items() if _is_float(o)]
    floats = [o for _, o in named]
    if not floats:
        return None
    if per_channel:
        at = [_axis(o, axes.get(n)) for n, o in named]
        if channel_power is None:
            factors = [_channel_weights(o, a) for o, a in zip(floats, at, strict=True)]
        else:
            factors = [
                _weights_from_power(o, p, a)
                for o, p, a in zip(floats, channel_power, at, strict=True)
            ]
        signal = float(sum(_channels(o, a) for o, a in zip(floats, at, strict=True)))
        projection = torch.stack(
            [
                (torch.randn(o.shape, generator=generator, dtype=o.dtype) * w * o).sum()
                for o, w in zip(floats, factors, strict=True)
            ]
        ).sum()
    else:
        signal = float(sum(float((o.detach() ** 2).sum()) for o in floats))
        projection = torch.stack(
            [
                (torch.randn(o.shape, generator=generator, dtype=o.dtype) * o).sum().float()
                for o in floats
            ]
        ).sum()
    # each gradient priced the moment backward computes it and dropped: taken all at once, a
    # BERT-base-sized encoder held every weight's gradient (the model's size again) beside the
    # activations' while the last ones were computed
    activation_powers: dict[str, float] = {}
    weight_powers: dict[str, float] = {}
    handles = [_price_on_arrival(probe, sim.activation_encodings[name], name, activation_powers)
               for name, probe in probes.items()]  # fmt: skip
    handles += [_price_on_arrival(weight, sim.weight_encodings[name], name, weight_powers)
                for name, weight in weights.items()]  # fmt: skip
    try:
        # no ``inputs``: a computed tensor named there would keep its gradient in ``.grad``
        projection.backward()
    finally:
        for handle in handles:
            handle.remove()
    for name in probes:  # in the order the forward met them, as one gradient call gave them
        if name in activation_powers:
            power = activation_powers[name]
            estimate.activations[name] = estimate.activations.get(name, 0.0) + power
    for name in weights:
        if name in weight_powers:
            estimate.weights[name] = estimate.weights.get(name, 0.0) + weight_powers[name]
    return signal


def _axis(output: Any, named: int | None) -> int | None:
    """The channel axis of ``output``: ``named`` where it fits, else axis 1 of a 4-D output
    and the last otherwise; None under two dimensions."""
    rank = output.dim()
    if rank < 2:
        return None
    if named is not None and 0 < named < rank:
        return named
    return 1 if rank == 4 else rank - 1


def _channels(output: Any, axis: int | None) -> int:
    return 1 if axis is None else int(output.shape[axis])


def _channel_weights(output: Any, axis: int | None) -> Any:
    """The projection's weight per element, 1 / sqrt(power of the element's channel): the
    projected noise is then the sum over channels of noise relative to the channel's power."""
    return _weights_from_power(output, _power_by_channel(output, axis), axis)


def _power_by_channel(output: Any, axis: int | None) -> Any:
    """Sum of squares per channel (float64); one value for an output under two dimensions."""
    values = output.detach().double()
    if axis is None:
        return (values**2).sum().reshape(1)
    return (values**2).sum(dim=[d for d in range(values.dim()) if d != axis])


def _weights_from_power(output: Any, power: Any, axis: int | None) -> Any:
    """``_channel_weights`` from a channel power measured over these or more samples. A channel
    under 1e-6 of the mean channel's power counts at that floor (a channel that is ~zero
    everywhere would otherwise outweigh every other)."""
    import torch

    values = output.detach().double()
    if axis is None:
        return torch.full_like(values, 1.0 / max(float(power.sum()), 1e-30) ** 0.5)
    power = torch.clamp(power, min=max(float(power.mean()) * 1e-6, 1e-30))
    shape = [1] * values.dim()
    shape[axis] = -1
    return (1.0 / power.sqrt()).reshape(shape).expand_as(values).to(output.dtype)


def _price_on_arrival(tensor: Any, encoding: Encoding, name: str, powers: dict[str, float]) -> Any:
    """A hook that prices ``tensor``'s gradient into ``powers[name]`` when backward computes it,
    and keeps no copy: a leaf's ``.grad`` is released, a computed tensor's passes on unchanged."""
    if tensor.is_leaf:

        def leaf(leaf_tensor: Any) -> None:
            powers[name] = _noise_power(encoding, leaf_tensor.grad)
            leaf_tensor.grad = None

        return tensor.register_post_accumulate_grad_hook(leaf)

    def computed(grad: Any) -> None:
        powers[name] = _noise_power(encoding, grad)

    return tensor.register_hook(computed)


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
