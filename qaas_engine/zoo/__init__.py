"""Small reference networks, digits data, training and ONNX export for tests and examples."""

from qaas_engine.zoo.digits import DigitsSplits, digits_datasets, load_digits_splits, save_npz
from qaas_engine.zoo.export import export_onnx, max_abs_diff_vs_onnxruntime
from qaas_engine.zoo.models import (
    MODELS,
    MobileNetV2Like,
    PReLUNet,
    ResNetLike,
    SiLUHardSwishNet,
    TransformerEncoderLike,
    build_model,
)
from qaas_engine.zoo.train import DEFAULT_EPOCHS, accuracy, train_classifier

__all__ = [
    "DEFAULT_EPOCHS",
    "MODELS",
    "DigitsSplits",
    "MobileNetV2Like",
    "PReLUNet",
    "ResNetLike",
    "SiLUHardSwishNet",
    "TransformerEncoderLike",
    "accuracy",
    "build_model",
    "digits_datasets",
    "export_onnx",
    "load_digits_splits",
    "max_abs_diff_vs_onnxruntime",
    "save_npz",
    "train_classifier",
]
