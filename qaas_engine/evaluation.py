"""Accuracy and fidelity, accumulated batch by batch so no output set is held whole.

Fidelity compares a model's first output with the float model's: SQNR in dB, top-1 agreement
(argmax over the last axis), and mean per-sample cosine similarity.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from qaas_engine.data import Dataset
from qaas_engine.quant.sim import QuantSim
from qaas_engine.sessions import session
from qaas_engine.state import PipelineState, to_torch

# An exact match has infinite SQNR; JSON has no infinity, so it is reported at this ceiling.
SQNR_CEILING_DB = 200.0


class FidelityMeter:
    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.agree = 0
        self.positions = 0
        self.cosine_sum = 0.0
        self.samples = 0
        self.correct = 0
        self.labelled = 0
        self.max_abs_diff = 0.0

    def update(self, reference: np.ndarray, test: np.ndarray, labels: np.ndarray | None) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        test = np.asarray(test, dtype=np.float64)
        if reference.shape != test.shape:
            raise ValueError(f"output shapes differ: {reference.shape} vs {test.shape}")
        diff = reference - test
        self.signal += float(np.sum(reference**2))
        self.noise += float(np.sum(diff**2))
        self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(diff), initial=0.0)))
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
        self.samples += rows_ref.shape[0]
        if labels is not None:
            predictions = test.reshape(len(labels), -1, test.shape[-1]).argmax(-1)[:, 0]
            self.correct += int(np.sum(predictions == labels))
            self.labelled += len(labels)

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
        metrics["samples"] = self.samples
        return metrics


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """The exported model as ONNX Runtime runs it by default (graph optimizer on)."""
    return session(model)


def evaluate(
    state: PipelineState,
    sim: QuantSim,
    qdq: onnx.ModelProto,
    data: Dataset | None,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Float, simulated and ONNX Runtime outputs side by side on the same batches.

    All three run in ONNX Runtime: the float graph, the QDQ graph with the optimizer off (Q and
    DQ computed in float: the simulation, exactly as exported) and the QDQ graph as deployed.
    Where ORT cannot load the float graph, the torch executor computes it. When torch is
    already loaded (a learning step ran), the torch simulation those steps trained is checked
    against the exported graph on the first batch (``torch_simulation_vs_export``).
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
    output = state.model.graph.output[0].name
    runtime = ort_session(qdq)
    simulation = session(qdq, optimized=False)
    built: list[tuple[Callable[[dict[str, np.ndarray]], np.ndarray], str]] = []

    def float_run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not built:  # only when a batch was not kept from calibration
            built.append(_float_runner(state, output))
        return built[0][0](feeds)

    # measured on the calibration data: its float outputs were computed while calibrating
    kept = state.calibration_outputs if data is state.calibration else None
    reused = 0
    meters = {key: FidelityMeter() for key in ("float", "simulated", "onnxruntime", "gap")}
    total = data.num_samples if max_samples is None else min(max_samples, data.num_samples)
    done = 0
    torch_check: dict[str, Any] | None = None
    for index, (feeds, labels) in enumerate(data.batches(state.spec.batch_size, max_samples)):
        reference = _kept_output(kept, index, feeds, data.one_at_a_time)
        if reference is None:
            reference = np.asarray(float_run(feeds), dtype=np.float32)
        else:
            reused += 1
        simulated = simulation.run([output], feeds)[0].astype(np.float32)
        deployed = runtime.run([output], feeds)[0].astype(np.float32)
        meters["float"].update(reference, reference, labels)
        meters["simulated"].update(reference, simulated, labels)
        meters["onnxruntime"].update(reference, deployed, labels)
        meters["gap"].update(simulated, deployed, None)
        if torch_check is None and "torch" in sys.modules:
            torch_check = _torch_simulation_check(sim, feeds, output, simulated)
        done += len(labels) if labels is not None else 1
        state.progress("evaluation", min(1.0, done / max(total, 1)))
    gap = meters["gap"].result()
    gap["max_abs_diff"] = meters["gap"].max_abs_diff
    metrics = {
        "float": meters["float"].result(reference_itself=True),
        "simulated": meters["simulated"].result(),
        "onnxruntime": meters["onnxruntime"].result(),
        "simulation_vs_onnxruntime": gap,
        "output": output,
        "samples": {"measured": meters["float"].samples, "available": data.num_samples},
        "engines": {
            "float": (built[0][1] if built else "onnxruntime")
            + (f", {reused} batches kept from calibration" if reused else ""),
            "simulated": "onnxruntime, graph optimizer off",
            "onnxruntime": "onnxruntime, default optimizations",
        },
    }
    if torch_check is not None:
        metrics["torch_simulation_vs_export"] = torch_check
    return metrics


def _kept_output(
    kept: list[np.ndarray] | None, index: int, feeds: dict[str, np.ndarray], one_at_a_time: bool
) -> np.ndarray | None:
    """Calibration's float output for this batch, when it covered the same samples."""
    if kept is None or index >= len(kept):
        return None
    output = kept[index]
    if not one_at_a_time:
        first = next(iter(feeds.values()))
        if output.ndim == 0 or first.ndim == 0 or output.shape[0] != first.shape[0]:
            return None  # a last, partial batch of a different size
    return np.asarray(output, dtype=np.float32)


def _float_runner(
    state: PipelineState, output: str
) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], str]:
    """The float reference's first output per batch: ONNX Runtime, else the torch executor."""
    try:
        float_session = session(state.model)
    except Exception as error:  # a graph only the torch executor runs
        reason = str(error).splitlines()[0][:200]

        def run_in_torch(feeds: dict[str, np.ndarray]) -> np.ndarray:
            import torch

            with torch.no_grad():
                result = state.executor.run(to_torch(feeds), weights=state.float_weights)
            return result[output].float().numpy()

        return run_in_torch, f"torch (onnxruntime cannot load the float graph: {reason})"
    return (lambda feeds: float_session.run([output], feeds)[0]), "onnxruntime"


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
    """Say so loudly when ONNX Runtime does not compute what the simulation computed."""
    agreement = metrics.get("simulation_vs_onnxruntime", {}).get("top1_agreement")
    if agreement is None or agreement >= SIM_RUNTIME_AGREEMENT_FLOOR:
        return []
    return [
        f"ONNX Runtime agrees with the simulation on only {agreement:.1%} of top-1 predictions: "
        "the exported graph computed with ONNX Runtime's optimizer off (metrics.simulated) and "
        "as deployed, its Q/DQ groups fused into integer kernels (metrics.onnxruntime), differ; "
        "the fused kernels requantize differently (seen with QLinearAdd on residual adds, and "
        "with 16-bit grids): check metrics.onnxruntime"
    ]


def artifact_warnings(report: dict[str, Any]) -> list[str]:
    """The target's own caveat, and an int8 artifact that ran slower than float here."""
    warnings = []
    target = report.get("target") or {}
    if "saturate" in str(target.get("reason", "")):
        warnings.append(f"target {target['target']}: {target['reason']}")
    speedups = (report.get("latency_ms") or {}).get("speedup") or {}
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
