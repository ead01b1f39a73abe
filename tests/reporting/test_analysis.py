"""The per-layer analysis finds the layer a test made hard to quantize."""

from __future__ import annotations

from qaas_engine import QuantSpec, quantize


def test_outlier_layer_ranks_first_and_is_suggested(outlier_net):
    imported, data = outlier_net
    spec = QuantSpec(weight_granularity="per-tensor")
    report = quantize(imported, spec, calibration=data).report
    analysis = report["analysis"]
    conv2 = next(
        n.name for n in imported.model.graph.node if n.op_type == "Conv" and "conv2" in n.name
    )
    ranked = [row["layer"] for row in analysis["layers"]]
    assert ranked[0] == conv2, analysis["layers"]
    first, others = analysis["layers"][0], analysis["layers"][1:]
    assert first["weights_only_sqnr_db"] < min(r["weights_only_sqnr_db"] for r in others) - 10
    assert analysis["suggest_keep_float"][0] == conv2
    assert analysis["suggestion"].startswith("--keep-float ")
    assert analysis["samples"] == 16


def test_keeping_the_suggested_layer_float_helps(outlier_net):
    imported, data = outlier_net
    spec = QuantSpec(weight_granularity="per-tensor")
    first = quantize(imported, spec, calibration=data).report
    keep = tuple(first["analysis"]["suggest_keep_float"])
    second = quantize(
        imported, spec.model_copy(update={"keep_float_nodes": keep}), calibration=data
    ).report
    assert second["metrics"]["simulated"]["sqnr_db"] > first["metrics"]["simulated"]["sqnr_db"] + 6
