"""Rules for the ways real models break, on by default, each reported, all off with strict bits:
a join of very different ranges (boxes in pixels beside probabilities) stays float."""

from __future__ import annotations

from qaas_engine import QuantSpec, quantize
from qaas_engine.artifacts.html import render_html
from tests.engine.test_fidelity import _model


def test_a_join_of_very_different_ranges_stays_float_and_says_why(tmp_path):
    imported, calibration = _model(tmp_path)
    strict = quantize(imported, QuantSpec(strict_bits=True), calibration=calibration).report
    ruled = quantize(imported, QuantSpec(), calibration=calibration).report

    assert strict["rules"] == [] and strict["strict_bits"] is True
    (line,) = ruled["rules"]
    assert line["rule"] == "wide_join" and "Concat" in line["node"]
    assert "kept the join in float" in line["action"] and "differ" in line["why"]
    assert "rule wide_join" in render_html(ruled) and "rule wide_join" not in render_html(strict)

    before = strict["metrics"]["outputs"]["detections"]["onnxruntime"]
    after = ruled["metrics"]["outputs"]["detections"]["onnxruntime"]
    # the scores (channels 4..6) no longer sit on the boxes' grid
    assert after["worst_channel_sqnr_db"] > before["worst_channel_sqnr_db"] + 15
    assert after["worst_channel_sqnr_db"] > 30
    # and simulation = runtime still holds for the float join
    gap = ruled["metrics"]["outputs"]["detections"]["simulation_vs_onnxruntime"]
    assert gap["sqnr_db"] > 40


def test_joins_of_similar_ranges_are_left_alone(tiny_imported):
    imported, calibration, _ = tiny_imported
    report = quantize(imported, QuantSpec(), calibration=calibration).report
    assert report["rules"] == [] and report["strict_bits"] is False
