"""The channel axis of an output a Concat joined: a YOLOv8-style ``[batch, 4 + classes,
anchors]`` output is judged per row (box coordinates, class scores), not per anchor."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.evaluation import FidelityMeter
from qaas_engine.output_axes import LOGIT_CLIP, channel_axes, logit_channels


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
    # the score rows (a Sigmoid's) are judged in log-odds and the report says so; the box rows
    # (320 * sigmoid: pixels) in their own values
    assert logit_channels(imported.model) == {"detections": ((4, 7),)}
    assert measured["log_odds_channels"] == [[4, 7]]
    assert measured["log_odds_clip"] == LOGIT_CLIP
    assert (
        "log_odds_channels"
        not in report["metrics"]["outputs"]["detections"]["simulation_vs_onnxruntime"]
    )
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


def _rows(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(batch 8, 3 rows, 50 anchors): a box row in pixels, a row of a class absent from every
    image (probabilities about 1e-3), a row of a present class (probabilities 0.05..0.95)."""
    box = rng.uniform(0, 320, (8, 1, 50))
    absent = rng.uniform(5e-4, 1.5e-3, (8, 1, 50))
    present = rng.uniform(0.05, 0.95, (8, 1, 50))
    return np.concatenate([box, absent, present], axis=1), rng.standard_normal((8, 3, 50))


def _worst(reference: np.ndarray, test: np.ndarray, logit: tuple[tuple[int, int], ...]) -> tuple:
    meter = FidelityMeter(1, logit)
    meter.update(reference, test, None)
    result = meter.result()
    return result["worst_channel"], result["worst_channel_sqnr_db"]


def test_probabilities_are_judged_in_log_odds_and_cannot_hide():
    reference, noise = _rows(np.random.default_rng(0))
    # an 8-bit grid of step 1/255 over the probabilities rounds the absent class to 0: no
    # detection changes, yet its raw SQNR is 0 dB
    test = reference.copy()
    test[:, 1:] = np.round(reference[:, 1:] * 255) / 255
    assert _worst(reference, test, ())[1] == 0.0
    # in log-odds it is a finite error: 1e-3 read as the clip (1e-4) is a tenfold change of
    # odds, about 10 dB; the box row is exact
    channel, db = _worst(reference, test, ((1, 3),))
    assert channel == 1 and 5 < db < 15
    # a present class whose probabilities move by 0.1 is a real error: in log-odds it is the
    # worst row, far under 30 dB, though the box row (pixels) beside it is exact
    moved = reference.copy()
    moved[:, 2] = np.clip(reference[:, 2] + 0.1 * noise[:, 2], 0, 1)
    assert _worst(reference, moved, ((1, 3),))[0] == 2
    assert _worst(reference, moved, ((1, 3),))[1] < 20
    # the absent class pushed to 0.3 on a few anchors (a false detection at a 0.25 threshold)
    # is caught: that row's log-odds figure falls under 20 dB
    false = reference.copy()
    false[:, 1, :3] = 0.3
    assert _worst(reference, false, ((1, 3),))[0] == 1
    assert _worst(reference, false, ((1, 3),))[1] < 20


def test_probability_channels_are_found_without_serializing_the_weights(monkeypatch):
    """Shape inference sees the graph with its float weights stubbed (on BERT-base the whole
    model's inference held four copies of the weights: the job's peak memory), and the
    channels found are the same."""
    weight = np.random.default_rng(0).standard_normal((7, 256), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["scores"]),
        ],
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 256])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    seen: list[int] = []
    infer = onnx.shape_inference.infer_shapes

    def recording(proto, *args, **kwargs):
        seen.append(proto.ByteSize())
        return infer(proto, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", recording)
    assert logit_channels(model) == {"scores": ((0, 256),)}
    assert seen and max(seen) < weight.nbytes
