"""``--objective latency``: measured timings decide which nodes stay float. The decisions are
driven here by injected timing tables (timings are never asserted); the exported model with
float-kept nodes must still compute what the simulation computes."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, pipeline, quantize
from qaas_engine import latency_objective as objective
from qaas_engine.latency_objective import Candidate, candidates, choose
from qaas_engine.targets import choose_kernels
from tests.conftest import export_legacy


class SmallNet(torch.nn.Module):
    """stem conv on the graph input, a residual block, pooled into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.first = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.second = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        z = torch.relu(self.second(torch.relu(self.first(y))) + y)
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(z, 1), 1))


def _model_and_data(tmp_path):
    torch.manual_seed(0)
    path = export_legacy(SmallNet().eval(), tmp_path / "model.onnx", torch.randn(1, 1, 8, 8))
    data = tmp_path / "calibration.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((16, 1, 8, 8), np.float32))
    imported = import_model(path)
    return imported, load_npz(data, model_inputs(imported.model))


def _node(model: onnx.ModelProto, op_type: str, index: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op_type][index]


def table(base: dict[int, float], factors: dict[str, dict[int, float]]):
    """A fake Measure: each node kept float scales the all-int8 time by its factor."""
    calls: list[list[frozenset[str]]] = []

    def measure(keeps):
        calls.append(keeps)
        result = []
        for keep in keeps:
            times = dict(base)
            for node in keep:
                for batch, factor in factors.get(node, {}).items():
                    times[batch] *= factor
            result.append(times)
        return result

    return measure, calls


def test_the_table_decides_which_candidates_stay_float():
    found = [
        Candidate("entry", frozenset({"stem"})),
        Candidate("head", frozenset({"gemm", "flatten"})),
        Candidate("join", frozenset({"add"})),
        Candidate("noise", frozenset({"tiny"})),
    ]
    measure, calls = table(
        {1: 1.0, 32: 10.0},
        {
            "stem": {1: 0.9, 32: 0.9},  # faster at both: kept
            "gemm": {1: 0.9, 32: 1.05},  # faster at batch 1, slower at 32: never kept
            "add": {1: 1.2, 32: 1.3},  # slower: int8
            "tiny": {1: 0.99, 32: 1.0},  # within noise: no clear gain
        },
    )
    choice = choose(found, measure)
    assert [c.label for c in choice.kept] == ["entry"]
    assert set(choice.rejected) == {"head", "join", "noise"}
    assert choice.measured["entry"] == {"batch_1": 0.9, "batch_32": 9.0}
    assert len(calls) == 1  # one accepted candidate: nothing to combine


def test_candidates_faster_alone_but_not_together_keep_the_best_one():
    found = [Candidate("a", frozenset({"a"})), Candidate("b", frozenset({"b"}))]
    alone, _ = table({1: 1.0, 32: 10.0}, {"a": {1: 0.95}, "b": {1: 0.9}})

    def measure(keeps):
        if frozenset({"a", "b"}) in keeps:  # together they clash (say, a Transpose appears)
            return [{1: 1.0, 32: 10.0}, {1: 1.1, 32: 11.0}]
        return alone(keeps)

    choice = choose(found, measure)
    assert [c.label for c in choice.kept] == ["b"]
    assert "together" in choice.measured and "a" in choice.rejected


def test_no_decision_when_the_budget_runs_out():
    choice = choose([Candidate("a", frozenset({"a"}))], lambda keeps: None)
    assert choice.kept == [] and "budget" in choice.note


def test_candidates_are_the_entry_conv_the_head_and_residual_joins(tmp_path):
    imported, calibration = _model_and_data(tmp_path)
    state = pipeline.build_state(imported, QuantSpec(), calibration, None)
    sim = pipeline.build_sim(state, pipeline.Timer())
    found = {c.label.split()[0]: c.nodes for c in candidates(state.model, sim)}
    model = state.model
    assert found["entry"] == {_node(model, "Conv", 0).name}
    assert found["head"] == {_node(model, "Gemm").name, _node(model, "Flatten").name}
    assert found["join"] == {_node(model, "Add").name}


def _quantize_with(monkeypatch, tmp_path, factors, **spec):
    imported, calibration = _model_and_data(tmp_path)
    names = {op: _node(imported.model, op).name for op in ("Conv", "Gemm", "Flatten", "Add")}
    fake, _ = table({1: 1.0, 32: 10.0}, {names[op]: f for op, f in factors.items()})
    monkeypatch.setattr(pipeline, "ort_measure", lambda state, sim, kernels: fake)
    result = quantize(imported, QuantSpec(**spec), calibration=calibration)
    return names, result


def test_float_kept_nodes_are_float_in_the_export_and_match_the_simulation(monkeypatch, tmp_path):
    faster = {"Conv": {1: 0.8, 32: 0.9}, "Gemm": {1: 0.9, 32: 1.0}}
    names, result = _quantize_with(
        monkeypatch, tmp_path, faster, objective="latency", target="onnxruntime-cpu:vnni"
    )
    kept = {line["node"] for line in result.report["rules"] if line["rule"] == "latency_float"}
    assert kept == {names["Conv"], names["Gemm"], names["Flatten"]}
    exported = result.quantized_model
    dequantized = {
        o for n in exported.graph.node if n.op_type == "DequantizeLinear" for o in n.output
    }
    stem = next(n for n in exported.graph.node if n.name == names["Conv"])
    gemm = next(n for n in exported.graph.node if n.name == names["Gemm"])
    assert stem.input[1] not in dequantized and stem.input[0] == "input"  # float weight, input
    assert gemm.input[1] not in dequantized
    chosen = result.report["target"]["objective"]
    assert set(chosen["kept_float"]) == {
        f"entry Conv {names['Conv']}",
        f"head Gemm {names['Gemm']}",
    }
    agreement = result.report["metrics"]["simulation_vs_onnxruntime"]
    assert agreement["top1_agreement"] >= 0.999
    assert agreement["sqnr_db"] > 35.0


def test_strict_bits_and_the_default_objective_time_nothing(monkeypatch, tmp_path):
    faster = {"Conv": {1: 0.5, 32: 0.5}}
    for spec in ({"objective": "latency", "strict_bits": True}, {}):
        _, result = _quantize_with(monkeypatch, tmp_path, faster, **spec)
        assert not [line for line in result.report["rules"] if line["rule"] == "latency_float"]
        assert "objective" not in result.report["target"]
        assert "latency_objective" not in {step["name"] for step in result.report["steps"]}


def test_the_real_measure_times_every_variant_at_both_batch_sizes(tmp_path):
    """ONNX Runtime really runs each exported variant; only the shape of the answer is checked."""
    imported, calibration = _model_and_data(tmp_path)
    state = pipeline.build_state(imported, QuantSpec(), calibration, None)
    sim = pipeline.build_sim(state, pipeline.Timer())
    measure = objective.ort_measure(state, sim, choose_kernels("onnxruntime-cpu"), budget_s=5.0)
    stem = _node(state.model, "Conv").name
    timed = measure([frozenset(), frozenset({stem})])
    assert timed is not None and len(timed) == 2
    for times in timed:
        assert set(times) == {1, 32} and all(ms > 0 for ms in times.values())


def test_an_exhausted_budget_measures_nothing(tmp_path):
    imported, calibration = _model_and_data(tmp_path)
    state = pipeline.build_state(imported, QuantSpec(), calibration, None)
    sim = pipeline.build_sim(state, pipeline.Timer())
    measure = objective.ort_measure(state, sim, choose_kernels("onnxruntime-cpu"), budget_s=0.0)
    assert measure([frozenset()]) is None
