"""The channel axis of an output a Concat joined: a YOLOv8-style ``[batch, 4 + classes,
anchors]`` output is judged per row (box coordinates, class scores), not per anchor."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.output_axes import channel_axes


class RowsOfBoxesAndScores(torch.nn.Module):
    """Per location 4 box coordinates (0..320) and 3 scores, joined along axis 1 as YOLOv8
    does: (batch, 7, locations)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 7, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.conv(x).flatten(2)  # (batch, 7, locations)
        return torch.cat([320 * torch.sigmoid(rows[:, :4]), torch.sigmoid(rows[:, 4:])], dim=1)


def test_an_output_joined_along_axis_1_is_judged_per_row(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "rows.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            RowsOfBoxesAndScores().eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False,
            opset_version=17, input_names=["input"], output_names=["detections"],
            dynamic_axes={"input": {0: "batch"}, "detections": {0: "batch"}},
        )  # fmt: skip
    data = tmp_path / "calibration.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((32, 1, 8, 8), dtype=np.float32))
    imported = import_model(path)
    assert channel_axes(imported.model) == {"detections": 1}
    calibration = load_npz(data, model_inputs(imported.model))
    # strict bits: one grid over the joined output, so the scores sit on the boxes' grid
    report = quantize(imported, QuantSpec(strict_bits=True), calibration=calibration).report
    measured = report["metrics"]["outputs"]["detections"]["onnxruntime"]
    assert measured["channel_axis"] == 1
    # the worst row is a score row, far below the whole output (per anchor, every anchor holds
    # its boxes, so the worst anchor would read about the whole output's figure)
    assert measured["worst_channel"] >= 4
    assert measured["worst_channel_sqnr_db"] < measured["sqnr_db"] - 15
    # auto's pricing weighs each row's noise by that row's power too (its signal counts the
    # output's channels: 7 rows, not 64 anchors)
    from qaas_engine.cost.energy import EnergyProfile
    from qaas_engine.pipeline import PipelineData, run_pipeline
    from qaas_engine.quant.sensitivity import estimate_noise
    from qaas_engine.state import Timer

    _, sim, _ = run_pipeline(
        imported, QuantSpec(), PipelineData(calibration), Timer(), EnergyProfile()
    )
    feeds, _ = next(calibration.batches(4))
    axes = channel_axes(imported.model)
    assert estimate_noise(sim, feeds, per_channel=True, channel_axes=axes).signal == 7.0
    assert estimate_noise(sim, feeds, per_channel=True).signal == 64.0


def _graph(axis: int, shape: list[int], through_identity: bool) -> onnx.ModelProto:
    """Two [1, 2, 5] inputs joined along ``axis`` into an output of ``shape``."""
    joined = "joined" if through_identity else "out"
    nodes = [helper.make_node("Concat", ["a", "b"], [joined], axis=axis)]
    if through_identity:
        nodes.append(helper.make_node("Identity", ["joined"], ["out"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 5]) for n in "ab"]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)
    return helper.make_model(helper.make_graph(nodes, "g", inputs, [output]))


def test_the_axis_follows_identity_and_skips_the_batch_axis():
    assert channel_axes(_graph(1, [1, 4, 5], through_identity=True)) == {"out": 1}
    assert channel_axes(_graph(-2, [1, 4, 5], through_identity=False)) == {"out": 1}
    assert channel_axes(_graph(2, [1, 2, 10], through_identity=False)) == {"out": 2}
    # joined along the batch axis: samples, not channels; the default axis stays
    assert channel_axes(_graph(0, [2, 2, 5], through_identity=False)) == {}
