"""What torch's exporters write, imported, quantized at W8A8 and run in ONNX Runtime.

Four tiny nets (a BN CNN with residuals and ReLU6, a transformer encoder with a padding mask, a
GRU net, a detection head concatenating boxes and scores), each exported by the TorchScript
exporter and by the dynamo exporter with ``optimize`` on and off, at opsets from 13 to 21. Each
net is exported once per configuration (module-scoped cache); the nets are small enough that the
whole matrix stays a few seconds per case on two cores.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qaas_engine import QuantSpec
from qaas_engine.data import model_inputs, validate_arrays
from qaas_engine.flow import quantize
from qaas_engine.importer import import_model


class ResidualBNCNN(torch.nn.Module):
    """ReLU6 makes the dynamo exporter (``optimize=False``) emit CastLike for its bounds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.relu6(self.bn1(self.stem(x)))
        y = torch.relu(y + self.bn2(self.conv(y)))
        return self.fc(y.mean((2, 3)))


class MaskedEncoder(torch.nn.Module):
    """A padding mask turned into -inf attention scores, as encoder exports carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.layer(self.embed(x), src_key_padding_mask=mask < 0.5)
        return self.head(hidden.mean(1))


class GRUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.project = torch.nn.Linear(6, 12)
        self.gru = torch.nn.GRU(12, 16, batch_first=True)
        self.out = torch.nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.gru(torch.relu(self.project(x)))
        return self.out(sequence[:, -1])


class DetectionHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.boxes = torch.nn.Conv2d(8, 4, 1)
        self.scores = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.body(x))
        boxes = self.boxes(features).flatten(2).transpose(1, 2)
        scores = torch.sigmoid(self.scores(features)).flatten(2).transpose(1, 2)
        return torch.cat([boxes, scores], dim=2)


def _cnn_data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((n, 3, 12, 12), dtype=np.float32)}


def _encoder_data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    mask = np.ones((n, 5), np.float32)
    mask[:, 3:] = rng.integers(0, 2, (n, 2))  # the first tokens always attend
    return {"x": rng.standard_normal((n, 5, 8), dtype=np.float32), "mask": mask}


def _sequence_data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((n, 7, 6), dtype=np.float32)}


@dataclass(frozen=True)
class Net:
    module: type[torch.nn.Module]
    data: object  # (rng, n) -> feeds
    min_opset: int = 13  # torch exports scaled_dot_product_attention from opset 14 only


NETS = {
    "bn_cnn": Net(ResidualBNCNN, _cnn_data),
    "encoder": Net(MaskedEncoder, _encoder_data, min_opset=14),
    "gru": Net(GRUNet, _sequence_data),
    "detection": Net(DetectionHead, _cnn_data),
}
# (exporter, opset, optimize); dynamo writes opset 18 at least, whatever is asked
EXPORTS = [
    ("torchscript", 13, None),
    ("torchscript", 17, None),
    ("torchscript", 21, None),
    ("dynamo", 18, True),
    ("dynamo", 21, False),
]


def _modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    modules = {name: net.module().eval() for name, net in NETS.items()}
    with torch.no_grad():  # BN statistics that are not the identity, so folding matters
        for bn in (modules["bn_cnn"].bn1, modules["bn_cnn"].bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return modules


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export lazily, once per (net, exporter, opset, optimize)."""
    modules = _modules()
    folder = tmp_path_factory.mktemp("exports")
    cache: dict[tuple, Path] = {}

    def export(name: str, exporter: str, opset: int, optimize: bool | None) -> Path:
        key = (name, exporter, opset, optimize)
        if key not in cache:
            cache[key] = _export(modules[name], NETS[name], folder, key)
        return cache[key]

    return export, modules


def _export(module: torch.nn.Module, net: Net, folder: Path, key: tuple) -> Path:
    name, exporter, opset, optimize = key
    feeds = net.data(np.random.default_rng(0), 2)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    path = folder / f"{name}_{exporter}_{opset}_{optimize}.onnx"
    options: dict = {"input_names": list(feeds), "opset_version": max(opset, net.min_opset)}
    batch = torch.export.Dim("batch")
    if exporter == "dynamo":
        options.update(dynamo=True, optimize=optimize, dynamic_shapes=[{0: batch}] * len(args))
    else:
        axes = {input_name: {0: "batch"} for input_name in feeds}
        options.update(dynamo=False, dynamic_axes=axes)
    logging.disable(logging.WARNING)  # the dynamo exporter's progress lines
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), **options)
    finally:
        logging.disable(logging.NOTSET)
    return path


def _quantize(path: Path, feeds: dict[str, np.ndarray] | None, spec: QuantSpec):
    imported = import_model(path)
    calibration = None
    if feeds is not None:
        inputs = model_inputs(imported.model)
        calibration = validate_arrays(feeds, inputs, role="calibration", source=path.name)
    return quantize(imported, spec, calibration=calibration).quantized_model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _cases():
    for name in NETS:
        for exporter, opset, optimize in EXPORTS:
            key = (name, exporter, opset, optimize)
            case_id = f"{name}-{exporter}{opset}" + ("" if optimize is None else f"-opt{optimize}")
            yield pytest.param(*key, id=case_id)


@pytest.mark.parametrize(("name", "exporter", "opset", "optimize"), list(_cases()))
def test_export_quantizes_and_runs(exported, name, exporter, opset, optimize):
    export, modules = exported
    path = export(name, exporter, opset, optimize)
    rng = np.random.default_rng(1)
    calibration = NETS[name].data(rng, 16)
    spec = QuantSpec(weight_bits=8, activation_bits=8, keep_float_ops=("GRU",))
    quantized = _quantize(path, calibration, spec)

    dequantized_weights = {
        node.input[0]
        for node in quantized.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] not in _produced(quantized)
    }
    assert dequantized_weights, "no weight was quantized"
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)

    test = NETS[name].data(rng, 8)
    with torch.no_grad():
        expected = modules[name](*(torch.from_numpy(v) for v in test.values())).numpy()
    actual = _run(quantized, test)
    assert actual.shape == expected.shape
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert error < 0.1, f"relative error {error:.3f}"
    if name == "gru":
        (gru,) = [node for node in quantized.graph.node if node.op_type == "GRU"]
        assert not set(gru.input[1:3]) & dequantized_weights  # W and R stay float


def _produced(model: onnx.ModelProto) -> set[str]:
    return {out for node in model.graph.node for out in node.output}


def test_dynamo_bn_cnn_with_cast_like_quantizes_data_free(exported):
    export, modules = exported
    path = export("bn_cnn", "dynamo", 21, False)
    source_ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"CastLike", "BatchNormalization"} <= source_ops
    quantized = _quantize(path, None, QuantSpec(weight_bits=8, activation_bits=8))
    assert "BatchNormalization" not in {node.op_type for node in quantized.graph.node}
    test = _cnn_data(np.random.default_rng(2), 8)
    with torch.no_grad():
        expected = modules["bn_cnn"](torch.from_numpy(test["x"])).numpy()
    actual = _run(quantized, test)
    error = np.linalg.norm(actual - expected) / np.linalg.norm(expected)
    assert error < 0.1, f"relative error {error:.3f}"
