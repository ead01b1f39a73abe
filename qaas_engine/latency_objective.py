"""The latency objective: keep a node float where the exported graph, timed in ONNX Runtime on
this machine, is faster with it float.

Int8 is not faster everywhere. ONNX Runtime spends a few microseconds on every node whatever its
size, so on a small model node count decides: a quantized graph adds an input QuantizeLinear,
Transposes around its NHWC integer kernels, a QLinearAdd per residual add (float fuses the add
into the conv), an output DequantizeLinear; a first conv over one input channel runs slower in
int8 than in float, and QGemm costs more than Gemm on a small head. What is faster depends on the
CPU and the runtime, so it is measured, not predicted: a few structural candidates (the conv
that reads a graph input, the Gemm/MatMul head that writes a graph output, residual joins) are
each exported float, and the whole graph is timed against the all-int8 graph at batch 1 and 32,
the variants taking turns round after round, within a time budget. A candidate is kept float
only for a clear gain (``MIN_GAIN``) at some batch size and no loss beyond the timing's noise
(``NOISE``) at any; the accepted ones
are then timed together, and kept together only when that combination also passes, else the
best single one is kept. Keeping a node float only removes quantization noise, so accuracy can
only improve, and the simulation places the same nodes float, so sim = runtime still holds.

Behind ``--objective latency`` (``QuantSpec.objective``): the choice depends on the machine's
timings, so two runs can give different artifacts; ``--strict-bits`` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qaas_engine.export.qdq import export_qdq
from qaas_engine.quant.sim import QuantSim
from qaas_engine.rules import RuleAction, _keep_float
from qaas_engine.sessions import session

if TYPE_CHECKING:
    from qaas_engine.state import PipelineState
    from qaas_engine.targets import KernelChoice

RULE = "latency_float"
BATCHES = (1, 32)
MIN_GAIN = 0.03  # a candidate must be this much faster at some batch size to be kept float
# and no more than this slower at any: the fastest rounds of one graph differ by about this much
NOISE = 0.01
MAX_CANDIDATES = 8  # timed at most; the rest stay int8
# exports, sessions and timing, all candidates together; a small model is done long before
# (MAX_ROUNDS), a large one whose MIN_ROUNDS do not fit is left all int8
BUDGET_S = 10.0
MIN_ROUNDS = 5  # every variant timed at least this many rounds, else nothing is decided
MAX_ROUNDS = 30
TARGET_ROUND_S = 0.002  # runs per round: enough that one round takes about this long
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
RESHAPES = frozenset({"Flatten", "Reshape", "Squeeze"})
JOIN_OPS = frozenset({"Add", "Sub", "Mul"})

Keep = frozenset[str]
# times each variant (a set of nodes kept float) at each batch size, in one interleaved session
# of rounds; None where the budget ran out before every variant had MIN_ROUNDS rounds
Measure = Callable[[list[Keep]], list[dict[int, float]] | None]


@dataclass(frozen=True)
class Candidate:
    """Nodes that are kept float together, and what they are."""

    label: str
    nodes: Keep


@dataclass
class LatencyChoice:
    """What the objective decided and the timings it decided on (the report's ``objective``)."""

    kept: list[Candidate] = field(default_factory=list)
    measured: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> batch -> ms
    rejected: dict[str, str] = field(default_factory=dict)  # label -> why
    note: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "objective": "latency",
            "kept_float": {c.label: sorted(c.nodes) for c in self.kept},
            "measured_ms": self.measured,
            "rejected": self.rejected,
            "how": (
                f"each candidate exported float and the whole graph timed in ONNX Runtime "
                f"against the all-int8 graph, batches {', '.join(map(str, BATCHES))}, variants "
                f"taking turns, the fastest round of each (load only ever adds time); kept "
                f"float only when at least {MIN_GAIN:.0%} faster at some batch and not more than "
                f"{NOISE:.0%} slower (the timing's noise) at any; {MIN_ROUNDS} to {MAX_ROUNDS} "
                f"rounds within {BUDGET_S:g} s"
            ),
            "note": self.note,
        }


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


def candidates(model: onnx.ModelProto, sim: QuantSim) -> list[Candidate]:
    """Where float can beat int8 on a CPU runtime: the entry conv, the head, residual joins.

    Only nodes the simulation quantizes count (a node already float is no candidate).
    """
    graph = model.graph
    inputs = {value.name for value in graph.input}
    outputs = {value.name for value in graph.output}
    constant = _constants(model)
    already_float = set(sim.placement.float_nodes) | set(sim.spec.keep_float_nodes)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node

    def weighted(node: onnx.NodeProto) -> bool:
        return node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constant

    found: list[Candidate] = []
    for node in graph.node:
        if not node.name or node.name in already_float:
            continue
        if weighted(node) and node.input[0] in inputs:
            found.append(Candidate(f"entry {node.op_type} {node.name}", frozenset({node.name})))
        elif weighted(node) and node.output[0] in outputs:
            nodes = {node.name}
            before = producer.get(node.input[0])
            if (
                before is not None
                and before.op_type in RESHAPES
                and before.name
                and len(consumers.get(before.output[0], [])) == 1
            ):
                nodes.add(before.name)  # moved float with it: no Q/DQ between them
            found.append(Candidate(f"head {node.op_type} {node.name}", frozenset(nodes)))
        elif node.op_type in JOIN_OPS and sum(i not in constant for i in node.input) >= 2:
            found.append(Candidate(f"join {node.op_type} {node.name}", frozenset({node.name})))
    # entries and heads first: a ResNet's many joins must not crowd them out of the cap
    order = {"entry": 0, "head": 1, "join": 2}
    found.sort(key=lambda candidate: order[candidate.label.split()[0]])
    return found[:MAX_CANDIDATES]


def _passes(times: Mapping[int, float], base: Mapping[int, float]) -> bool:
    """A clear gain at some batch size and no loss beyond the timing's noise at any."""
    shared = [b for b in base if b in times]
    if not shared or any(times[b] > base[b] * (1.0 + NOISE) for b in shared):
        return False
    return any(times[b] <= base[b] * (1.0 - MIN_GAIN) for b in shared)


def _gain(times: Mapping[int, float], base: Mapping[int, float]) -> float:
    return sum(1.0 - times[b] / base[b] for b in base if b in times and base[b] > 0)


def _words(times: Mapping[int, float]) -> dict[str, float]:
    return {f"batch_{b}": round(ms, 4) for b, ms in times.items()}


def choose(found: list[Candidate], measure: Measure) -> LatencyChoice:
    """The candidates to keep float, from ``measure``'s timings (a fake table in tests)."""
    choice = LatencyChoice()
    if not found:
        choice.note = "no candidate: no entry conv, Gemm/MatMul head or residual join quantized"
        return choice
    first = measure([frozenset()] + [c.nodes for c in found])
    if first is None:
        choice.note = "not decided: timing every candidate did not fit the budget; all int8"
        return choice
    base, *each = first
    choice.measured["all int8"] = _words(base)
    accepted: list[tuple[Candidate, dict[int, float]]] = []
    for candidate, times in zip(found, each, strict=True):
        choice.measured[candidate.label] = _words(times)
        if _passes(times, base):
            accepted.append((candidate, times))
        else:
            choice.rejected[candidate.label] = "no clear gain, or slower at some batch size"
    if len(accepted) > 1:
        together = frozenset().union(*(c.nodes for c, _ in accepted))
        second = measure([frozenset(), together])
        if second is not None and _passes(second[1], second[0]):
            choice.measured["together"] = _words(second[1])
            choice.measured["all int8 (again)"] = _words(second[0])
            choice.kept = [c for c, _ in accepted]
        else:
            best, _ = max(accepted, key=lambda item: _gain(item[1], base))
            if second is not None:
                choice.measured["together"] = _words(second[1])
                choice.measured["all int8 (again)"] = _words(second[0])
            for candidate, _ in accepted:
                if candidate is not best:
                    choice.rejected[candidate.label] = (
                        "faster alone, but the accepted ones together were not: kept the best"
                    )
            choice.kept = [best]
    else:
        choice.kept = [c for c, _ in accepted]
    choice.note = (
        f"{len(choice.kept)} of {len(found)} candidates kept float"
        if choice.kept
        else f"none of {len(found)} candidates was clearly faster float: all int8"
    )
    return choice


def _sessions_timer(
    variants: list[onnx.ModelProto],
    feeds: Mapping[int, dict[str, np.ndarray]],
    deadline: float,
) -> list[dict[int, float]] | None:
    """Per variant and batch, the fastest round's milliseconds per run; variants take turns."""
    runners = [session(model, threads=1) for model in variants]
    result: list[dict[int, float]] = [{} for _ in variants]
    for index, (batch, feed) in enumerate(feeds.items()):
        for runner in runners:
            runner.run(None, feed)  # warm-up: first-run allocations are not latency
        start = time.perf_counter()
        runners[0].run(None, feed)
        per_run = max(time.perf_counter() - start, 1e-6)
        repeats = max(1, int(TARGET_ROUND_S / per_run))
        best = [float("inf")] * len(variants)
        rounds = 0
        now = time.perf_counter()
        if per_run * repeats * len(variants) * MIN_ROUNDS > deadline - now:
            return None  # not even the fewest rounds fit what is left: decide nothing
        stop = now + (deadline - now) / (len(feeds) - index)  # this batch's share
        while rounds < MIN_ROUNDS or (rounds < MAX_ROUNDS and time.perf_counter() < stop):
            if time.perf_counter() > deadline:
                return None
            for i, runner in enumerate(runners):
                began = time.perf_counter()
                for _ in range(repeats):
                    runner.run(None, feed)
                best[i] = min(best[i], (time.perf_counter() - began) * 1000 / repeats)
            rounds += 1
        for times, ms in zip(result, best, strict=True):
            times[batch] = ms
    return result


def _feeds(state: PipelineState) -> dict[int, dict[str, np.ndarray]]:
    """One calibration sample repeated to each batch size (batch 1 only for stacked inputs)."""
    from qaas_engine.reporting.collect import synthetic_sample

    data = state.calibration
    if data is None:
        sample = synthetic_sample(state.model, state.executor.input_names)
    else:
        feeds, _ = next(data.batches(1))
        sample = {name: np.asarray(array, order="C") for name, array in feeds.items()}
        if data.one_at_a_time:
            return {1: sample}
    return {
        b: {n: np.ascontiguousarray(np.repeat(a[:1], b, axis=0)) for n, a in sample.items()}
        for b in BATCHES
    }


def ort_measure(
    state: PipelineState, sim: QuantSim, kernels: KernelChoice, budget_s: float = BUDGET_S
) -> Measure:
    """Exports each variant as the job would and times it in ONNX Runtime on this machine."""
    deadline = time.perf_counter() + budget_s
    feeds = _feeds(state)

    def measure(keeps: list[Keep]) -> list[dict[int, float]] | None:
        if not any(feeds.values()):
            return None  # no data and no fixed input shapes: nothing to run
        models = []
        for keep in keeps:
            if time.perf_counter() > deadline:
                return None
            variant = _placed(state.model, sim, keep)
            models.append(
                export_qdq(
                    state.model,
                    variant,
                    unsigned_weights=not kernels.signed_weights,
                    quantize_scalar_operands=True,
                    runtime_forms=True,
                )
            )
        try:
            return _sessions_timer(models, feeds, deadline)
        except Exception:  # a model with a fixed batch axis cannot run batch 32
            if len(feeds) == 1:
                raise
            return _sessions_timer(models, {1: feeds[1]}, deadline)

    return measure


def _actions(candidate: Candidate) -> list[RuleAction]:
    return [
        RuleAction(
            rule=RULE,
            node=node,
            action="kept float: the graph measured faster with it float",
            why=f"--objective latency: {candidate.label}",
        )
        for node in sorted(candidate.nodes)
    ]


def _placed(model: onnx.ModelProto, sim: QuantSim, keep: Keep) -> QuantSim:
    if not keep:
        return sim
    actions = [RuleAction(RULE, node, "kept float", "timing candidate") for node in sorted(keep)]
    return _float_weights_too(model, sim, actions)


def _float_weights_too(
    model: onnx.ModelProto, sim: QuantSim, actions: list[RuleAction]
) -> QuantSim:
    """Placed again with the actions' nodes float, their weights too: a float conv with weights
    on the int8 grid would keep the noise and gain no speed (ORT folds a constant weight's
    DequantizeLinear)."""
    placed = _keep_float(model, sim, actions)
    placed.weight_encodings = {
        name: encoding
        for name, encoding in placed.weight_encodings.items()
        if name in placed.placement.weights
    }
    placed.derive_bias_encodings()
    return placed


def keep_float_where_faster(
    state: PipelineState, sim: QuantSim, measure: Measure
) -> tuple[QuantSim, list[RuleAction], LatencyChoice]:
    """The simulation with the measured-faster nodes float, their report lines, the choice."""
    choice = choose(candidates(state.model, sim), measure)
    actions: list[RuleAction] = []
    for candidate in choice.kept:
        for action in _actions(candidate):
            timing = choice.measured.get(candidate.label, {})
            base = choice.measured.get("all int8", {})
            figures = ", ".join(
                f"{key.replace('_', ' ')} {base[key]:.3f} -> {ms:.3f} ms"
                for key, ms in timing.items()
                if key in base
            )
            actions.append(
                RuleAction(action.rule, action.node, action.action, f"{action.why}: {figures}")
            )
    if actions:
        sim = _float_weights_too(state.model, sim, actions)
    return sim, actions, choice
