"""report.html: one file, opens offline, carries the plots the issue lists."""

from __future__ import annotations

import re

import pytest

from qaas_engine import QuantSpec, quantize
from tests.reporting.conftest import load


@pytest.fixture(scope="module")
def saved(tiny_model, tiny_data, tmp_path_factory):
    imported, calibration = load(tiny_model, tiny_data[0])
    _, evaluation = load(tiny_model, tiny_data[1], role="evaluation")
    spec = QuantSpec(pipeline=("cle", "bias_correction", "qat"), qat_epochs=1)
    result = quantize(
        imported, spec, calibration=calibration, evaluation=evaluation, training=calibration
    )
    out = tmp_path_factory.mktemp("report")
    written = result.save(out)
    return out, written, result.report


def test_report_json_has_the_new_sections(saved):
    _, _, report = saved
    assert report["energy"]["float_pj"] > report["energy"]["quantized_pj"] > 0
    latency = report["latency_ms"]
    assert set(latency["float"]) == {"batch_1", "batch_32"} and latency["threads"] == 1
    assert all(v > 0 for v in latency["quantized"].values())
    assert report["analysis"]["layers"] and report["analysis"]["output_sqnr_db"] > 10
    assert {"energy", "latency", "analysis"} <= {s["name"] for s in report["steps"]}


def test_html_is_self_contained_and_has_the_plots(saved):
    out, written, report = saved
    assert set(written) == {"model.quant.onnx", "encodings.json", "report.json", "report.html"}
    assert sorted(p.name for p in out.iterdir()) == sorted(written)  # no temp files left
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "src=" not in page
    for title in (
        "Energy per layer",
        "Per-layer SQNR",
        "CLE: per-channel weight range",
        "Bias correction: mean |output shift|",
        "QAT: validation score per epoch",
    ):
        assert f"<title>{title}" in page, title
    assert page.count('<svg class="plot"') >= 5
    assert f"{report['energy']['ratio']:.1f}× less" in page
    for step in report["steps"]:
        assert f"<td>{step['name']}</td>" in page


def test_html_escapes_layer_names(saved):
    from qaas_engine.artifacts.html import render_html

    _, _, report = saved
    hostile = {**report, "warnings": ["<script>alert(1)</script>"]}
    assert "<script>" not in render_html(hostile)
