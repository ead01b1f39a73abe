"""Write the malformed-model corpus into a folder: files an attacker or a broken exporter could
upload. Generated, never committed; ``python tests/corpus/make_corpus.py OUT`` (the tests run it).

Each case names the file to upload and words its refusal must contain, so a test can check that
the service says what is wrong, not merely that it refused.
"""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

UNPICKLED_MARKER = "UNPICKLED"  # a file the pickles create if anything ever loads them


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    cause: tuple[str, ...]  # words the refusal must contain (any one of them)


CASES = [
    Case("random_bytes", "random.onnx", ("not an ONNX model",)),
    Case("truncated_protobuf", "truncated.onnx", ("truncated",)),
    Case("pickle_named_pt2", "model.pt2", ("pickle",)),
    Case("torch_checkpoint_named_pt2", "checkpoint.pt2", ("pickle",)),
    Case("external_data_absolute", "absolute.onnx", ("outside the upload",)),
    Case("external_data_traversal", "traversal.onnx", ("outside the upload",)),
    Case("external_data_neighbour", "neighbour.onnx", ("missing",)),
    Case("external_data_symlink", "symlink/model.onnx", ("symlink", "outside the upload")),
    Case("shape_inference_bomb", "bomb.onnx", ("shape-inference bomb",)),
    Case("already_quantized", "quantized.onnx", ("already quantized",)),
    Case("work_inside_if", "if.onnx", ("If", "control flow")),
    Case("unsupported_op", "unsupported.onnx", ("unsupported op",)),
]


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "corpus", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tensor(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def small_valid_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "weight")
    node = helper.make_node("MatMul", ["x", "weight"], ["y"], name="matmul")
    return _model([node], [_tensor("x", ["batch", 4])], [_tensor("y", ["batch", 4])], [weight])


def external_model(location: str) -> onnx.ModelProto:
    """A MatMul whose weight claims to live in ``location``."""
    model = small_valid_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        weight.external_data.add(key=key, value=value)
    return model


class _Trap:
    """Unpickling this creates a file; its presence after a test means something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def shape_bomb() -> onnx.ModelProto:
    """Tiny file, astronomically large tensors once shapes are inferred or constants folded."""
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20, 1 << 12], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["huge"], name="bomb"),
        helper.make_node("Add", ["x", "huge"], ["y"], name="add"),
    ]
    dims: list[int | str] = ["a", "b", "c"]  # nothing huge is declared where it shows
    return _model(nodes, [_tensor("x", dims)], [_tensor("y", dims)], [shape])


def quantized_model() -> onnx.ModelProto:
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dequant"),
    ]
    return _model(nodes, [_tensor("x", ["batch", 4])], [_tensor("y", ["batch", 4])], [scale, zero])


def work_inside_if() -> onnx.ModelProto:
    """The convolution-like work (a MatMul) lives only in the branches of an ``If`` decided by
    the data (``x.sum() > 0``): no value to fix, unlike an If on a sample-rate input, which an
    upload accepts and a job must fix (tests/service/test_fixed_inputs_api.py)."""
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "weight")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")

    def branch(name: str) -> onnx.GraphProto:
        node = helper.make_node("MatMul", ["x", "weight"], [f"{name}_y"], name=f"{name}_matmul")
        return helper.make_graph([node], name, [], [_tensor(f"{name}_y", ["batch", 4])])

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="branch",
            then_branch=branch("then"),
            else_branch=branch("else"),
        ),
    ]
    inputs = [_tensor("x", ["batch", 4])]
    return _model(nodes, inputs, [_tensor("y", ["batch", 4])], [weight, zero])


def unsupported_op() -> onnx.ModelProto:
    """An op of a domain nothing here computes (default-domain ops fall back to onnx.reference)."""
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frobnicate", domain="com.example")
    model = _model([node], [_tensor("x", ["batch", 4, 4])], [_tensor("y", ["batch"])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def make_corpus(out: Path) -> dict[str, Path]:
    """Write every case under ``out``; returns case name -> file."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    marker = out / UNPICKLED_MARKER
    valid = small_valid_model().SerializeToString()
    files: dict[str, bytes] = {
        "random.onnx": rng.bytes(4096),
        "truncated.onnx": valid[: len(valid) // 2],
        "model.pt2": pickle.dumps({"weights": _Trap(marker)}, protocol=4),
        "absolute.onnx": external_model("/etc/passwd").SerializeToString(),
        "traversal.onnx": external_model("../../../../etc/passwd").SerializeToString(),
        "neighbour.onnx": external_model("neighbour.bin").SerializeToString(),
        "bomb.onnx": shape_bomb().SerializeToString(),
        "quantized.onnx": quantized_model().SerializeToString(),
        "if.onnx": work_inside_if().SerializeToString(),
        "unsupported.onnx": unsupported_op().SerializeToString(),
    }
    checkpoint = io.BytesIO()
    with zipfile.ZipFile(checkpoint, "w") as archive:  # torch.save's layout: a pickle in a zip
        archive.writestr("checkpoint/data.pkl", pickle.dumps(_Trap(marker), protocol=2))
        archive.writestr("checkpoint/version", "3\n")
    files["checkpoint.pt2"] = checkpoint.getvalue()
    for name, data in files.items():
        (out / name).write_bytes(data)
    # External data through a symlink to a file outside the upload.
    folder = out / "symlink"
    folder.mkdir(exist_ok=True)
    (folder / "model.onnx").write_bytes(external_model("weights.bin").SerializeToString())
    link = folder / "weights.bin"
    if not link.is_symlink():
        link.symlink_to("/etc/hostname")
    return {case.name: out / case.filename for case in CASES}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_corpus.py OUT_FOLDER")
    for name, path in make_corpus(Path(sys.argv[1])).items():
        print(f"{name}\t{path}")
