"""``output_grid``: an output whose own 8-bit grid limits it (a head whose values vary little
around a large mean, beside a head of ordinary range, as MTCNN's landmarks and probability sit
beside its box offsets) gets a 16-bit grid, said in the report, and never under strict bits."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.output_grids import centred_channel_sqnr
from tests.support.targets import EIGHT_BIT_WEIGHTS


class TwoHeads(torch.nn.Module):
    """``scores``: an ordinary head on a trunk that holds most of the multiply-accumulates (a
    head run float costs little). ``offset``: a head whose values stay within a few hundredths
    of 5 (a level or two of an 8-bit grid that must reach from 0 to 5), so what varies from
    sample to sample is lost while the whole output's SQNR, carried by the mean, looks fine."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Linear(8, 64)
        self.hidden = torch.nn.Linear(64, 64)
        self.scores = torch.nn.Linear(64, 4)
        self.offset = torch.nn.Linear(8, 2)
        with torch.no_grad():
            self.offset.weight.mul_(0.02)
            self.offset.bias.fill_(5.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.hidden(torch.relu(self.trunk(x))))
        return self.scores(hidden), self.offset(x)


def _two_heads(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "heads.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TwoHeads().eval(), (torch.randn(1, 8),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["scores", "offset"],
            dynamic_axes={name: {0: "batch"} for name in ("input", "scores", "offset")},
        )  # fmt: skip
    inputs = np.random.default_rng(0).standard_normal((64, 8), dtype=np.float32)
    data = tmp_path / "calibration.npz"
    np.savez(data, input=inputs)
    imported = import_model(path)
    return path, inputs, imported, load_npz(data, model_inputs(imported.model))


def _centred(path, quantized, inputs) -> dict[str, float]:
    """Each output's centred worst-channel SQNR of ``quantized`` as ONNX Runtime runs it."""
    names = ["scores", "offset"]
    reference = ort.InferenceSession(str(path)).run(names, {"input": inputs})
    runtime = ort.InferenceSession(quantized.SerializeToString())
    tested = runtime.run(names, {"input": inputs})
    pairs = zip(names, reference, tested, strict=True)
    return {name: centred_channel_sqnr([r], [t]) for name, r, t in pairs}


def test_an_output_its_own_grid_limits_gets_16_bits_and_says_why(tmp_path):
    path, inputs, imported, calibration = _two_heads(tmp_path)
    strict_spec = QuantSpec(strict_bits=True, target=EIGHT_BIT_WEIGHTS)
    strict = quantize(imported, strict_spec, calibration=calibration)
    ruled = quantize(imported, QuantSpec(target=EIGHT_BIT_WEIGHTS), calibration=calibration)

    assert strict.report["rules"] == []
    lines = [line for line in ruled.report["rules"] if line["rule"] == "output_grid"]
    (line,) = [line for line in lines if "16-bit" in line["action"]]
    assert line["node"] == "offset" and "mean removed" in line["why"]
    assert "carried almost all" in line["why"]
    assert all(other["node"] != "scores" or "16-bit" not in other["action"] for other in lines)

    before, after = (
        _centred(path, strict.quantized_model, inputs),
        _centred(path, ruled.quantized_model, inputs),
    )
    # the whole output looked fine at 8 bits: its mean carries the energy
    offset = strict.report["metrics"]["outputs"]["offset"]["onnxruntime"]
    assert offset["sqnr_db"] > 40
    # what varies from sample to sample was a level or two of the grid, and is now kept
    assert before["offset"] < 15 and after["offset"] > before["offset"] + 15
    assert after["scores"] > before["scores"] - 0.5
    # simulation = runtime still holds on the 16-bit output
    gap = ruled.report["metrics"]["outputs"]["offset"]["simulation_vs_onnxruntime"]
    assert gap["sqnr_db"] > 100


def test_strict_bits_keeps_every_output_on_the_grid_asked_for(tmp_path):
    _, _, imported, calibration = _two_heads(tmp_path)
    spec = QuantSpec(strict_bits=True)
    result = quantize(imported, spec, calibration=calibration)
    assert all(line["rule"] != "output_grid" for line in result.report["rules"])
    bits = {entry["name"]: entry["bw"] for entry in result.encodings["activation_encodings"]}
    assert bits["offset"] == 8 and set(bits.values()) == {8}
    ruled = quantize(imported, QuantSpec(), calibration=calibration).encodings
    assert {entry["name"]: entry["bw"] for entry in ruled["activation_encodings"]}["offset"] == 16
