"""Accuracy and fidelity, accumulated batch by batch so no output set is held whole.

Fidelity compares a model's first output with the float model's: SQNR in dB, top-1 agreement
(argmax over the last axis), and mean per-sample cosine similarity.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qaas_engine.data import Dataset
from qaas_engine.export.unsigned_copy import unsigned_copy
from qaas_engine.ort_emulation import Emulation, emulated, load_optimized
from qaas_engine.output_axes import LOGIT_CLIP, channel_axes, logit_channels
from qaas_engine.quant.sim import QuantSim
from qaas_engine.runtime_graph import requantizing_kernels
from qaas_engine.runtime_graph import summarize as runtime_graph_summary
from qaas_engine.sessions import session
from qaas_engine.simulated_runs import graph_digest
from qaas_engine.state import PipelineState
from qaas_engine.streams import StreamCarry, state_pairs
from qaas_engine.tapped import samples
from qaas_engine.tensors import batch_size, to_torch

# An exact match has infinite SQNR; JSON has no infinity, so it is reported at this ceiling.
SQNR_CEILING_DB = 200.0
# what metrics.engines.onnxruntime adds where the figures come from export.unsigned_copy
UNSIGNED_COPY_NOTE = (
    ", on the graph with its int8 tensors stored as uint8 (the same values): this CPU has no "
    "int8 dot product and ONNX Runtime's u8s8 kernels saturate on the file as written here, "
    "not on the hardware it is laid out for"
)
# how the simulation's session runs the exported graph (sessions.QDQ_REWRITES)
SIMULATION_SESSION = (
    "graph optimizer on for float ops as deployed, its Q/DQ rewrites off (Q/DQ computed in float)"
)
# A channel whose power is below this share of the strongest channel's (amplitude 1e-6 of it)
# carries no signal: its float values are the float model's own rounding noise (a dead channel
# of all-MiniLM's embedding is about 1e-33 where the others are about 0.05; the quantized model
# computes 0 there, which read as a worst channel of exactly 0 dB for every configuration)
DEAD_CHANNEL_SHARE = 1e-12
# The "_low" figures: the 10th percentile over this many resamples of the samples (with
# replacement). A figure that a handful of samples happen to favour is not a measurement a
# target can be judged met on; this says how far it would fall on another draw of the data.
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_QUANTILE = 0.10
# Per-sample sums are kept up to this many values per meter (float32: 40 MB); past it the
# "_low" figures are left out: a set that large resolves a target without them.
PER_SAMPLE_VALUES = 10_000_000


class FidelityMeter:
    def __init__(
        self, channel_axis: int | None = None, logit: tuple[tuple[int, int], ...] = ()
    ) -> None:
        # the axis holding the output's channels (``output_axes``); None: the default one
        self.channel_axis = channel_axis
        # channel ranges holding probabilities (``output_axes.logit_channels``): their
        # per-channel figures compare both outputs in log-odds, clipped at LOGIT_CLIP
        self.logit = logit
        self.used_axis: int | None = None  # the axis the per-channel sums were taken along
        self.signal = 0.0
        self.noise = 0.0
        self.agree = 0
        self.positions = 0
        self.cosine_sum = 0.0
        self.samples = 0
        self.correct = 0
        self.labelled = 0
        self.max_abs_diff = 0.0
        # per channel (axis 1 of an NCHW tensor, else the last axis, unless ``channel_axis``
        # names one): a small-range part of an output cannot hide behind a large-range one
        self.channel_signal: np.ndarray | None = None
        self.channel_noise: np.ndarray | None = None
        self.channels_consistent = True
        # the same sums per sample (samples x channels), and each sample's cosine: resampled
        # for the "_low" figures
        self.sample_signal: list[np.ndarray] = []
        self.sample_noise: list[np.ndarray] = []
        self.sample_cosine: list[np.ndarray] = []
        self.per_sample_complete = True

    def update(self, reference: np.ndarray, test: np.ndarray, labels: np.ndarray | None) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        test = np.asarray(test, dtype=np.float64)
        if reference.shape != test.shape:
            raise ValueError(f"output shapes differ: {reference.shape} vs {test.shape}")
        diff = reference - test
        self.signal += float(np.sum(reference**2))
        self.noise += float(np.sum(diff**2))
        self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(diff), initial=0.0)))
        if self.logit and reference.ndim >= 2:
            # per channel only: the whole-output SQNR and cosine stay in the output's values
            judged = self._log_odds(reference)
            self._update_channels(judged, judged - self._log_odds(test))
        else:
            self._update_channels(reference, diff)
        if reference.ndim >= 1 and reference.shape[-1] > 1:
            self.agree += int(np.sum(reference.argmax(-1) == test.argmax(-1)))
            self.positions += int(np.prod(reference.shape[:-1]))
        rows_ref = (
            reference.reshape(reference.shape[0], -1) if reference.ndim else reference.reshape(1, 1)
        )
        rows_test = test.reshape(rows_ref.shape)
        norms = np.linalg.norm(rows_ref, axis=1) * np.linalg.norm(rows_test, axis=1)
        dots = np.sum(rows_ref * rows_test, axis=1)
        cos = np.where(norms > 0, dots / np.maximum(norms, 1e-30), 1.0)
        self.cosine_sum += float(np.sum(cos))
        self.sample_cosine.append(cos)
        self.samples += rows_ref.shape[0]
        if labels is not None:
            predictions = test.reshape(len(labels), -1, test.shape[-1]).argmax(-1)[:, 0]
            self.correct += int(np.sum(predictions == labels))
            self.labelled += len(labels)

    def _log_odds(self, values: np.ndarray) -> np.ndarray:
        axis = self.axis(values.ndim)
        values = values.copy()
        for start, stop in self.logit:
            index = [slice(None)] * values.ndim
            index[axis] = slice(start, stop)
            part = np.clip(values[tuple(index)], LOGIT_CLIP, 1 - LOGIT_CLIP)
            values[tuple(index)] = np.log(part / (1 - part))
        return values

    def _update_channels(self, reference: np.ndarray, diff: np.ndarray) -> None:
        if reference.ndim < 2 or not self.channels_consistent:
            return
        axis = self.used_axis = self.axis(reference.ndim)
        others = tuple(i for i in range(reference.ndim) if i != axis)
        within = tuple(i for i in others if i != 0)  # axis 0 holds the samples
        sample_signal = np.sum(reference**2, axis=within) if within else reference**2
        sample_noise = np.sum(diff**2, axis=within) if within else diff**2
        signal, noise = sample_signal.sum(axis=0), sample_noise.sum(axis=0)
        if self.channel_signal is None or self.channel_noise is None:
            self.channel_signal, self.channel_noise = signal, noise
        elif self.channel_signal.shape == signal.shape:
            self.channel_signal = self.channel_signal + signal
            self.channel_noise = self.channel_noise + noise
        else:  # the channel count changed between batches: no per-channel figure
            self.channels_consistent = False
            return
        kept = sum(part.size for part in self.sample_signal)
        if kept + sample_signal.size > PER_SAMPLE_VALUES:
            self.sample_signal, self.sample_noise = [], []
            self.per_sample_complete = False
        if self.per_sample_complete:
            self.sample_signal.append(sample_signal.astype(np.float32))
            self.sample_noise.append(sample_noise.astype(np.float32))

    def axis(self, rank: int) -> int:
        """The channel axis of an output of ``rank`` dimensions (at least two)."""
        if self.channel_axis is not None and 0 < self.channel_axis < rank:
            return self.channel_axis
        return 1 if rank == 4 else rank - 1

    def worst_channel(self) -> tuple[int, float] | None:
        """(channel, SQNR dB) of the channel quantization hurts most, among those with signal."""
        signal, noise = self.channel_signal, self.channel_noise
        if not self.channels_consistent or signal is None or noise is None or signal.size < 2:
            return None
        live = signal > DEAD_CHANNEL_SHARE * float(np.max(signal))
        if not np.any(live):
            return None
        with np.errstate(divide="ignore", over="ignore"):
            ratios = np.where(live, signal / np.maximum(noise, 1e-300), np.inf)
        channel = int(np.argmin(ratios))
        ratio = float(ratios[channel])
        db = (
            SQNR_CEILING_DB if noise[channel] == 0 else min(SQNR_CEILING_DB, 10 * math.log10(ratio))
        )
        return channel, round(db, 3)

    def low_figures(self, seed: int = 0) -> dict[str, float]:
        """The worst-channel SQNR and mean cosine that 90% of resamples of the samples reach
        (``BOOTSTRAP_QUANTILE``): what a verdict on this data can rely on."""
        figures: dict[str, float] = {}
        cosines = np.concatenate(self.sample_cosine) if self.sample_cosine else np.zeros(0)
        count = len(cosines)
        if count < 2:
            return figures
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(count, np.full(count, 1.0 / count), size=BOOTSTRAP_RESAMPLES)
        figures["cosine_low"] = round(
            float(np.quantile(weights @ cosines / count, BOOTSTRAP_QUANTILE)), 6
        )
        signal, noise = self.channel_signal, self.channel_noise
        if not self.channels_consistent or signal is None or noise is None or signal.size < 2:
            return figures
        if not self.per_sample_complete or not self.sample_signal:
            return figures
        per_signal = np.concatenate(self.sample_signal).astype(np.float64)
        per_noise = np.concatenate(self.sample_noise).astype(np.float64)
        if len(per_signal) != count:  # samples are not axis 0 of this output
            return figures
        live = signal > DEAD_CHANNEL_SHARE * float(np.max(signal))
        if not np.any(live):
            return figures
        if not np.any(per_noise[:, live]):
            # no noise on any draw: every ratio is a float32 signal over 1e-300 or infinite,
            # far above the ceiling (what the draws below would compute, without them)
            figures["worst_channel_sqnr_db_low"] = SQNR_CEILING_DB
            return figures
        drawn_signal = weights @ per_signal[:, live]
        drawn_noise = weights @ per_noise[:, live]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(
                drawn_signal > 0, drawn_signal / np.maximum(drawn_noise, 1e-300), np.inf
            )
        worst = ratios.min(axis=1)
        db = np.minimum(SQNR_CEILING_DB, 10 * np.log10(np.maximum(worst, 1e-300)))
        figures["worst_channel_sqnr_db_low"] = round(float(np.quantile(db, BOOTSTRAP_QUANTILE)), 3)
        return figures

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return SQNR_CEILING_DB
        if self.signal == 0:
            return -SQNR_CEILING_DB
        return min(SQNR_CEILING_DB, 10 * math.log10(self.signal / self.noise))

    def result(self, *, reference_itself: bool = False) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if self.labelled:
            metrics["top1"] = self.correct / self.labelled
        metrics["sqnr_db"] = None if reference_itself else round(self.sqnr_db(), 3)
        metrics["top1_agreement"] = self.agree / self.positions if self.positions else None
        metrics["cosine"] = self.cosine_sum / self.samples if self.samples else None
        worst = None if reference_itself else self.worst_channel()
        if worst is not None:
            metrics["worst_channel"], metrics["worst_channel_sqnr_db"] = worst
            metrics["channel_axis"] = self.used_axis
        if self.logit:
            metrics["log_odds_channels"] = [list(part) for part in self.logit]
            metrics["log_odds_clip"] = LOGIT_CLIP
        if not reference_itself:
            metrics.update(self.low_figures())
        metrics["samples"] = self.samples
        return metrics


def evaluate(
    state: PipelineState,
    sim: QuantSim,
    qdq: onnx.ModelProto,
    data: Dataset | None,
    max_samples: int | None = None,
    simulated_samples: int | None = None,
) -> dict[str, Any]:
    """Float, simulated and ONNX Runtime outputs side by side on the same batches; the
    simulation on the first ``simulated_samples`` of them only (None: all).

    All three run in ONNX Runtime: the float graph, the QDQ graph with ORT's Q/DQ rewrites off
    (Q and DQ computed in float: the simulation, exactly as exported; float ops optimized as
    deployed) and the QDQ graph as deployed.
    Where ORT cannot load the float graph, the torch executor computes it. When the torch
    executor exists anyway (a learning step or a fallback built it), the torch simulation is
    checked against the exported graph on the first batch (``torch_simulation_vs_export``).

    The simulation runs the exported graph unfused, with ORT's integer kernels emulated in
    float ops: 5-10x the deployed graph's time a sample. Every verdict (auto, the report's
    accuracy) reads the deployed figures, so the simulation is a sampled check that it computes
    what ORT computes (``simulation_vs_onnxruntime``), not a second measurement of accuracy.
    """
    if data is None:
        empty = {"top1": None, "sqnr_db": None, "top1_agreement": None, "cosine": None}
        return {
            "float": dict(empty),
            "simulated": dict(empty),
            "onnxruntime": dict(empty),
            "simulation_vs_onnxruntime": dict(empty),
            "note": "no calibration or evaluation data given: nothing to measure",
        }
    outputs = [value.name for value in state.model.graph.output]
    output = outputs[0]  # labels (top-1) refer to the first output
    qdq, stored_unsigned = _runnable_here(qdq, sim)
    with tempfile.TemporaryDirectory(prefix="qaas-optimized-") as folder:
        saved = Path(folder) / "optimized.onnx"
        runtime = session(qdq, save_optimized=str(saved))
        runtime_graph = runtime_graph_summary(saved)
        simulation, simulation_session = _simulation_graph(qdq, saved)
    opened: list[Any] = []  # the simulation's session, once a batch was not run by the rules

    def rules_outputs(
        index: int, feeds: dict[str, np.ndarray], optimized: bool
    ) -> list[np.ndarray] | None:
        """The rules' outputs of this graph on these feeds, in a session made this way."""
        if runs is None or digest is None:
            return None
        return runs.lookup(digest, index, feeds, optimized=optimized)

    def simulate(index: int | None, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], bool]:
        """The graph's outputs in the simulation's session; whether the rules' run of batch
        ``index`` gave them (not where integer kernels are emulated: the rules ran the exported
        graph as it is)."""
        ran = None
        if index is not None and not simulation.changed:
            ran = rules_outputs(index, feeds, optimized=False)
        if ran is not None:
            return ran, True
        if not opened:
            opened.append(simulation_session or session(qdq, qdq_fusions=False))
        return opened[0].run(outputs, feeds), False

    def deploy(index: int, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], bool]:
        """The graph's outputs as deployed; whether the rules' run gave them."""
        ran = rules_outputs(index, feeds, optimized=True)
        if ran is not None:
            return ran, True
        return runtime.run(outputs, feeds), False

    # the rules ran this very graph on the first calibration samples: same session settings,
    # same feeds, so the same outputs; their float outputs and batches serve either way
    runs = state.simulated_runs if data is state.calibration else None
    digest = graph_digest(qdq) if runs is not None and runs.outputs else None
    reused_simulation = reused_deployed = 0
    built: list[tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], str]] = []

    def float_run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not built:  # only when a batch was not kept from calibration
            built.append(_float_runner(state, outputs))
        return built[0][0](feeds)

    # measured on the calibration data: its float outputs were computed while calibrating
    kept = state.calibration_outputs if data is state.calibration and len(outputs) == 1 else None
    reused = 0
    axes = channel_axes(state.model)
    logit = logit_channels(state.model)
    meters = {
        name: {
            # simulation vs runtime stays in the output's own values: that is what they compute
            key: FidelityMeter(axes.get(name), () if key == "gap" else logit.get(name, ()))
            for key in ("float", "simulated", "onnxruntime", "gap")
        }
        for name in outputs
    }
    total = data.num_samples if max_samples is None else min(max_samples, data.num_samples)
    done = 0
    torch_check: dict[str, Any] | None = None
    simulate_limit = total if simulated_samples is None else min(simulated_samples, total)
    simulated_count = 0
    step = state.spec.batch_size
    if runs is not None and runs.batches and not data.one_at_a_time:
        # batches as the rules cut them, so their runs (float, and of this graph) match batch
        # for batch (the meters sum over samples: how they are batched changes no figure)
        step = batch_size(runs.batches[0])
    from_rules = 0  # float outputs of all graph outputs, as the rules' probe kept them
    # a stateful model on one sample at a time: each measured model carries its own state
    # where the data recorded the float model's (``streams``)
    pairs = state_pairs(state.model) if data.one_at_a_time or step == 1 else []
    carry = StreamCarry(pairs, outputs) if pairs else None
    for index, (feeds, labels) in enumerate(data.batches(step, max_samples)):
        kept_output = _kept_output(kept, index, done, feeds, data.one_at_a_time)
        probed = runs.reference(index, feeds) if runs is not None else None
        if kept_output is not None:
            references = [kept_output]
            reused += 1
        elif probed is not None and len(probed) == len(outputs):
            references = [np.asarray(value, dtype=np.float32) for value in probed]
            from_rules += 1
        else:
            references = [np.asarray(value, dtype=np.float32) for value in float_run(feeds)]
        count = 1 if data.one_at_a_time else batch_size(feeds)
        matched = carry.step(feeds) if carry is not None else []
        own = carry.feeds("deployed", feeds, matched) if carry is not None else feeds
        ran, known_deployed = deploy(index, own)
        reused_deployed += known_deployed
        deployed = [np.asarray(v, dtype=np.float32) for v in ran]
        for i, name in enumerate(outputs):
            labelled = labels if i == 0 else None
            meters[name]["float"].update(references[i], references[i], labelled)
            meters[name]["onnxruntime"].update(references[i], deployed[i], labelled)
        rows = _simulated_rows(count, simulate_limit - simulated_count, references + deployed)
        if rows:
            own = carry.feeds("simulated", feeds, matched) if carry is not None else feeds
            if rows < count:
                own = samples(own, 0, rows)
                ran, known = simulate(None, own)  # the rules ran whole batches only
            else:
                ran, known = simulate(index, own)
            reused_simulation += known
            simulated = [np.asarray(v, dtype=np.float32) for v in ran]
            if carry is not None:
                carry.record("simulated", simulated)
            for i, name in enumerate(outputs):
                labelled = labels if i == 0 else None
                if labelled is not None and rows < count:
                    labelled = labelled[:rows]
                reference, against = references[i], deployed[i]
                if rows < count:
                    reference, against = reference[:rows], against[:rows]
                meters[name]["simulated"].update(reference, simulated[i], labelled)
                meters[name]["gap"].update(simulated[i], against, None)
            simulated_count += rows
            if torch_check is None and getattr(sim.executor, "built", True):
                torch_check = _torch_simulation_check(sim, own, output, simulated[0])
        if carry is not None:
            carry.record("float", references)
            carry.record("deployed", deployed)
        done += count
        state.progress("evaluation", min(1.0, done / max(total, 1)))
    every = simulated_count == done
    per_output = {name: _output_metrics(meters[name], every) for name in outputs}
    metrics = {
        **per_output[output],  # the first output's, as before: float, simulated, onnxruntime...
        "outputs": per_output,
        "output": output,
        "samples": {"measured": done, "available": data.num_samples, "simulated": simulated_count},
        "engines": {
            "float": (built[0][1] if built else "onnxruntime")
            + (f", {reused} batches kept from calibration" if reused else "")
            + (f", {from_rules} batches kept from the rules' probe" if from_rules else ""),
            "simulated": f"onnxruntime, {SIMULATION_SESSION}"
            + _emulation_note(simulation)
            + (
                ""
                if every
                else f", on the first {simulated_count} of the {done} samples measured (a "
                "sampled check that it computes what ONNX Runtime computes; "
                "--simulation-samples all runs it on every one)"
            )
            + (
                f", {reused_simulation} batches kept from the rules' run of this graph"
                if reused_simulation
                else ""
            ),
            "onnxruntime": "onnxruntime, default optimizations"
            + (UNSIGNED_COPY_NOTE if stored_unsigned else "")
            + (
                f", {reused_deployed} batches kept from the rules' run of this graph"
                if reused_deployed
                else ""
            ),
            **({"stream": _stream_note(carry)} if carry is not None and carry.carried else {}),
        },
        "runtime_graph": runtime_graph,
    }
    if carry is not None and carry.states:
        metrics["stream_states"] = dict(sorted(carry.states.items()))
    metrics["simulation_kernels"] = {
        "emulated": simulation.emulated,
        "not_emulated": simulation.not_emulated,
        **({"error": simulation.error} if simulation.error else {}),
    }
    if torch_check is not None:
        metrics["torch_simulation_vs_export"] = torch_check
    return metrics


def _runnable_here(qdq: onnx.ModelProto, sim: QuantSim) -> tuple[onnx.ModelProto, bool]:
    """The graph ORT runs for the figures: ``qdq``, or its copy with int8 tensors stored as
    uint8 where this CPU's u8s8 kernels would saturate on a layout made for other hardware
    (``KernelChoice.saturates_here``); whether it is the copy."""
    if not sim.kernels.saturates_here:
        return qdq, False
    copy = unsigned_copy(qdq)
    return (qdq, False) if copy is None or copy is qdq else (copy, True)


def _stream_note(carry: StreamCarry) -> str:
    inputs = ", ".join(repr(name) for name in sorted(carry.states))
    return (
        f"{carry.carried} samples took the state the float model returned for the sample "
        f"before ({inputs}): there the simulated and deployed models were fed the state they "
        "returned themselves, as a stream runs them"
    )


def _simulation_graph(qdq: onnx.ModelProto, optimized: Path) -> tuple[Emulation, Any]:
    """The exported graph with the integer kernels ORT's optimizer placed (read from the graph
    it saved at ``optimized``) computed as ORT computes them, and its session (ORT's Q/DQ
    rewrites off, float ops optimized as deployed);
    the graph as it is, and no session yet, where that fails (the reason kept)."""
    try:
        emulation = emulated(qdq, load_optimized(optimized))
        if not emulation.changed:
            return emulation, None
        return emulation, session(emulation.model, qdq_fusions=False)
    except Exception as error:  # the plain graph is still a faithful float simulation
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return Emulation(qdq, error=reason), None


def _emulation_note(simulation: Emulation) -> str:
    if not simulation.emulated:
        return ""
    kernels = ", ".join(f"{n} {op}" for op, n in sorted(simulation.emulated.items()))
    return f", ONNX Runtime's integer kernels computed as it computes them ({kernels})"


def _output_metrics(meters: dict[str, FidelityMeter], every: bool = True) -> dict[str, Any]:
    """``every``: the simulation ran on every sample the others did."""
    gap = meters["gap"].result()
    gap["max_abs_diff"] = meters["gap"].max_abs_diff
    simulated = meters["simulated"].result()
    # ONNX Runtime computed exactly the simulation's outputs on every sample (no difference,
    # no NaN: the noise sum is then exactly 0): its meter saw the very same updates, so its
    # figures are the simulation's, without a second bootstrap over the same per-sample sums
    exact = every and meters["gap"].noise == 0 and meters["gap"].max_abs_diff == 0
    return {
        "float": meters["float"].result(reference_itself=True),
        "simulated": simulated,
        "onnxruntime": dict(simulated) if exact else meters["onnxruntime"].result(),
        "simulation_vs_onnxruntime": gap,
    }


def _simulated_rows(count: int, left: int, outputs: list[np.ndarray]) -> int:
    """How many of a batch of ``count`` samples the simulation runs on, ``left`` still to run:
    a first part of it only where every output holds the batch's samples along axis 0 (so the
    other runs' rows can be cut to match), else the whole batch or none of it."""
    if left <= 0:
        return 0
    if left >= count:
        return count
    if all(np.ndim(value) and np.shape(value)[0] == count for value in outputs):
        return left
    return count


def _kept_output(
    kept: list[np.ndarray] | None,
    index: int,
    start: int,
    feeds: dict[str, np.ndarray],
    one_at_a_time: bool,
) -> np.ndarray | None:
    """Calibration's float output for this batch (batch ``index``, from sample ``start``),
    when calibration covered the same samples: one sample per batch in both passes, or the
    rows ``start`` on of calibration's batches, however each pass cut its batches."""
    if kept is None:
        return None
    if one_at_a_time:
        return np.asarray(kept[index], dtype=np.float32) if index < len(kept) else None
    first = next(iter(feeds.values()))
    if first.ndim == 0:
        return None
    stop, offset, rows = start + first.shape[0], 0, []
    for output in kept:
        if output.ndim == 0:
            return None
        low, high = max(start, offset), min(stop, offset + output.shape[0])
        if low < high:
            rows.append(output[low - offset : high - offset])
        offset += output.shape[0]
        if offset >= stop:
            break
    if offset < stop:
        return None  # calibration kept fewer samples than this batch reaches
    joined = rows[0] if len(rows) == 1 else np.concatenate(rows)
    return np.asarray(joined, dtype=np.float32)


def _float_runner(
    state: PipelineState, outputs: list[str]
) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], str]:
    """The float reference's outputs per batch: ONNX Runtime, else the torch executor."""
    try:
        float_session = session(state.model)
    except Exception as error:  # a graph only the torch executor runs
        reason = str(error).splitlines()[0][:200]

        def run_in_torch(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            import torch

            with torch.no_grad():
                result = state.executor.run(to_torch(feeds), weights=state.float_weights)
            return [result[name].float().numpy() for name in outputs]

        return run_in_torch, f"torch (onnxruntime cannot load the float graph: {reason})"
    return (lambda feeds: list(float_session.run(outputs, feeds))), "onnxruntime"


def _torch_simulation_check(
    sim: QuantSim, feeds: dict[str, np.ndarray], output: str, exported: np.ndarray
) -> dict[str, Any]:
    """The torch simulation that learning steps trained, against the exported graph."""
    import torch

    with torch.no_grad():
        simulated = sim.run(to_torch(feeds), outputs=[output])[output].float().numpy()
    meter = FidelityMeter()
    meter.update(simulated, exported, None)
    result = meter.result()
    result["max_abs_diff"] = meter.max_abs_diff
    return result


SIM_RUNTIME_AGREEMENT_FLOOR = 0.99


def gap_warnings(metrics: dict[str, Any]) -> list[str]:
    """Say so loudly when ONNX Runtime does not compute what the simulation computed, for any
    output."""
    per_output = metrics.get("outputs") or {metrics.get("output"): metrics}
    cause = _emulation_gap_cause(metrics.get("simulation_kernels")) or _gap_cause(
        metrics.get("runtime_graph")
    )
    return [
        warning
        for name, measured in per_output.items()
        for warning in _gap_warning(name, measured, cause, several=len(per_output) > 1)
    ]


def _gap_warning(name: str | None, metrics: dict[str, Any], cause: str, several: bool) -> list[str]:
    agreement = metrics.get("simulation_vs_onnxruntime", {}).get("top1_agreement")
    if agreement is None or agreement >= SIM_RUNTIME_AGREEMENT_FLOOR:
        return []
    where = f"output {name}: " if several else ""
    return [
        f"{where}ONNX Runtime agrees with the simulation on only {agreement:.1%} of top-1 "
        f"predictions: the exported graph computed with {SIMULATION_SESSION} "
        "(metrics.simulated) and as deployed (metrics.onnxruntime) differ; " + cause
    ]


def _emulation_gap_cause(kernels: dict[str, Any] | None) -> str | None:
    """What is left between simulation and runtime once the simulation computes ORT's integer
    kernels as ORT does (metrics.simulation_kernels); None where it did not."""
    if not kernels or kernels.get("error"):
        return None
    left = kernels.get("not_emulated") or {}
    if left:
        named = ", ".join(f"{n} {op}" for op, n in sorted(left.items(), key=lambda x: -x[1]))
        return (
            "the simulation computes ORT's fused integer kernels as ORT does, except these, "
            f"which round their outputs their own way ({named}); this network amplifies those "
            "last-bit differences: keeping the most sensitive of these ops in float "
            "(--keep-float OP) narrows the gap"
        )
    if kernels.get("emulated"):
        return (
            "the simulation computes every integer kernel ORT fused as ORT does, so what is left "
            "is ORT's float rewrites (float kernels fused or re-laid out, summing in another "
            "order), which this network amplifies"
        )
    return None


def _gap_cause(graph: dict[str, Any] | None) -> str:
    """Name what the deployed graph computes differently, from ORT's optimized graph."""
    if not graph:
        return "ONNX Runtime's optimized graph could not be inspected"
    kernels = requantizing_kernels(graph)
    if kernels:
        named = ", ".join(f"{n} {op}" for op, n in sorted(kernels.items(), key=lambda x: -x[1]))
        return (
            f"its optimizer fused Q/DQ groups into integer kernels that round their outputs "
            f"their own way ({named}); this network amplifies those last-bit differences, which "
            "is also why its quantization noise is high: keeping the most sensitive of these "
            "ops in float (--keep-float OP) narrows both"
        )
    return (
        "no requantizing integer kernel was fused (metrics.runtime_graph), so the difference is "
        "the integer kernels' own arithmetic (rounding of the requantization scale, or int8 "
        "saturation where the CPU lacks VNNI)"
    )


def artifact_warnings(report: dict[str, Any]) -> list[str]:
    """The target's own caveat, and an int8 artifact that ran slower than float here."""
    warnings = []
    target = report.get("target") or {}
    if "saturate" in str(target.get("reason", "")):
        warnings.append(f"target {target['target']}: {target['reason']}")
    speedups = (report.get("latency_ms") or {}).get("speedup") or {}
    if target.get("executed") is False:
        speedups = {}  # a layout for other hardware, timed on this CPU: no verdict on its speed
    slower = {batch: ratio for batch, ratio in speedups.items() if ratio < 1.0}
    if slower:
        figures = ", ".join(
            f"{batch.replace('_', ' ')}: {ratio:.2f}x" for batch, ratio in slower.items()
        )
        warnings.append(
            f"the quantized model ran slower than float on this machine ({figures} of float's "
            f"speed, kernel mode {target.get('kernel_mode', '?')}); small layers and Q/DQ "
            "overhead can outweigh int8 arithmetic"
        )
    return warnings
