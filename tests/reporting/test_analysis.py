"""The per-layer analysis finds the layer a test made hard to quantize."""

from __future__ import annotations

from qaas_engine import QuantSpec, quantize
from qaas_engine.reporting import collect


def test_outlier_layer_ranks_first_and_is_suggested(outlier_net, monkeypatch):
    # A budget that cannot bind, so that every sample is measured however busy the machine
    # (CI at load 20 stopped at 12 of 16 samples within the usual 0.25 s floor).
    monkeypatch.setattr(collect, "ANALYSIS_BUDGET", (1.0, 60.0, 60.0))
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


def test_keeping_the_suggested_layer_float_helps(outlier_net, monkeypatch):
    # the suggestion must come from every layer measured, not from those a busy machine's
    # 0.25 s floor left time for (it failed once at load 8)
    monkeypatch.setattr(collect, "ANALYSIS_BUDGET", (1.0, 60.0, 60.0))
    imported, data = outlier_net
    spec = QuantSpec(weight_granularity="per-tensor")
    first = quantize(imported, spec, calibration=data).report
    keep = tuple(first["analysis"]["suggest_keep_float"])
    second = quantize(
        imported, spec.model_copy(update={"keep_float_nodes": keep}), calibration=data
    ).report
    assert second["metrics"]["simulated"]["sqnr_db"] > first["metrics"]["simulated"]["sqnr_db"] + 6


def test_sensitivities_stop_before_the_budget_not_one_layer_past_it(outlier_net, monkeypatch):
    """A layer's sensitivity is measured only where its probe runs still fit the budget, priced
    by the float probe runs already timed: the section ends within its budget. A clock that
    moves one second per probe run stands in for time (no wall-clock assertion)."""
    from qaas_engine.export.qdq import export_qdq
    from qaas_engine.pipeline import build_sim, build_state
    from qaas_engine.reporting import analysis
    from qaas_engine.reporting.probe import ProbeModel
    from qaas_engine.state import Timer

    imported, data = outlier_net
    state = build_state(imported, QuantSpec(weight_granularity="per-tensor"), data, None)
    sim = build_sim(state, Timer())
    qdq = export_qdq(state.model, sim)
    batches = [dict(next(data.batches(8, 8))[0])]

    class Clock:
        now = 0.0

        def perf_counter(self) -> float:
            return self.now

    clock = Clock()
    run, run_tapped = ProbeModel.run, ProbeModel.run_tapped

    def ticking(method):
        def call(self, *args, **kwargs):
            clock.now += 1.0
            return method(self, *args, **kwargs)

        return call

    monkeypatch.setattr(analysis, "time", clock)
    monkeypatch.setattr(ProbeModel, "run", ticking(run))
    monkeypatch.setattr(ProbeModel, "run_tapped", ticking(run_tapped))
    budget = 7.0  # two pieces of 4 samples (2 s), then 4 s per layer with both quantizers
    section = analysis.analyze_layers(
        sim, batches, state.model, qdq, state.float_weights, time_budget_s=budget
    )
    measured = [row for row in section["layers"] if row["sensitivity_db"] is not None]
    skipped = [row for row in section["layers"] if "budget spent" in row.get("note", "")]
    assert len(measured) == 1 and skipped
    assert clock.now <= budget


def test_report_extras_take_a_small_share_of_the_quantization():
    """Latency and the analysis are report extras: together about a quarter of what the
    quantization took, and a few seconds at most on a large model (issue #16)."""
    from qaas_engine.reporting.collect import extras_budgets

    for seconds in (2.0, 10.0, 30.0, 300.0):
        latency, analysis = extras_budgets(seconds)
        assert latency + analysis <= max(0.35, 0.25 * seconds)
        assert latency <= 1.0 and analysis <= 3.0
    assert extras_budgets(None) == (1.0, 3.0)  # the ceilings when the time is not known
