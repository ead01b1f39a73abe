"""``output_grid``: a graph output whose own 8-bit grid limits it gets a 16-bit grid.

A network with several heads (MTCNN's ONet: box offsets near 0, landmarks as fractions of the
crop, a face probability) ends each head on its own output quantizer. The whole-output SQNR
hides what matters: landmarks sit around their mean (a face is centred in its crop), so most of
their signal is that mean, and what the task reads, the variation from face to face, spans a few
of the grid's 256 levels. So each output is judged by its worst channel's SQNR with the
channel's mean over the samples removed (the part that varies: what a detector, a landmark
regressor or an encoder passes on), measured as ONNX Runtime runs the exported graph on the
rules' calibration samples.

Where that figure misses ``QuantSpec.min_sqnr_db``, the output's quantizer is tried at 16 bits
(ONNX Runtime runs the producer as W8A16: float between 16-bit Q/DQ, the simulation's own
arithmetic) and kept only where the measured figure then meets the target and gains
``MIN_GAIN_DB`` or more: the grid was what stood between the output and its target, carrying
almost all of its noise, not the weights or the activations before it (those are the
``sensitive_tensor`` rule's).
Where ONNX Runtime's CPU would run a producer worth more than ``MAX_FLOAT_MAC_SHARE`` of the
model float, nothing is tried. Chosen by what is measured on calibration data, never by an op's
or a model's name; only what it changed gets a line in the report. Off under ``--strict-bits``,
with the other rules; after them, so it judges the grids they settled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qaas_engine import sixteen_bit_cost
from qaas_engine.cost.shapes import macs_per_sample
from qaas_engine.evaluation import DEAD_CHANNEL_SHARE
from qaas_engine.export.qdq import export_for_target
from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.sim import QuantSim
from qaas_engine.rule_action import RuleAction
from qaas_engine.sessions import session
from qaas_engine.step_registry import learns
from qaas_engine.targets import target_rules
from qaas_engine.tensors import batch_size

if TYPE_CHECKING:
    from qaas_engine.state import PipelineState

PROMOTED_BITS = 16
# measured gain of an output's worst centred-channel SQNR that shows its own grid limits it:
# 10 dB, the grid carried 90% of that output's noise (a 16-bit output runs its producer float on
# ONNX Runtime's CPU, so a grid that is one noise source among several keeps its 8 bits)
MIN_GAIN_DB = 10.0
SQNR_CEILING_DB = 200.0
# where ONNX Runtime's CPU has no 16-bit integer kernel, a promoted output's producer runs float:
# a head worth more than this share of the model's multiply-accumulates keeps its 8-bit grid
MAX_FLOAT_MAC_SHARE = 0.05

Rules = Callable[..., tuple[QuantSim, list[RuleAction]]]


def registered(apply: Rules) -> Rules:
    """``apply`` (``rules.apply_rules``) followed by this rule, on the grids it settled."""

    @functools.wraps(apply)
    def with_output_grids(
        state: PipelineState, sim: QuantSim, *args: Any, **kwargs: Any
    ) -> tuple[QuantSim, list[RuleAction]]:
        sim, actions = apply(state, sim, *args, **kwargs)
        return sim, actions + output_grids(state, sim)

    return with_output_grids


def channel_axis(value: np.ndarray) -> int | None:
    """The evaluation's channel axis: 1 of a 4-D output, else the last; None for a vector."""
    if value.ndim < 2:
        return None
    return 1 if value.ndim == 4 else value.ndim - 1


def centred_channel_sqnr(references: list[np.ndarray], tests: list[np.ndarray]) -> float:
    """The worst channel's SQNR (dB) with each channel's mean over the samples removed from the
    signal, over batches of one output; the whole output's, centred, without a channel axis."""
    reference = np.concatenate([np.asarray(r, dtype=np.float64) for r in references])
    test = np.concatenate([np.asarray(t, dtype=np.float64) for t in tests])
    axis = channel_axis(reference)
    if axis is None:
        reference, test, axis = reference.reshape(-1, 1), test.reshape(-1, 1), 1
    moved_ref = np.moveaxis(reference, axis, -1).reshape(-1, reference.shape[axis])
    moved_test = np.moveaxis(test, axis, -1).reshape(moved_ref.shape)
    signal = np.sum((moved_ref - moved_ref.mean(axis=0)) ** 2, axis=0)
    noise = np.sum((moved_ref - moved_test) ** 2, axis=0)
    live = signal > DEAD_CHANNEL_SHARE * float(np.max(signal))  # no dead channel decides
    if not np.any(live):
        return SQNR_CEILING_DB
    with np.errstate(divide="ignore"):
        ratios = signal[live] / np.maximum(noise[live], 1e-300)
    return float(min(SQNR_CEILING_DB, 10 * math.log10(max(float(ratios.min()), 1e-30))))


def measured_outputs(
    model: onnx.ModelProto,
    sim: QuantSim,
    batches: list[dict[str, np.ndarray]],
    references: list[list[np.ndarray]],
) -> dict[str, float]:
    """Each floating graph output's centred worst-channel SQNR, as ONNX Runtime runs the graph
    exported as the pipeline exports it, in the simulation's session (its arithmetic)."""
    qdq = export_for_target(model, sim)
    names = [value.name for value in model.graph.output]
    runtime = session(qdq, qdq_fusions=False)
    ran = [runtime.run(names, feeds) for feeds in batches]
    figures = {}
    for index, name in enumerate(names):
        refs = [np.asarray(reference[index]) for reference in references]
        if not refs or not np.issubdtype(refs[0].dtype, np.floating):
            continue
        figures[name] = centred_channel_sqnr(refs, [np.asarray(r[index]) for r in ran])
    return figures


def output_grids(state: PipelineState, sim: QuantSim) -> list[RuleAction]:
    """Promote (in place) the output quantizers whose 8-bit grid limits their output."""
    spec = sim.spec
    runs = state.simulated_runs
    if (
        spec.strict_bits
        or spec.activation_bits != 8
        or learns(spec.pipeline)
        or runs is None
        or runs.references is None
        or not runs.batches
    ):
        return []
    model = state.model
    candidates = [
        value.name
        for value in model.graph.output
        if value.name in sim.activation_encodings
        and sim.activation_encodings[value.name].scheme.bits < PROMOTED_BITS
    ]
    if not candidates:
        return []
    batches, references = runs.batches, runs.references
    before = measured_outputs(model, sim, batches, references)
    short = [name for name in candidates if before.get(name, math.inf) < spec.min_sqnr_db]
    if not short:
        return []
    costly = _costly(state, sim, short, batches[0])
    short = [name for name in short if name not in costly]
    if not short:
        return []
    saved: dict[str, Encoding] = {name: sim.activation_encodings[name] for name in short}
    for name in short:
        sim.activation_encodings[name] = sim.wide_encoding(name, PROMOTED_BITS)
    sim.invalidate()
    sim.derive_bias_encodings()
    after = measured_outputs(model, sim, batches, references)
    kept = [
        name
        for name in short
        if after.get(name, -math.inf) >= max(spec.min_sqnr_db, before[name] + MIN_GAIN_DB)
    ]
    dropped = [name for name in short if name not in kept]
    if dropped:
        for name in dropped:
            sim.activation_encodings[name] = saved[name]
        sim.invalidate()
        sim.derive_bias_encodings()
    data = state.calibration
    samples = (
        len(batches)
        if data is None or data.one_at_a_time
        else sum(batch_size(feeds) for feeds in batches)
    )
    actions = []
    for name in kept:
        actions.append(
            RuleAction(
                rule="output_grid",
                node=name,
                action=f"{PROMOTED_BITS}-bit output grid (W8A{PROMOTED_BITS} producer)",
                why=(
                    f"its worst channel's SQNR with the channel mean removed (what varies from "
                    f"sample to sample) measured {before[name]:.1f} dB on the first {samples} "
                    f"calibration samples (target {spec.min_sqnr_db:g} dB), {after[name]:.1f} dB "
                    f"with a {PROMOTED_BITS}-bit grid: its own 8-bit grid carried almost all of "
                    "this output's noise and stood between it and the target"
                ),
            )
        )
    return actions


def _costly(
    state: PipelineState, sim: QuantSim, names: list[str], feeds: dict[str, np.ndarray]
) -> dict[str, float]:
    """The outputs whose 16-bit grid would run more than ``MAX_FLOAT_MAC_SHARE`` of the model's
    multiply-accumulates float, with that share (none where 16-bit kernels run integer)."""
    if not target_rules(sim.spec.target).sixteen_bit_runs_float:
        return {}
    data = state.calibration
    if data is None or not data.one_at_a_time:
        feeds = {name: value[:1] if np.ndim(value) else value for name, value in feeds.items()}
    try:
        macs = macs_per_sample(state.model, state.executor, feeds)
    except Exception:  # shapes unknown: nothing is counted, nothing is held back
        return {}
    total = sum(macs.values())
    if total <= 0:
        return {}
    forced = sixteen_bit_cost.forced_float_nodes(state.model, sim.placement, names)
    shares = {name: sixteen_bit_cost.float_macs([name], forced, macs) / total for name in names}
    return {name: share for name, share in shares.items() if share > MAX_FLOAT_MAC_SHARE}
