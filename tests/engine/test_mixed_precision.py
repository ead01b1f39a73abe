"""Bayesian Bits: a mixed configuration cheaper than uniform W8A8 at no more accuracy loss, that
finds the parts of the network a test made redundant, exported as the model that was trained."""

import json

import numpy as np
import pytest
import torch
from onnx import numpy_helper

from qaas_engine import QuantSpec, import_model, quantize
from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.pipeline import PipelineData, run_pipeline
from qaas_engine.quant.encoding import Encoding, QuantScheme
from qaas_engine.quant.gated import GatedQuantizer
from qaas_engine.quant.qat import QATModel
from qaas_engine.state import Timer
from qaas_engine.zoo import digits_datasets, export_onnx
from qaas_engine.zoo.redundant import RedundantNet
from tests.support.targets import EIGHT_BIT_WEIGHTS


@pytest.fixture(scope="module")
def redundant(tmp_path_factory, digits_depthwise_net):
    digits, base = digits_depthwise_net()
    net = RedundantNet(base, dead_channels=8)
    with torch.no_grad():
        x = torch.from_numpy(digits.x_eval[:64])
        assert torch.allclose(net(x), base(x), atol=1e-5)  # the redundancy changes nothing
    imported = import_model(export_onnx(net, tmp_path_factory.mktemp("bb") / "net.onnx"))
    return {"model": imported, "net": net, **digits_datasets(imported.model, digits)}


@pytest.fixture(scope="module")
def uniform_and_mixed(redundant):
    def run(pipeline):
        return quantize(
            redundant["model"],
            QuantSpec(pipeline=pipeline, target=EIGHT_BIT_WEIGHTS),
            calibration=redundant["calibration"],
            evaluation=redundant["evaluation"],
            training=redundant["unlabelled"],  # no labels: distillation from the float model
            validation=redundant["validation"],
        )

    return run(()), run(("bayesian_bits",))


def test_mixed_is_cheaper_than_w8a8_at_no_more_loss(uniform_and_mixed):
    uniform, mixed = (r.report for r in uniform_and_mixed)
    assert mixed["energy"]["quantized_pj"] < 0.9 * uniform["energy"]["quantized_pj"]
    assert mixed["metrics"]["onnxruntime"]["top1"] >= uniform["metrics"]["onnxruntime"]["top1"]
    assert mixed["step_reports"]["bayesian_bits"]["signal"] == "distillation"
    assert mixed["step_reports"]["bayesian_bits"]["relative_cost"]["chosen"] < 0.9
    # The exported QDQ model is the trained one, widths and pruning included.
    assert mixed["metrics"]["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.99


def test_redundant_parts_are_lowered_and_pruned(redundant, uniform_and_mixed):
    _, mixed = uniform_and_mixed
    layers = {w["layer"]: w for w in mixed.report["step_reports"]["bayesian_bits"]["weights"]}
    identity = next(v for k, v in layers.items() if "identity" in k)
    head = next(v for k, v in layers.items() if "head" in k)
    assert identity["bits"] == 2  # an identity is exact on a 2-bit grid
    assert set(redundant["net"].dead_channels) <= set(head["pruned_channels"])
    assert max(w["bits"] for w in layers.values()) <= 8
    # Widths are exported as such: the encodings and the energy report agree with the choice.
    encodings = {e["name"]: e for e in mixed.encodings["param_encodings"]}
    assert encodings[identity["tensor"]]["bw"] == 2
    assert encodings[head["tensor"]]["bw"] == head["bits"]
    energy_rows = {r["layer"]: r for r in mixed.report["energy"]["layers"]}
    assert energy_rows[head["layer"]]["kept_channels"] < 1.0


def _exported_rows_at_zero(result, tensor: str) -> list[int]:
    """Output channels of ``tensor`` whose quantized values all sit at the zero point."""
    initializers = {
        i.name: numpy_helper.to_array(i) for i in result.quantized_model.graph.initializer
    }
    quantized = next(v for k, v in initializers.items() if k.startswith(tensor) and v.ndim == 4)
    zero_points = next(
        v for k, v in initializers.items() if k.startswith(tensor) and "zero_point" in k
    )
    rows = quantized.reshape(quantized.shape[0], -1).astype(np.int64)
    offsets = np.broadcast_to(zero_points.reshape(-1, 1).astype(np.int64), rows.shape)
    return np.flatnonzero(np.all(rows == offsets, axis=1)).tolist()


def _head(report: dict) -> dict:
    return next(
        w for w in report["step_reports"]["bayesian_bits"]["weights"] if "head" in w["layer"]
    )


def test_pruned_channels_are_zero_in_the_exported_model(uniform_and_mixed, tmp_path):
    _, mixed = uniform_and_mixed
    head = _head(mixed.report)
    assert set(head["pruned_channels"]) <= set(_exported_rows_at_zero(mixed, head["tensor"]))
    written = mixed.save(tmp_path)
    assert json.loads(written["report.json"].read_text())["step_reports"]["bayesian_bits"]
    assert "Mixed precision" in written["report.html"].read_text()


def test_qat_keeps_pruned_channels_at_zero(redundant):
    spec = QuantSpec(target=EIGHT_BIT_WEIGHTS)
    state, sim, _ = run_pipeline(
        redundant["model"], spec, PipelineData(redundant["calibration"]), Timer(), EnergyProfile()
    )
    stem = next(name for name in sim.weight_encodings if "stem" in name)
    live = sim.torch_executor().weights[stem].clone()  # a PTQ run leaves it unbuilt
    sim.pruned_channels[stem] = [0, 3]  # live channels: their gradient is not zero
    sim.executor.weights[stem] = live * (torch.arange(live.shape[0]) % 3 != 0).float().reshape(
        -1, 1, 1, 1
    )
    model = QATModel(sim, learn_ranges=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    feeds, labels = next(redundant["training"].batches(32))
    loss = torch.nn.functional.cross_entropy(
        model({k: torch.from_numpy(v) for k, v in feeds.items()}), torch.from_numpy(labels)
    )
    loss.backward()
    optimizer.step()
    model.commit()
    trained = sim.executor.weights[stem]
    assert torch.all(trained[[0, 3]] == 0)
    assert not torch.equal(trained[1], live[1])  # the step did train the others


def test_gated_sum_is_exactly_the_grid_the_gates_select():
    weights = torch.randn(6, 3, 3, 3)
    scheme = QuantScheme(bits=8, symmetric=True, signed=True, per_channel=True, axis=0)
    rows = weights.reshape(6, -1)
    encoding = Encoding.from_range(scheme, rows.min(1).values.numpy(), rows.max(1).values.numpy())
    quantizer = GatedQuantizer(encoding, (2, 4, 8, 16), start_bits=8, channels=6)
    quantizer.eval()
    for bits in (2, 4, 8, 16):
        with torch.no_grad():
            quantizer.log_alpha.copy_(
                torch.tensor([3.0 if b <= bits else -3.0 for b in (4, 8, 16)])
            )
        assert quantizer.decided_bits() == bits
        expected = quantizer.encodings[(2, 4, 8, 16).index(bits)].fake_quantize(weights)
        assert torch.allclose(quantizer(weights), expected, atol=1e-6)
    with torch.no_grad():
        quantizer.channel_log_alpha[2] = -3.0
    assert torch.all(quantizer(weights)[2] == 0)
    assert quantizer.kept_channels().tolist() == [True, True, False, True, True, True]
