"""``bias_shift``: the exported graph's Conv/Gemm biases corrected layer after layer by the mean
error each layer shows, each layer's pass running only its segment of the graph; kept only
where the output SQNR on samples the correction never saw gains."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize, rules
from qaas_engine import bias_shift as shifts
from qaas_engine.sessions import session
from tests.conftest import export_legacy


class Residual(torch.nn.Module):
    """Depthwise convs whose channels' weights span 1000x (one per-tensor grid rounds the small
    ones to a step or none: their means move, as MobileNets' do), ReLUs (positive means, so
    weight errors shift them) and a skip connection a segment takes from an earlier one's cache."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.ModuleList(
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8) for _ in range(4)
        )
        self.head = torch.nn.Linear(8, 5)
        with torch.no_grad():
            spread = torch.logspace(0, -3, 8).reshape(8, 1, 1, 1)
            for conv in self.body:
                conv.weight.mul_(spread * 8).add_(spread)  # positive-leaning: a mean to shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        skip = x
        for index, conv in enumerate(self.body):
            x = torch.relu(conv(x))
            if index == 1:
                x = x + skip
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bias_shift")
    torch.manual_seed(0)
    path = export_legacy(Residual().eval(), folder / "m.onnx", torch.randn(1, 3, 16, 16))
    rng = np.random.default_rng(0)
    # inputs with a mean away from zero: a weight error then shifts every layer's mean
    np.savez(folder / "c.npz", input=rng.normal(0.5, 1, (48, 3, 16, 16)).astype(np.float32))
    np.savez(folder / "e.npz", input=rng.normal(0.5, 1, (64, 3, 16, 16)).astype(np.float32))
    imported = import_model(path)
    inputs = model_inputs(imported.model)
    return imported, load_npz(folder / "c.npz", inputs), load_npz(folder / "e.npz", inputs)


def _sequential_by_whole_forwards(qdq, float_model, feeds):
    """The reference: one forward of the whole exported graph per layer, biases edited."""
    float_tensors = {name for node in float_model.graph.node for name in node.output}
    layers = shifts.correctable_layers(qdq, float_tensors)
    names = [layer.output for layer in layers]
    reference = session(float_model, extra_outputs=names).run(names, feeds)
    edited = onnx.ModelProto()
    edited.CopyFrom(qdq)
    initializers = {init.name: init for init in edited.graph.initializer}
    steps = {}
    for layer, float_value in zip(layers, reference, strict=True):
        quantized = session(edited, optimized=False, extra_outputs=[layer.output])
        value = quantized.run([layer.output], feeds)[0]
        axes = (0, 2, 3) if value.ndim == 4 else (0,)
        error = float_value.astype(np.float64).mean(axes) - value.astype(np.float64).mean(axes)
        steps[layer.bias] = np.round(error / layer.scale)
        bias = numpy_helper.to_array(initializers[layer.bias])
        moved = (bias + steps[layer.bias].reshape(bias.shape)).astype(np.int32)
        initializers[layer.bias].CopyFrom(numpy_helper.from_array(moved, layer.bias))
    return layers, steps


def test_segments_compute_the_corrections_of_one_whole_forward_per_layer(residual):
    imported, calibration, _ = residual
    spec = QuantSpec(strict_bits=True, weight_bits=4, weight_granularity="per-tensor")
    qdq = quantize(imported, spec, calibration=calibration).quantized_model
    feeds = {"input": calibration.arrays["input"][:16]}
    found = shifts.shifted_biases(qdq, imported.model, [feeds])
    layers, steps = _sequential_by_whole_forwards(qdq, imported.model, feeds)
    assert found.layers == len(layers) == 5 and found.samples == 16  # the convs
    assert any(np.any(step) for step in steps.values())  # there was something to correct
    for layer in layers:
        mine = found.shifts[layer.bias] / layer.scale
        # the segment adds the step to the cached output, the reference to the int32 bias: the
        # sums round differently in the last bit, which may move a mean across half a step
        assert np.max(np.abs(mine - steps[layer.bias])) <= 1
        assert np.mean(np.isclose(mine, steps[layer.bias])) >= 0.9


def test_the_rule_shifts_biases_where_the_output_gains_and_says_so(residual, monkeypatch):
    imported, calibration, evaluation = residual
    spec = QuantSpec(weight_bits=4, weight_granularity="per-tensor")

    def run():
        return quantize(imported, spec, calibration=calibration, evaluation=evaluation).report

    ruled = run()
    (line,) = [line for line in ruled["rules"] if line["rule"] == "bias_shift"]
    assert line["action"].startswith("shifted 5 of 5 Conv/Gemm biases")
    assert "on 16 calibration samples" in line["action"] and "8 probe samples" in line["why"]
    monkeypatch.setattr(rules, "bias_shift", lambda *args: [])
    unshifted = run()
    held_out = [report["metrics"]["onnxruntime"]["sqnr_db"] for report in (ruled, unshifted)]
    assert held_out[0] > held_out[1] + 1.0  # on data neither the correction nor the gate saw
    assert ruled["metrics"]["simulation_vs_onnxruntime"]["sqnr_db"] > 35


def test_a_shift_that_gains_too_little_is_undone(residual, monkeypatch):
    imported, calibration, _ = residual
    spec = QuantSpec(weight_bits=4, weight_granularity="per-tensor")
    monkeypatch.setattr(rules, "bias_shift", lambda *args: [])
    baseline = quantize(imported, spec, calibration=calibration)
    monkeypatch.undo()
    monkeypatch.setattr(rules, "MIN_SHIFT_GAIN_DB", 1000.0)
    kept = quantize(imported, spec, calibration=calibration)
    (line,) = [line for line in kept.report["rules"] if line["rule"] == "bias_shift"]
    assert line["action"].startswith("not kept: shifting")
    # the biases are the unshifted ones again
    exported = {i.name: numpy_helper.to_array(i) for i in kept.quantized_model.graph.initializer}
    for init in baseline.quantized_model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT32 and init.name in exported:
            np.testing.assert_array_equal(exported[init.name], numpy_helper.to_array(init))
