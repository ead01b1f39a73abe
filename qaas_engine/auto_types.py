"""What pipeline auto's ladder and its verdict share: a rung, the validation data, and one
configuration tried (its report row, and its model while auto holds it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from qaas_engine.data import Dataset
from qaas_engine.quant.sim import QuantSim
from qaas_engine.state import PipelineState, Timer


@dataclass(frozen=True)
class Rung:
    name: str
    pipeline: tuple[str, ...]
    summary: str


@dataclass
class Validation:
    """The data decisions are made on, and how a drop is counted there."""

    data: Dataset
    source: str
    float_top1: float | None  # None: no labels, the drop is in top-1 agreement with float

    @property
    def measure(self) -> str:
        return "top-1 points" if self.float_top1 is not None else "points of top-1 agreement"


@dataclass
class Tried:
    rung: Rung
    row: dict[str, Any]
    state: PipelineState | None = None
    sim: QuantSim | None = None
    qdq: onnx.ModelProto | None = None
    timer: Timer | None = None
    changes: list[dict[str, str]] = field(default_factory=list)  # auto_mixed's, for the report
