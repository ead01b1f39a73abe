"""A torch module exported, calibrated on seeded noise and placed with ``--strict-bits``: the
state and simulation the rules' pricing tests measure, with no rule having moved a grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs
from tests.conftest import export_legacy


def strict_sim(
    make: Callable[[], torch.nn.Module], folder: Path, shape: tuple[int, ...], samples: int
) -> tuple[Any, Any, Any]:
    """(state, sim, calibration) for the module ``make`` builds (torch seeded first), with one
    input ``input`` of ``shape`` (batch first), calibrated on ``samples`` seeded normal samples."""
    from qaas_engine.pipeline import build_sim, build_state
    from qaas_engine.state import Timer

    torch.manual_seed(0)
    model = export_legacy(make().eval(), folder / "m.onnx", torch.randn(1, *shape[1:]))
    data = folder / "c.npz"
    values = np.random.default_rng(0).standard_normal((samples, *shape[1:]), np.float32)
    np.savez(data, input=values)
    imported = import_model(model)
    calibration = load_npz(data, model_inputs(imported.model))
    state = build_state(imported, QuantSpec(strict_bits=True), calibration, None)
    return state, build_sim(state, Timer()), calibration


class Branchy(torch.nn.Module):
    """Two convs and a residual add: activations whose noise matters very differently."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.second = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.head = torch.nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            self.first.weight[0] *= 20.0  # one wide channel: a coarse grid on that tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.first(x))
        b = torch.sigmoid(self.second(a)) + a
        return self.head(b)  # a map: the one-projection first-order estimate averages over it
