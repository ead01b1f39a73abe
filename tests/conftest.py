"""Shared fixtures: small models built and exported here (no downloads), and their data."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _data_dir_outside_the_checkout(tmp_path_factory) -> Iterator[None]:
    """Settings built without QAAS_DATA_DIR would create ./qaas-data in the checkout."""
    if "QAAS_DATA_DIR" in os.environ:
        yield
        return
    os.environ["QAAS_DATA_DIR"] = str(tmp_path_factory.mktemp("qaas-data"))
    try:
        yield
    finally:
        os.environ.pop("QAAS_DATA_DIR", None)


class TinyCNN(torch.nn.Module):
    """Conv+BN+ReLU, depthwise conv+ReLU6, GAP, Linear: the ops every CNN test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.nn.functional.relu6(self.depthwise(y))
        return self.fc(y.mean((2, 3)))


def export_legacy(module: torch.nn.Module, path: Path, example: torch.Tensor, opset: int = 17):
    """TorchScript exporter with BN kept as a node and a dynamic batch axis."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    module = TinyCNN()
    with torch.no_grad():
        module.bn.weight.uniform_(0.5, 1.5)
        module.bn.running_mean.uniform_(-0.2, 0.2)
        module.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return export_legacy(module, path, torch.randn(1, 1, 8, 8))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("tiny-data")
    calibration, evaluation = folder / "calibration.npz", folder / "evaluation.npz"
    np.savez(calibration, input=rng.standard_normal((64, 1, 8, 8)).astype(np.float32))
    np.savez(
        evaluation,
        input=rng.standard_normal((48, 1, 8, 8)).astype(np.float32),
        labels=rng.integers(0, 10, 48),
    )
    return calibration, evaluation


@pytest.fixture(scope="session")
def tiny_imported(tiny_model, tiny_data):
    """The tiny CNN imported, with its calibration and evaluation datasets loaded."""
    from qaas_engine import import_model, load_npz, model_inputs

    imported = import_model(tiny_model)
    calibration = load_npz(tiny_data[0], model_inputs(imported.model))
    evaluation = load_npz(tiny_data[1], model_inputs(imported.model))
    return imported, calibration, evaluation
