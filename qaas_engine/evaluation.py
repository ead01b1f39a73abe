"""Accuracy and fidelity, accumulated batch by batch so no output set is held whole.

Fidelity compares a model's first output with the float model's: SQNR in dB, top-1 agreement
(argmax over the last axis), and mean per-sample cosine similarity.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from qaas_engine.data import Dataset
from qaas_engine.quant.sim import QuantSim
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
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def evaluate(
    state: PipelineState, sim: QuantSim, qdq: onnx.ModelProto, data: Dataset | None
) -> dict[str, Any]:
    """Float, simulated and ONNX Runtime outputs side by side on the same batches."""
    if data is None:
        empty = {"top1": None, "sqnr_db": None, "top1_agreement": None, "cosine": None}
        return {
            "float": dict(empty),
            "simulated": dict(empty),
            "onnxruntime": dict(empty),
            "simulation_vs_onnxruntime": dict(empty),
            "note": "no calibration or evaluation data given: nothing to measure",
        }
    session = ort_session(qdq)
    output = state.executor.output_names[0]
    meters = {key: FidelityMeter() for key in ("float", "simulated", "onnxruntime", "gap")}
    total = data.num_samples
    done = 0
    with torch.no_grad():
        for feeds, labels in data.batches(state.spec.batch_size):
            tensors = to_torch(feeds)
            float_out = state.executor.run(tensors, weights=state.float_weights)[output]
            reference = float_out.float().numpy()
            simulated = sim.run(tensors, outputs=[output])[output].float().numpy()
            runtime = session.run([output], feeds)[0].astype(np.float32)
            meters["float"].update(reference, reference, labels)
            meters["simulated"].update(reference, simulated, labels)
            meters["onnxruntime"].update(reference, runtime, labels)
            meters["gap"].update(simulated, runtime, None)
            done += len(labels) if labels is not None else 1
            state.progress("evaluation", min(1.0, done / total))
    gap = meters["gap"].result()
    gap["max_abs_diff"] = meters["gap"].max_abs_diff
    return {
        "float": meters["float"].result(reference_itself=True),
        "simulated": meters["simulated"].result(),
        "onnxruntime": meters["onnxruntime"].result(),
        "simulation_vs_onnxruntime": gap,
        "output": output,
    }


SIM_RUNTIME_AGREEMENT_FLOOR = 0.99


def gap_warnings(metrics: dict[str, Any]) -> list[str]:
    """Say so loudly when ONNX Runtime does not compute what the simulation computed."""
    agreement = metrics.get("simulation_vs_onnxruntime", {}).get("top1_agreement")
    if agreement is None or agreement >= SIM_RUNTIME_AGREEMENT_FLOOR:
        return []
    return [
        f"ONNX Runtime agrees with the simulation on only {agreement:.1%} of top-1 predictions; "
        "the runtime's optimized kernels compute something else (seen with 16-bit weights and "
        "16-bit activations in onnxruntime's graph optimizer): check metrics.onnxruntime"
    ]
