"""What a 16-bit activation grid costs on ONNX Runtime's CPU, and the fewest such grids that keep
the accuracy they bought.

ONNX Runtime's CPU has no 16-bit integer kernel: a group whose input or output is on a 16-bit grid
runs DequantizeLinear -> float op -> QuantizeLinear, so one 16-bit tensor makes its producer (and
whatever is fused into it) and every consumer compute in float, and puts layout changes
(Transposes between the NHWC integer kernels and the float ones) at the island's edges. On a
detector at 800 x 608 a stem activation at 16 bits keeps a full-resolution convolution float.

``sensitive_tensor`` ranks activations by their share of the predicted output noise; here each is
priced by the multiply-accumulates its 16-bit grid forces to run float (deterministic: shapes,
not timings, so the same model, data and seed get the same artifact on any machine), the
promotions are ordered by noise share per unit of that cost, and the shortest prefix whose
measured output SQNR stays within ``KEEP_WITHIN_DB`` of the full promotion's is kept (bisection,
one measurement of the exported graph each). A tensor that forces no weighted op float costs
only its conversions and is always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx

from qaas_engine.quant.placement import Placement

# the prefix kept: measured output SQNR at most this far below all promotions' (the rule keeps
# a promotion only for MIN_MEASURED_GAIN_DB = 3 dB or more, so this keeps most of what it bought)
KEEP_WITHIN_DB = 1.0
FREE_SHARE = 1e-12  # cost of a tensor that forces no weighted op float, in MACs: ranks it first


def float_macs(
    names: Sequence[str], forced: Mapping[str, frozenset[str]], node_macs: Mapping[str, int]
) -> int:
    """MACs the 16-bit grids of ``names`` make run float together (shared nodes once)."""
    nodes: set[str] = set()
    for name in names:
        nodes |= forced.get(name, frozenset())
    return sum(node_macs.get(node, 0) for node in nodes)


def forced_float_nodes(
    model: onnx.ModelProto, placement: Placement, names: Sequence[str]
) -> dict[str, frozenset[str]]:
    """Per tensor, the nodes ONNX Runtime's CPU computes in float when it is on a 16-bit grid:
    its producer, the producers fused into that one (no quantizer between), and the consumers
    of it and of every pass-through output sharing its grid."""
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for output in node.output:
            producer[output] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def label(node: onnx.NodeProto) -> str:
        return node.name or node.output[0]

    def root(tensor: str) -> str:
        while tensor in placement.shared:
            tensor = placement.shared[tensor]
        return tensor

    forced: dict[str, frozenset[str]] = {}
    for name in names:
        nodes: set[str] = set()
        stack = [producer[name]] if name in producer else []
        while stack:  # the producer and what is fused into it, back to the quantized inputs
            node = stack.pop()
            if label(node) in nodes:
                continue
            nodes.add(label(node))
            stack += [producer[i] for i in node.input if i in placement.fused and i in producer]
        sharing = [t for t in placement.shared if root(t) == name] + [name]
        for tensor in sharing:
            for user in consumers.get(tensor, []):
                nodes.add(label(user))
                # a consumer's output fused onward (Conv -> Relu): that op runs float too
                out = user.output[0] if user.output else ""
                while out in placement.fused:
                    following = [n for n in consumers.get(out, [])]
                    if len(following) != 1:
                        break
                    nodes.add(label(following[0]))
                    out = following[0].output[0] if following[0].output else ""
        forced[name] = frozenset(nodes)
    return forced


def ranked(
    chosen: Sequence[str],
    share: Mapping[str, float],
    forced: Mapping[str, frozenset[str]],
    node_macs: Mapping[str, int],
) -> list[str]:
    """Noise share per MAC forced float, highest first (free ones first, by share)."""

    def cost(name: str) -> int:
        return sum(node_macs.get(node, 0) for node in forced.get(name, frozenset()))

    order = {name: i for i, name in enumerate(chosen)}
    return sorted(
        chosen,
        key=lambda n: (-share.get(n, 0.0) / max(cost(n), FREE_SHARE), order[n]),
    )


def trim(
    order: Sequence[str],
    free: int,
    first: int,
    full_db: float,
    measure: Callable[[Sequence[str]], float],
    max_measurements: int,
) -> tuple[int, dict[int, float]]:
    """The shortest prefix of ``order`` (at least ``free`` long) whose measured SQNR is within
    ``KEEP_WITHIN_DB`` of ``full_db`` (all of ``order`` promoted), by bisection starting at
    ``first`` (the prefix the noise estimate predicts enough); with the measurements."""
    measured: dict[int, float] = {len(order): full_db}
    floor = full_db - KEEP_WITHIN_DB
    low, high = free - 1, len(order)  # low fails (or is below the free ones), high passes
    probe = min(max(first, free), len(order))
    while high - low > 1 and len(measured) - 1 < max_measurements:
        measured[probe] = measure(order[:probe])
        if measured[probe] >= floor:
            high = probe
        else:
            low = probe
        probe = (low + high + 1) // 2 if low >= free - 1 else free
        probe = max(probe, free)
    return high, measured
