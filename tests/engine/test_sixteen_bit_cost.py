"""16-bit activations against their latency on ONNX Runtime's CPU: it has no 16-bit integer
kernel, so each promoted tensor runs its producer and consumers float. Promotions that buy little
SQNR are dropped, and the convolutions they kept float come back as integer kernels in ORT's
optimized graph."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize, sixteen_bit_cost
from qaas_engine.quant.placement import place_quantizers
from tests.conftest import export_legacy


class OutlierChain(torch.nn.Module):
    """One channel 1000x the others after the first conv (8 bits leave the rest a level or two:
    that tensor needs 16), then a chain of ordinary 3x3 convs whose 8-bit noise is spread thin."""

    def __init__(self, depth: int = 16) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.rescale = torch.nn.Conv2d(4, 4, 1, groups=4)
        self.chain = torch.nn.ModuleList(
            torch.nn.Conv2d(4, 4, 3, padding=1, groups=4) for _ in range(depth)
        )
        with torch.no_grad():
            self.first.weight[0] *= 1000.0
            self.first.bias[0] *= 1000.0
            self.rescale.weight[0] /= 1000.0
            for conv in self.chain:  # near identity: no channel grows to drown the others
                conv.weight.mul_(0.1)
                conv.weight[:, :, 1, 1] += 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rescale(torch.relu(self.first(x)))
        for conv in self.chain:
            y = conv(y)
        return y.mean((2, 3))


def _chain(tmp_path):
    torch.manual_seed(0)
    model = export_legacy(OutlierChain().eval(), tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    data = tmp_path / "c.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((32, 1, 8, 8), np.float32))
    imported = import_model(model)
    return imported, load_npz(data, model_inputs(imported.model))


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_promotions_that_buy_little_are_dropped_and_their_convs_run_integer(tmp_path, monkeypatch):
    imported, calibration = _chain(tmp_path)
    convs = sum(node.op_type == "Conv" for node in imported.model.graph.node)
    spec = QuantSpec(min_sqnr_db=80.0, target="onnxruntime-cpu:vnni")  # unreachable: promotes
    trimmed = quantize(imported, spec, calibration=calibration)
    monkeypatch.setattr(sixteen_bit_cost, "KEEP_WITHIN_DB", -1e9)  # no prefix passes: all kept
    everything = quantize(imported, spec, calibration=calibration)

    def promoted(report):
        return [
            line["node"]
            for line in report["rules"]
            if line["rule"] == "sensitive_tensor" and line["action"] == "16-bit activations"
        ]

    kept, full = promoted(trimmed.report), promoted(everything.report)
    assert 1 <= len(kept) < len(full)
    (line,) = [line for line in trimmed.report["rules"] if "latency" in line["action"]]
    assert f"{len(full) - len(kept)} of {len(full)} kept 8-bit" in line["action"]
    # the outlier tensor stays 16-bit: the output is still what 16 bits bought
    assert trimmed.report["metrics"]["onnxruntime"]["sqnr_db"] > 30
    assert trimmed.report["metrics"]["simulation_vs_onnxruntime"]["sqnr_db"] > 40

    ops_trimmed = _optimized_ops(trimmed.quantized_model, tmp_path)
    ops_all = _optimized_ops(everything.quantized_model, tmp_path)
    assert ops_trimmed["QLinearConv"] > ops_all["QLinearConv"]
    assert ops_trimmed["Conv"] < ops_all["Conv"]
    # exactly the convs a kept promotion forces float run float; every other one is integer
    placement = place_quantizers(imported.model, quantize_activations=True)
    forced = sixteen_bit_cost.forced_float_nodes(imported.model, placement, kept)
    forced_convs = {
        node.name for node in imported.model.graph.node if node.op_type == "Conv"
    } & set().union(*forced.values())
    assert ops_trimmed["Conv"] == len(forced_convs)
    assert ops_trimmed["QLinearConv"] == convs - len(forced_convs)


def test_the_shortest_prefix_within_the_margin_is_found_by_bisection():
    order = [f"t{i}" for i in range(10)]
    # each tensor adds 0.5 dB up to the seventh; the full set is 6 dB over nothing
    curve = {k: min(k, 7) * 0.5 + (2.5 if k == 10 else 0.0) for k in range(11)}
    calls: list[int] = []

    def measure(prefix):
        calls.append(len(prefix))
        return curve[len(prefix)]

    length, measured = sixteen_bit_cost.trim(order, 0, 2, curve[10], measure, 10)
    floor = curve[10] - sixteen_bit_cost.KEEP_WITHIN_DB
    assert curve[length] >= floor or length == 10
    assert all(curve[k] < floor for k in range(length))
    assert calls[0] == 2 and len(calls) <= 5
    assert measured[length] == curve[length]


def test_a_search_out_of_measurements_keeps_the_longest_passing_prefix():
    order = [f"t{i}" for i in range(8)]
    length, measured = sixteen_bit_cost.trim(order, 0, 1, 10.0, lambda prefix: 0.0, 1)
    assert length == 8 and set(measured) == {1, 8}


def test_free_promotions_are_never_dropped():
    order = ["free", "a", "b"]
    length, _ = sixteen_bit_cost.trim(order, 1, 0, 10.0, lambda prefix: 10.0, 5)
    assert length == 1


def test_a_promoted_tensor_forces_its_producer_and_consumers_float(tmp_path):
    imported, _ = _chain(tmp_path)
    model = imported.model
    placement = place_quantizers(model, quantize_activations=True)
    rescale = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] != "input")
    forced = sixteen_bit_cost.forced_float_nodes(model, placement, [rescale.output[0]])
    users = [n.name for n in model.graph.node if rescale.output[0] in n.input]
    assert forced[rescale.output[0]] >= {rescale.name, *users}
    macs = {rescale.name: 10, users[0]: 100}
    assert sixteen_bit_cost.float_macs([rescale.output[0]], forced, macs) >= 110


def test_a_depthwise_conv_is_priced_above_a_dense_one_of_the_same_macs(tmp_path):
    imported, _ = _chain(tmp_path)
    model = imported.model
    dense = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == "input")
    grouped = [n for n in model.graph.node if n.op_type == "Conv" and n is not dense]
    macs = {node.name: 100 for node in [dense, *grouped]}
    weighted = sixteen_bit_cost.latency_macs(model, macs)
    assert weighted[dense.name] == 100
    assert all(weighted[n.name] == 100 * sixteen_bit_cost.DEPTHWISE_FLOAT_WEIGHT for n in grouped)


def test_the_latency_budget_caps_the_prefix_even_where_a_longer_one_measures_better():
    order = [f"t{i}" for i in range(6)]
    forced = {name: frozenset({f"conv{i}"}) for i, name in enumerate(order)}
    # six convs of 10 MACs each run float with all promotions, in a model of 200 weighted MACs
    macs = {f"conv{i}": 10.0 for i in range(6)} | {"rest": 140.0}
    longest = sixteen_bit_cost.longest_within_budget(order, 0, forced, macs, 200.0)
    assert (
        sixteen_bit_cost.float_macs(order[:longest], forced, macs)
        <= sixteen_bit_cost.MAX_FLOAT_SHARE * 200
    )
    assert (
        sixteen_bit_cost.float_macs(order[: longest + 1], forced, macs)
        > sixteen_bit_cost.MAX_FLOAT_SHARE * 200
    )
    # only the full promotion reaches the margin: the cap is kept, and measured for the report
    length, measured = sixteen_bit_cost.trim(
        order, 0, 1, 10.0, lambda prefix: float(len(prefix) == 6) * 10.0, 10, longest
    )
    assert length == longest == 2
    assert measured[length] == 0.0


def test_the_budget_never_drops_a_free_promotion():
    order = ["free", "costly"]
    forced = {"free": frozenset(), "costly": frozenset({"conv"})}
    assert sixteen_bit_cost.longest_within_budget(order, 1, forced, {"conv": 1.0}, 1.0) == 1


def test_an_element_wise_op_forced_float_is_priced_by_its_elements(tmp_path):
    imported, _ = _chain(tmp_path)
    weighted = sixteen_bit_cost.latency_macs(imported.model, {}, {"hardswish": 1000})
    assert weighted["hardswish"] == 1000 * sixteen_bit_cost.ELEMENT_FLOAT_WEIGHT
    # a promotion that forces only that op float is no longer free
    forced = {"t": frozenset({"hardswish"})}
    assert sixteen_bit_cost.float_macs(["t"], forced, weighted) > 0


def test_the_choice_stands_within_the_budget_and_is_capped_past_it(tmp_path, monkeypatch):
    imported, calibration = _chain(tmp_path)
    spec = QuantSpec(min_sqnr_db=80.0, target="onnxruntime-cpu:vnni")  # unreachable: promotes
    monkeypatch.setattr(sixteen_bit_cost, "MAX_FLOAT_SHARE", 1.0)  # any choice fits
    loose = quantize(imported, spec, calibration=calibration)
    monkeypatch.setattr(sixteen_bit_cost, "MAX_FLOAT_SHARE", 0.0)  # only free promotions fit
    tight = quantize(imported, spec, calibration=calibration)

    loose_ops = _optimized_ops(loose.quantized_model, tmp_path)
    tight_ops = _optimized_ops(tight.quantized_model, tmp_path)
    assert loose_ops["Conv"] >= 1  # the outlier tensor's promotion keeps its convs float
    assert tight_ops["Conv"] == 0  # past the budget nothing that forces a conv float is kept
    assert tight_ops["QLinearConv"] > loose_ops["QLinearConv"]
    (line,) = [line for line in tight.report["rules"] if "latency" in line["action"]]
    assert "at most 0% float" in line["why"]
    assert tight.report["metrics"]["simulation_vs_onnxruntime"]["sqnr_db"] > 40
