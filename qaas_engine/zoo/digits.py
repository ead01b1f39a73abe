"""The scikit-learn 8x8 digits set as a tiny, download-free image task.

Tests, benchmarks and the bundled example need real images with real labels so that accuracy
after quantization means something, yet must run offline in seconds; ``load_digits`` ships inside
scikit-learn and fits both needs.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_EVAL = 400
N_CALIB = 128
N_VAL = 150


@dataclass(frozen=True)
class DigitsSplits:
    """Disjoint train/val/calibration/eval splits, images (N, 1, 8, 8) float32, labels int64.

    ``mean`` and ``std`` are the scalar pixel statistics of the training split used to normalize
    every split, kept so that new images can be normalized the same way.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    mean: float
    std: float


def load_digits_splits(seed: int = 0) -> DigitsSplits:
    """Load the 1797 digits and split them deterministically for ``seed``.

    Eval (400) is drawn first, then calibration (128), val (150) and train (the remaining 1119)
    from one seeded permutation, so every split is disjoint and calibration images come from the
    same distribution as training without ever being evaluated on. Pixels are normalized with one
    scalar mean/std from the training split (per-pixel statistics would explode on the always-zero
    border pixels).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "qaas_engine.zoo needs scikit-learn for the digits data set "
            "(a dev/bench dependency): pip install 'qaas-service[dev]'"
        ) from exc

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)

    order = np.random.default_rng(seed).permutation(len(labels))
    bounds = np.cumsum([N_EVAL, N_CALIB, N_VAL])
    eval_idx, calib_idx, val_idx, train_idx = np.split(order, bounds)

    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())

    def take(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = ((images[idx] - mean) / std).astype(np.float32)
        return np.ascontiguousarray(x), labels[idx].copy()

    x_train, y_train = take(train_idx)
    x_val, y_val = take(val_idx)
    x_calib, y_calib = take(calib_idx)
    x_eval, y_eval = take(eval_idx)
    return DigitsSplits(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_calib=x_calib,
        y_calib=y_calib,
        x_eval=x_eval,
        y_eval=y_eval,
        mean=mean,
        std=std,
    )


def save_npz(path: str | Path, input_name: str, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    """Write ``x`` under the model's input name (and ``y`` under ``labels``) as an ``.npz``.

    This is the data-upload format the engine reads for calibration and evaluation.
    """
    if y is not None and input_name == "labels":
        raise ValueError("input name 'labels' collides with the labels key")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {input_name: np.ascontiguousarray(x, dtype=np.float32)}
    if y is not None:
        arrays["labels"] = np.asarray(y, dtype=np.int64)
    with path.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds oddly
    return path


def digits_datasets(model, splits: DigitsSplits) -> dict:
    """The splits as engine datasets for a model with one image input: ``calibration``,
    ``evaluation`` and ``validation`` (labelled), ``training`` (labelled) and ``unlabelled``
    (the training images alone, for distillation)."""
    from qaas_engine.data import model_inputs, validate_arrays

    inputs = model_inputs(model)
    name = inputs[0].name

    def data(x: np.ndarray, y: np.ndarray | None = None):
        raw = {name: x} if y is None else {name: x, "labels": y}
        return validate_arrays(raw, inputs, role="digits", source="digits")

    return {
        "calibration": data(splits.x_calib),
        "evaluation": data(splits.x_eval, splits.y_eval),
        "validation": data(splits.x_val, splits.y_val),
        "training": data(splits.x_train, splits.y_train),
        "unlabelled": data(splits.x_train),
    }
