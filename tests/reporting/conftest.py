"""Small networks whose work can be counted by hand, and one made hard to quantize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qaas_engine import import_model, load_npz, model_inputs
from tests.conftest import export_legacy


class CountableNet(torch.nn.Module):
    """Conv 1->2 3x3 on 4x4 (72 MACs), Relu, Flatten, Linear 8->3 (24 MACs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class OutlierNet(torch.nn.Module):
    """Three convs; the fixture gives the middle one weights 100x the others on an input
    channel that is always zero: harmless in float, they stretch its per-tensor int8 grid
    until its useful weights round to zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        y = torch.relu(self.conv3(y))
        return self.fc(y.mean((2, 3)))


def load(model_path: Path, npz: Path, role: str = "calibration"):
    imported = import_model(model_path)
    return imported, load_npz(npz, model_inputs(imported.model), role=role)


@pytest.fixture(scope="session")
def countable(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("countable")
    path = export_legacy(CountableNet(), folder / "countable.onnx", torch.randn(1, 1, 4, 4))
    data = folder / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, input=rng.standard_normal((16, 1, 4, 4)).astype(np.float32))
    return load(path, data)


@pytest.fixture(scope="session")
def outlier_net(tmp_path_factory):
    torch.manual_seed(1)
    module = OutlierNet()
    with torch.no_grad():
        module.conv1.weight[0] = 0.0
        module.conv1.bias[0] = -1.0  # Relu makes channel 0 zero for every input
        module.conv2.weight[:, 0] = 100 * module.conv2.weight.abs().max()
    folder = tmp_path_factory.mktemp("outlier")
    path = export_legacy(module, folder / "outlier.onnx", torch.randn(1, 1, 8, 8))
    data = folder / "data.npz"
    rng = np.random.default_rng(1)
    np.savez(data, input=rng.standard_normal((32, 1, 8, 8)).astype(np.float32))
    return load(path, data)
