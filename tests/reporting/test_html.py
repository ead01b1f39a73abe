"""report.html: one file, opens offline, carries the plots the issue lists."""

from __future__ import annotations

import math
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


def test_size_card_is_the_size_of_the_downloaded_file(saved):
    """The issue's card said 34,200 bytes (weights at their bit-width) beside a 92,033-byte
    download: the card now leads with the file, and labels the weights figure as what it is."""
    out, _, report = saved
    on_disk = (out / "model.quant.onnx").stat().st_size
    assert report["size_bytes"]["quantized_file"] == on_disk
    assert report["size_bytes"]["float_file"] > 0
    page = (out / "report.html").read_text()
    card = page.split("size of model.quant.onnx (download)")[1].split('<div class="card">')[0]
    assert f"{on_disk:,} bytes" in card
    assert f"weights at their bit-width: {report['size_bytes']['float']:,}" in card


def _column(page: str, header: str) -> list[str]:
    """The cells under ``header`` in the first table that has it."""
    table = next(t for t in page.split("<table") if f"<th>{header}</th>" in t)
    rows = table.split("<tr>")[1:]
    index = [h.split("</th>")[0] for h in rows[0].split("<th>")[1:]].index(header)
    return [row.split("<td>")[1 + index].split("</td>")[0] for row in rows[1:]]


def test_every_step_says_what_it_did(saved):
    out, _, report = saved
    page = (out / "report.html").read_text()
    effects = _column(page, "what it did")
    assert len(effects) == len(report["steps"])
    named = dict(zip([s["name"] for s in report["steps"]], effects, strict=True))
    assert all(named.values()), named
    assert f"{report['size_bytes']['quantized_file']:,} bytes" in named["export"]
    assert "evaluation data" in named["evaluation"]
    assert "kept epoch" in named["qat"]


def test_noise_shares_sum_to_at_most_100_percent(saved):
    from qaas_engine.artifacts.html import noise_shares

    out, _, report = saved
    rows = report["analysis"]["layers"]
    shares = [s for s in noise_shares(rows) if s is not None]
    assert shares and sum(shares) == pytest.approx(1.0)
    page = (out / "report.html").read_text()
    shown = [float(cell.rstrip("%")) for cell in _column(page, "share of layer noise")]
    assert sum(shown) <= 100.0 + 0.05 * len(shown)  # rounding of each cell to 0.1%
    assert "noise share</th>" not in page
    # overlapping per-layer figures that can pass 100% are not presented as shares
    overlapping = [{"weights_only_sqnr_db": 10.0, "activations_only_sqnr_db": 10.0}] * 5
    assert sum(noise_shares(overlapping)) == pytest.approx(1.0)  # type: ignore[arg-type]


def test_layers_are_named_as_in_the_exported_model(saved):
    """Bias correction used to label its rows with the output tensor a folded BatchNorm left
    behind (``.../BatchNormalization_output_0``): cut to 30 characters they all read alike."""
    import onnx

    out, _, report = saved
    exported = {node.name for node in onnx.load(out / "model.quant.onnx").graph.node}
    rows = report["step_reports"]["bias_correction"]["layers"]
    assert rows and all(row["layer"] in exported for row in rows)
    assert all(row["output"] for row in rows)


def test_short_labels_stay_unique_and_readable():
    from qaas_engine.artifacts.svg import short_labels

    folded = [
        f"/features/features.{i}/body/body.{j}/BatchNormalization_output_0"
        for i in range(3, 8)
        for j in (1, 4, 7)
    ]
    shown = short_labels(folded)
    assert len(set(shown)) == len(folded) and all(len(label) <= 38 for label in shown)
    assert short_labels(["/a/conv", "/b/conv"]) == ["/a/conv", "/b/conv"]
    assert short_labels(["/net/a/conv", "/net/b/conv"]) == ["/net/a/conv", "/net/b/conv"]
    assert short_labels(["/net/a/conv", "/net/b/conv"], width=9) == ["…/a/conv", "…/b/conv"]
    assert len(set(short_labels(["x" * 80 + "a", "x" * 80 + "b", "y"]))) == 3
    assert short_labels(["same", "same"]) == ["same", "same #2"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 63.6], [0, 20, 40, 60, 80]),  # the 15.9 / 31.8 ticks
        ([0.0, 0.93], [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        ([-3.0, 0.2], [-3, -2, -1, 0, 1]),
        ([0.0, 123456.0], [0, 50000, 100000, 150000]),
    ],
)
def test_linear_ticks_are_round_numbers(values, expected):
    from qaas_engine.artifacts.svg import _Scale

    assert _Scale(values, 100, False).ticks() == pytest.approx(expected)


def test_rendered_ticks_follow_1_2_5_steps(saved):
    """Every axis of every plot: evenly spaced ticks a 1, 2 or 5 step apart (or decades on a
    log axis), never the 15.9 / 31.8 of a span cut in four."""
    out, _, _ = saved
    page = (out / "report.html").read_text()
    scale = {"": 1.0, "k": 1e3, "M": 1e6}
    axes = 0
    for svg in page.split('<svg class="plot"')[1:]:
        for anchor in ("middle", "end"):
            found = re.findall(rf'text-anchor="{anchor}">(-?[\d.]+)(k|M)?</text>', svg)
            ticks = [float(number) * scale[suffix] for number, suffix in found]
            if len(ticks) < 2:
                continue
            axes += 1
            if all(t > 0 for t in ticks) and all(
                b / a == pytest.approx(10) for a, b in zip(ticks, ticks[1:], strict=False)
            ):
                continue  # a log axis: decades
            steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
            assert len(steps) == 1, ticks
            step = steps.pop()
            mantissa = step / 10 ** math.floor(math.log10(step))
            assert round(mantissa, 6) in (1.0, 2.0, 5.0), ticks
    assert axes >= 4


def test_qat_says_how_it_chose_its_epoch(saved):
    out, _, report = saved
    qat = report["step_reports"]["qat"]
    assert qat["selection"] and all("validation_loss" in row for row in qat["curve"])
    assert f"Kept epoch {qat['best_epoch']}" in (out / "report.html").read_text()
