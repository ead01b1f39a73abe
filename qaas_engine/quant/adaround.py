"""AdaRound (Nagel et al. 2020): learn whether each weight rounds up or down, layer by layer.

Per layer: ``W~ = s * (clamp(floor(W/s) + h(V) + o, qmin, qmax) - o)`` with the rectified sigmoid
``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, minimising the reconstruction error
of the layer's output (through its fused activation) plus ``lambda * sum(1 - |2h - 1|^beta)``,
beta annealed 20 -> 2 after a warm start. The layer's inputs come from the already-quantized
preceding layers; its target is the float model's output. Afterwards the float weight is replaced
by ``W~``, which lies on the grid, so the simulation and the export reproduce the learned
rounding without any other change.

Speed comes from the algorithm, not only the machine: a layer stops as soon as its hard rounding
decisions have settled after the annealing has pushed h(V) to 0/1; cached inputs are capped in
size and sampled in mini-batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from qaas_engine.errors import Cancelled
from qaas_engine.graph.registry import OP_REGISTRY
from qaas_engine.quant.sim import QuantSim

ZETA, GAMMA = 1.1, -0.1
Feeds = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-2
    regularization: float = 0.01  # lambda
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2  # fraction of iterations without the rounding regulariser
    check_every: int = 25
    settled_checks: int = 4  # consecutive checks with no flipped decision, and
    undecided_fraction: float = 0.02  # at most this share of h(V) still between 0.01 and 0.99
    threads: int = 1  # per-layer problems are small: one thread beats two (no sync, no contention)
    max_cache_bytes: int = 256 * 2**20
    seed: int = 0


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(rest: torch.Tensor) -> torch.Tensor:
    """V with h(V) equal to the fractional part, so optimisation starts at the float weight."""
    ratio = (rest - GAMMA) / (ZETA - GAMMA)
    ratio = ratio.clamp(1e-4, 1 - 1e-4)
    return torch.log(ratio / (1 - ratio))


class _Layer:
    """One weighted node with its fused activation, able to recompute its output."""

    def __init__(self, sim: QuantSim, index: int) -> None:
        node = sim.executor.nodes[index]
        self.node = node
        self.weight = (
            node.inputs[1]
            if node.op_type != "MatMul" or node.inputs[1] in (sim.weight_encodings)
            else node.inputs[0]
        )
        self.input = node.inputs[0] if self.weight == node.inputs[1] else node.inputs[1]
        self.output = node.outputs[0]
        self.activation = None
        fused_into = sim.placement.fused.get(self.output)
        if fused_into is not None:
            self.activation = next(
                (
                    n
                    for n in sim.executor.nodes
                    if (n.name == fused_into or n.outputs[0] == fused_into)
                    and n.op_type in ("Relu", "Clip")
                ),
                None,
            )

    def forward(self, sim: QuantSim, x: torch.Tensor, weight: torch.Tensor, params) -> torch.Tensor:
        args = []
        for name in self.node.inputs:
            if name == self.weight:
                args.append(weight)
            elif name == self.input:
                args.append(x)
            elif name:
                args.append(params.get(name, sim.executor.weights.get(name)))
            else:
                args.append(None)
        out = OP_REGISTRY[self.node.op_type](self.node.context, args)[0]
        if self.activation is not None:
            act_args = [out] + [
                params.get(n, sim.executor.weights.get(n)) if n else None
                for n in self.activation.inputs[1:]
            ]
            out = OP_REGISTRY[self.activation.op_type](self.activation.context, act_args)[0]
        return out


def _collect(sim, layer, batches, float_weights, max_bytes):
    """Quantized-model inputs and float-model outputs of one layer, capped in size."""
    inputs, targets, size = [], [], 0
    with torch.no_grad():
        for feeds in batches():
            x = sim.run(feeds, outputs=[layer.input])[layer.input]
            y = sim.executor.run(feeds, weights=float_weights, outputs=[layer.output])[layer.output]
            if layer.activation is not None:
                y = layer.forward(
                    sim,
                    _float_input(sim, feeds, layer, float_weights),
                    float_weights[layer.weight],
                    float_weights,
                )
            inputs.append(x)
            targets.append(y)
            size += x.numel() * x.element_size() + y.numel() * y.element_size()
            if size >= max_bytes:
                break
    return torch.cat(inputs), torch.cat(targets)


def _float_input(sim, feeds, layer, float_weights):
    return sim.executor.run(feeds, weights=float_weights, outputs=[layer.input])[layer.input]


def adaround(
    sim: QuantSim,
    batches: Callable[[], Iterable[Feeds]],
    config: AdaRoundConfig = AdaRoundConfig(),
    progress: Callable[[str, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    float_weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Learn the rounding of every quantized weight, in graph order; returns per-layer data.

    ``float_weights`` is the float reference (defaults to the weights as they are now).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    float_weights = dict(float_weights or sim.executor.weights)
    indices = [
        i
        for i, node in enumerate(sim.executor.nodes)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        and any(name in sim.weight_encodings for name in node.inputs[:2])
    ]
    rows = []
    generator = torch.Generator().manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads if device.type == "cpu" else threads)
    try:
        for done, index in enumerate(indices):
            rows.append(
                _adaround_layer(
                    sim, index, batches, config, float_weights, device, generator, should_stop
                )
            )
            if progress:
                progress("adaround", (done + 1) / len(indices))
    finally:
        torch.set_num_threads(threads)
    return {"layers": rows, "iterations_per_layer": config.iterations, "device": str(device)}


def _adaround_layer(sim, index, batches, config, float_weights, device, generator, should_stop):
    """Collect one layer's data and optimise its rounding; a stop request lands before it."""
    if should_stop is not None and should_stop():
        raise Cancelled("stopped between AdaRound layers")
    layer = _Layer(sim, index)
    start = time.perf_counter()
    inputs, targets = _collect(sim, layer, batches, float_weights, config.max_cache_bytes)
    row = _optimize_layer(sim, layer, inputs, targets, config, device, generator)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _optimize_layer(sim, layer, inputs, targets, config, device, generator) -> dict[str, Any]:
    encoding = sim.weight_encodings[layer.weight]
    weight = sim.executor.weights[layer.weight].detach().to(device)
    channel_axis = encoding.scheme.axis
    scale, zero_point = encoding.torch_params(weight, channel_axis)
    qmin, qmax = encoding.scheme.qmin, encoding.scheme.qmax
    floor = torch.floor(weight / scale)
    v = _initial_v(weight / scale - floor).requires_grad_(True)
    params = {k: t.to(device) for k, t in sim.quantized_weights().items()}
    x_all, y_all = inputs.to(device), targets.to(device)

    def rounded(soft: bool) -> torch.Tensor:
        h = _rectified_sigmoid(v) if soft else (v >= 0).to(weight.dtype)
        return (torch.clamp(floor + h + zero_point, qmin, qmax) - zero_point) * scale

    def reconstruction(w: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.mean((layer.forward(sim, x_all, w, params) - y_all) ** 2))

    nearest = encoding.fake_quantize(weight)
    error_before = reconstruction(nearest)
    optimizer = torch.optim.Adam([v], lr=config.learning_rate)
    warm = int(config.warm_start * config.iterations)
    previous, stable, used = None, 0, config.iterations
    n = x_all.shape[0]
    for step in range(config.iterations):
        pick = torch.randint(0, n, (min(config.batch_size, n),), generator=generator).to(device)
        out = layer.forward(sim, x_all[pick], rounded(soft=True), params)
        loss = torch.mean((out - y_all[pick]) ** 2)
        if step >= warm:
            progress = (step - warm) / max(config.iterations - warm, 1)
            beta = config.beta_end + 0.5 * (config.beta_start - config.beta_end) * (
                1 + math.cos(progress * math.pi)
            )
            h = _rectified_sigmoid(v)
            loss = loss + config.regularization * torch.sum(1 - torch.abs(2 * h - 1) ** beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= warm and step % config.check_every == 0:
            with torch.no_grad():
                h = _rectified_sigmoid(v)
                decisions = h >= 0.5
                undecided = float(torch.mean(((h > 0.01) & (h < 0.99)).float()))
            if previous is not None and torch.equal(decisions, previous):
                stable += 1
                if stable >= config.settled_checks and undecided <= config.undecided_fraction:
                    used = step + 1
                    break
            else:
                stable = 0
            previous = decisions
    with torch.no_grad():
        learned = rounded(soft=False)
        error_after = reconstruction(learned)
        if error_after > error_before:  # never worse than nearest on the cached data
            learned, error_after = nearest, error_before
        flipped = float(torch.mean((learned != nearest).float()))
    sim.executor.weights[layer.weight] = learned.to(sim.executor.weights[layer.weight].device)
    sim.invalidate()
    return {
        "layer": layer.node.name,
        "weight": layer.weight,
        "iterations": used,
        "rounded_away_from_nearest": flipped,
        "reconstruction_mse_nearest": error_before,
        "reconstruction_mse_adaround": error_after,
    }
