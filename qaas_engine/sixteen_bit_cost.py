"""What a 16-bit activation grid costs on ONNX Runtime's CPU, and the fewest such grids that keep
the accuracy they bought.

ONNX Runtime's CPU has no 16-bit integer kernel: a group whose input or output is on a 16-bit grid
runs DequantizeLinear -> float op -> QuantizeLinear, so one 16-bit tensor makes its producer (and
whatever is fused into it) and every consumer compute in float, and puts layout changes
(Transposes between the NHWC integer kernels and the float ones) at the island's edges. On a
detector at 800 x 608 a stem activation at 16 bits keeps a full-resolution convolution float.

``sensitive_tensor`` ranks activations by their share of the predicted output noise; here each is
priced by the multiply-accumulates its 16-bit grid forces to run float, a depthwise (grouped)
convolution's weighted by ``DEPTHWISE_FLOAT_WEIGHT`` (deterministic: shapes, not timings, so the
same model, data and seed get the same artifact on any machine). The promotions are ordered by
noise share per unit of that cost, and the shortest prefix whose measured output SQNR stays
within ``KEEP_WITHIN_DB`` of the full promotion's is kept (bisection, one measurement of the
exported graph each), but never one that runs more than ``MAX_FLOAT_SHARE`` of the model's
weighted MACs float: past that the artifact is slower than the float model it replaces (PicoDet
with 38 promotions: 18% of its MACs, half of them depthwise, ran float and it measured 0.86x
float). A tensor that forces no weighted op float costs only its conversions and is always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx

from qaas_engine.quant.placement import Placement

# the prefix kept: measured output SQNR at most this far below all promotions' (the rule keeps
# a promotion only for MIN_MEASURED_GAIN_DB = 3 dB or more, so this keeps most of what it bought)
KEEP_WITHIN_DB = 1.0
FREE_SHARE = 1e-12  # cost of a tensor that forces no weighted op float, in MACs: ranks it first
# ONNX Runtime's float depthwise conv (NCHW, one small GEMM per group) against a dense one, per
# MAC: PicoDet's 16-bit-forced convs at 800 x 608, one thread, Xeon AVX-512: 0.35-1.2 ns per
# depthwise MAC, 0.03-0.15 ns per dense MAC
DEPTHWISE_FLOAT_WEIGHT = 8.0
# an element-wise op (Mul, Add of two tensors) forced float, with the 16-bit QuantizeLinear and
# DequantizeLinear around it, per output element, in dense MACs: PicoDet's hardswish Muls at
# 400 x 304 cost 2-9 ms each; a uint16 Q+DQ pair alone 2.7 ns per element (Xeon AVX-512)
ELEMENT_FLOAT_WEIGHT = 16.0
# the kept promotions may run at most this share of the model's weighted MACs float
MAX_FLOAT_SHARE = 0.12


def latency_macs(
    model: onnx.ModelProto,
    node_macs: Mapping[str, int],
    elementwise: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """``node_macs`` weighted by what a MAC costs in ONNX Runtime's float kernel (a grouped
    convolution's by ``DEPTHWISE_FLOAT_WEIGHT``), and the ``elementwise`` ops' output elements
    by ``ELEMENT_FLOAT_WEIGHT``: a promotion that forces only element-wise ops float at a high
    resolution is not free."""
    weighted: dict[str, float] = dict(node_macs)
    for node in model.graph.node:
        label = node.name or node.output[0]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and label in weighted:
            weighted[label] = node_macs[label] * DEPTHWISE_FLOAT_WEIGHT
    for label, elements in (elementwise or {}).items():
        weighted.setdefault(label, elements * ELEMENT_FLOAT_WEIGHT)
    return weighted


def longest_within_budget(
    order: Sequence[str],
    free: int,
    forced: Mapping[str, frozenset[str]],
    node_macs: Mapping[str, float],
    total: float,
) -> int:
    """The longest prefix of ``order`` (the ``free`` ones at least) whose promotions run at most
    ``MAX_FLOAT_SHARE`` of ``total`` (the model's weighted MACs) float."""
    allowed = MAX_FLOAT_SHARE * total
    length = free
    while length < len(order) and float_macs(order[: length + 1], forced, node_macs) <= allowed:
        length += 1
    return length


def float_macs(
    names: Sequence[str], forced: Mapping[str, frozenset[str]], node_macs: Mapping[str, float]
) -> float:
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
    node_macs: Mapping[str, float],
) -> list[str]:
    """Noise share per MAC forced float, highest first (free ones first, by share)."""

    def cost(name: str) -> float:
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
    longest: int | None = None,
) -> tuple[int, dict[int, float]]:
    """The shortest prefix of ``order`` (at least ``free`` long) whose measured SQNR is within
    ``KEEP_WITHIN_DB`` of ``full_db`` (all of ``order`` promoted), by bisection starting at
    ``first`` (the prefix the noise estimate predicts enough), and at most ``longest`` long
    (the latency budget: that one is kept where no shorter one passes); with the measurements."""
    measured: dict[int, float] = {len(order): full_db}
    floor = full_db - KEEP_WITHIN_DB
    cap = len(order) if longest is None else max(min(longest, len(order)), free)
    low, high = free - 1, cap  # low fails (or is below the free ones), high passes or is the cap
    probe = min(max(first, free), cap)
    while high - low > 1 and len(measured) - 1 < max_measurements:
        measured[probe] = measure(order[:probe])
        if measured[probe] >= floor:
            high = probe
        else:
            low = probe
        probe = (low + high + 1) // 2 if low >= free - 1 else free
        probe = max(probe, free)
    if high not in measured:  # the cap, never measured: the report gives what it keeps
        measured[high] = measure(order[:high])
    return high, measured
