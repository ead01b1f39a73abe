"""The zoo models build, train, export (BN kept and folded) and match onnxruntime."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("sklearn")

from qaas_engine.zoo import (  # noqa: E402
    MODELS,
    DigitsSplits,
    accuracy,
    build_model,
    export_onnx,
    load_digits_splits,
    max_abs_diff_vs_onnxruntime,
    save_npz,
    train_classifier,
)


@pytest.fixture(scope="module")
def splits() -> DigitsSplits:
    return load_digits_splits(0)


def test_digits_splits_disjoint_and_deterministic(splits: DigitsSplits) -> None:
    parts = {
        "train": (splits.x_train, splits.y_train),
        "val": (splits.x_val, splits.y_val),
        "calib": (splits.x_calib, splits.y_calib),
        "eval": (splits.x_eval, splits.y_eval),
    }
    assert len(splits.x_calib) == 128
    assert sum(len(x) for x, _ in parts.values()) == 1797
    for x, y in parts.values():
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == np.int64 and y.shape == (len(x),)
    # The 1797 digits images are pairwise distinct, so shared bytes would mean a shared sample.
    rows = {name: {img.tobytes() for img in x} for name, (x, _) in parts.items()}
    names = list(rows)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not rows[a] & rows[b], f"{a} and {b} share images"
    assert abs(float(splits.x_train.mean())) < 1e-4
    assert abs(float(splits.x_train.std()) - 1) < 1e-3

    again = load_digits_splits(0)
    for field in ("x_train", "y_train", "x_calib", "y_eval"):
        np.testing.assert_array_equal(getattr(splits, field), getattr(again, field))
    other = load_digits_splits(1)
    assert not np.array_equal(other.y_eval, splits.y_eval)


def test_save_npz_round_trip(tmp_path: Path, splits: DigitsSplits) -> None:
    path = save_npz(tmp_path / "d.npz", "input", splits.x_eval[:5], splits.y_eval[:5])
    with np.load(path) as data:
        assert sorted(data.files) == ["input", "labels"]
        np.testing.assert_array_equal(data["labels"], splits.y_eval[:5])
    with np.load(save_npz(tmp_path / "c.npz", "x", splits.x_calib)) as data:
        assert data.files == ["x"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_trains_and_exports(name: str, tmp_path: Path, splits: DigitsSplits) -> None:
    model = build_model(name, seed=0)
    assert sum(p.numel() for p in model.parameters()) <= 60_000
    train_classifier(model, splits.x_train[:256], splits.y_train[:256], epochs=2)
    assert not model.training
    assert 0.0 <= accuracy(model, splits.x_val, splits.y_val) <= 1.0

    has_bn = any("BatchNorm" in type(m).__name__ for m in model.modules())
    for keep in (True, False):
        path = export_onnx(model, tmp_path / f"{name}_{keep}.onnx", keep_batchnorm=keep)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        ops = Counter(node.op_type for node in proto.graph.node)
        assert (ops["BatchNormalization"] > 0) == (has_bn and keep)
        assert [o.name for o in proto.graph.output] == ["logits"]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        # A batch size other than the traced one proves the batch axis is really dynamic.
        assert max_abs_diff_vs_onnxruntime(model, path, splits.x_eval[:5]) < 1e-4


def test_kept_batchnorm_is_inference_form(tmp_path: Path, splits: DigitsSplits) -> None:
    model = build_model("resnet")  # untrained: BN weight == running_var, bias == running_mean
    path = export_onnx(model, tmp_path / "r.onnx", dynamic_batch=False)
    graph = onnx.load(str(path)).graph
    inits = {init.name for init in graph.initializer}
    assert "Identity" not in {node.op_type for node in graph.node}
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            attrs = {a.name: a.i for a in node.attribute if a.name == "training_mode"}
            assert attrs.get("training_mode", 0) == 0
            assert len(node.output) == 1 and all(i in inits for i in node.input[1:])
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert max_abs_diff_vs_onnxruntime(model, path, splits.x_eval[:2]) < 1e-4
