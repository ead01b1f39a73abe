"""Fidelity over every output, and per channel: a small-range part of an output cannot hide
behind a large-range part (a detector's box coordinates beside its class probabilities)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.evaluation import FidelityMeter


class BoxesAndScores(torch.nn.Module):
    """Two outputs: logits; and per location 4 box coordinates (0..320) joined to 3 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 7, 3, padding=1)
        self.fc = torch.nn.Linear(7, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        logits = self.fc(y.mean((2, 3)))
        per_location = y.flatten(2).transpose(1, 2)  # (batch, locations, 7)
        boxes = 320 * torch.sigmoid(per_location[..., :4])
        scores = torch.sigmoid(per_location[..., 4:])
        return logits, torch.cat([boxes, scores], dim=-1)


def _model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "boxes.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            BoxesAndScores().eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False,
            opset_version=17, input_names=["input"], output_names=["logits", "detections"],
            dynamic_axes={name: {0: "batch"} for name in ("input", "logits", "detections")},
        )  # fmt: skip
    data = tmp_path / "calibration.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((64, 1, 8, 8), dtype=np.float32))
    imported = import_model(path)
    return imported, load_npz(data, model_inputs(imported.model))


def test_every_output_is_measured_and_the_worst_channel_is_named(tmp_path):
    imported, calibration = _model(tmp_path)
    # strict bits: one grid over the joined output, as the spec asked (the wide_join rule
    # would otherwise keep the join float; tests/engine/test_rules.py)
    spec = QuantSpec(strict_bits=True)
    metrics = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert set(metrics["outputs"]) == {"logits", "detections"}
    assert (
        metrics["output"] == "logits"
        and metrics["onnxruntime"] == (metrics["outputs"]["logits"]["onnxruntime"])
    )
    detections = metrics["outputs"]["detections"]["onnxruntime"]
    # the whole output looks fine: the box coordinates dominate its energy
    assert detections["sqnr_db"] > 30
    # per channel, the scores (channels 4..6) sit on the boxes' grid: far worse
    assert detections["worst_channel"] >= 4
    assert detections["worst_channel_sqnr_db"] < detections["sqnr_db"] - 15


def test_per_channel_sqnr_finds_the_hidden_channel():
    reference = np.zeros((2, 5, 3))
    reference[..., 0] = 100.0
    reference[..., 1:] = 0.5
    test = reference.copy()
    test[..., 2] += 0.1  # a small error on a small channel
    meter = FidelityMeter()
    meter.update(reference, test, None)
    result = meter.result()
    assert result["sqnr_db"] > 50 and result["worst_channel"] == 2
    assert abs(result["worst_channel_sqnr_db"] - 10 * np.log10(0.25 / 0.01)) < 1e-3


def test_a_model_of_several_outputs_reads_its_float_outputs_from_the_rules_probe(
    tmp_path, monkeypatch
):
    """Calibration keeps only a single-output model's float outputs; the rules' probe holds
    every output of the first 8 samples, and the evaluation on calibration data reads them
    instead of running the float model there again (PicoDet: 8 outputs). Same figures."""
    from qaas_engine.simulated_runs import SimulatedRuns

    imported, calibration = _model(tmp_path)
    spec = QuantSpec()
    kept = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert "1 batches kept from the rules' probe" in kept["engines"]["float"]

    monkeypatch.setattr(SimulatedRuns, "reference", lambda *args: None)
    again = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert "probe" not in again["engines"]["float"]
    assert kept["samples"] == again["samples"]
    for name in ("logits", "detections"):
        for key in ("simulated", "onnxruntime"):
            mine, theirs = kept["outputs"][name][key], again["outputs"][name][key]
            assert mine["sqnr_db"] == pytest.approx(theirs["sqnr_db"], abs=0.01)


def test_an_exact_runtime_reads_the_simulations_figures_and_the_ceiling():
    """Where ONNX Runtime computed exactly the simulation's outputs, its figures are the
    simulation's and the gap's resampled worst channel sits at the ceiling: what meters fed
    and resampled one by one give (the shortcut skips two bootstraps, not a figure)."""
    from qaas_engine.evaluation import SQNR_CEILING_DB, FidelityMeter, _output_metrics

    rng = np.random.default_rng(0)
    meters = {key: FidelityMeter() for key in ("float", "simulated", "onnxruntime", "gap")}
    for _ in range(12):
        reference = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
        test = (reference + 0.05 * rng.standard_normal(reference.shape)).astype(np.float32)
        meters["float"].update(reference, reference, None)
        meters["simulated"].update(reference, test, None)
        meters["onnxruntime"].update(reference, test, None)
        meters["gap"].update(test, test.copy(), None)
    metrics = _output_metrics(meters)
    assert metrics["onnxruntime"] == meters["onnxruntime"].result() == metrics["simulated"]
    gap = metrics["simulation_vs_onnxruntime"]
    assert gap["worst_channel_sqnr_db_low"] == SQNR_CEILING_DB == gap["worst_channel_sqnr_db"]
    assert gap["max_abs_diff"] == 0.0
    # any difference at all, and the runtime's figures are its own
    meters["gap"].update(test, test + np.float32(1e-3), None)
    meters["onnxruntime"].update(reference, test + np.float32(1e-3), None)
    meters["simulated"].update(reference, test, None)
    differing = _output_metrics(meters)
    assert differing["onnxruntime"] != differing["simulated"]
    assert differing["simulation_vs_onnxruntime"]["worst_channel_sqnr_db_low"] < SQNR_CEILING_DB
