"""Build the bundled example: a digits MobileNetV2-like ONNX model plus calibration/eval data.

Run from anywhere: ``python examples/make_example.py``. It needs scikit-learn (dev extra) for the
digits data and rewrites three files next to this script:

* ``digits_mobilenetv2.onnx``: BatchNorm kept, dynamic batch, input ``input``, output ``logits``
* ``digits_calibration.npz``: 128 calibration images under ``input``, no labels
* ``digits_evaluation.npz``: the 400 eval images under ``input`` plus ``labels``
"""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # runs from a checkout even when not pip-installed

from qaas_engine.zoo import (  # noqa: E402
    accuracy,
    build_model,
    export_onnx,
    load_digits_splits,
    max_abs_diff_vs_onnxruntime,
    save_npz,
    train_classifier,
)

SEED = 0
INPUT_NAME = "input"


def main() -> None:
    """Train, export and write the example files; print the float eval accuracy."""
    splits = load_digits_splits(SEED)
    model = build_model("mobilenetv2", seed=SEED)
    start = time.perf_counter()
    train_classifier(model, splits.x_train, splits.y_train, seed=SEED)
    seconds = time.perf_counter() - start

    onnx_path = export_onnx(model, ROOT / "digits_mobilenetv2.onnx", input_name=INPUT_NAME)
    diff = max_abs_diff_vs_onnxruntime(model, onnx_path, splits.x_eval)
    if diff >= 1e-4:
        raise SystemExit(f"exported model disagrees with torch: max abs diff {diff:.2e}")
    save_npz(ROOT / "digits_calibration.npz", INPUT_NAME, splits.x_calib)
    save_npz(ROOT / "digits_evaluation.npz", INPUT_NAME, splits.x_eval, splits.y_eval)

    acc = accuracy(model, splits.x_eval, splits.y_eval)
    print(
        f"trained in {seconds:.1f}s; float eval accuracy {acc:.4f} on {len(splits.y_eval)} images"
    )
    print(f"onnxruntime vs torch max abs diff {diff:.2e}")
    for name in ("digits_mobilenetv2.onnx", "digits_calibration.npz", "digits_evaluation.npz"):
        print(f"wrote {ROOT / name} ({(ROOT / name).stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
