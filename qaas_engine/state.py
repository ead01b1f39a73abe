"""What pipeline steps read and change, and the timer that clocks every phase.

Kept apart from the code that runs steps (``pipeline``) and from the steps themselves
(``steps/``), so each of those imports this module and none imports another.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.data import Dataset
from qaas_engine.graph.lazy import LazyExecutor
from qaas_engine.quant.sim import QuantSim
from qaas_engine.simulated_runs import SimulatedRuns
from qaas_engine.spec import QuantSpec
from qaas_engine.targets import KernelChoice
from qaas_engine.tensors import to_torch
from qaas_engine.transforms.bn_fold import FoldedBatchNorm
from qaas_engine.transforms.cle import ChannelStats

if TYPE_CHECKING:
    import torch

    from qaas_engine.graph.lazy import Executor

Progress = Callable[[str, float], None]


def no_progress(phase: str, fraction: float) -> None:
    return None


@dataclass
class PipelineState:
    """What steps read and change. Steps never open files: data arrives as ``Dataset``."""

    model: onnx.ModelProto
    executor: Executor
    spec: QuantSpec
    calibration: Dataset | None
    folded_batchnorms: list[FoldedBatchNorm]
    progress: Progress
    sim: QuantSim | None = None
    step_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    channel_stats: dict[str, ChannelStats] = field(default_factory=dict)
    data_free: bool = False
    should_stop: Callable[[], bool] = lambda: False  # polled between layers and epochs
    float_weights: dict[str, torch.Tensor] | None = None  # the reference after float steps
    training: Dataset | None = None
    validation: Dataset | None = None
    energy_profile: EnergyProfile = field(default_factory=EnergyProfile)  # prices mixed precision
    # the float model's first output per calibration batch, as calibration computed it (or None)
    calibration_outputs: list[np.ndarray] | None = None
    rules: list[dict[str, str]] = field(default_factory=list)  # what rules.py did, and why
    # exported graphs the rules ran (optimizer off) on the first calibration samples
    simulated_runs: SimulatedRuns | None = None
    # the rules' probe samples as calibration ran them: a rules.CalibrationProbe, typed as Any
    # because the state must not import the rules (they import it)
    calibration_probe: Any = None
    kernels: KernelChoice | None = None  # the target's kernel mode, chosen at export

    def rebuild_executor(self) -> None:
        """After a float step rewrote the graph or its initializers."""
        self.executor = LazyExecutor(self.model)

    def calibration_feeds(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.calibration is None:
            return iter(())
        return (
            to_torch(feeds)
            for feeds, _ in self.calibration.batches(
                self.spec.batch_size, self.spec.max_calibration_samples
            )
        )

    def calibration_arrays(self) -> Iterator[dict[str, np.ndarray]]:
        """The calibration batches as numpy feeds, for passes that run in ONNX Runtime."""
        if self.calibration is None:
            return iter(())
        return (
            feeds
            for feeds, _ in self.calibration.batches(
                self.spec.batch_size, self.spec.max_calibration_samples
            )
        )

    def reference_weights(self) -> dict[str, torch.Tensor]:
        """The float weights every quantized step compares against (set before calibration)."""
        if self.float_weights is None:
            raise RuntimeError("a quantized step ran before the float reference was kept")
        return self.float_weights

    def quantized(self) -> QuantSim:
        """The simulation, for quantized steps (it exists once calibration has run)."""
        if self.sim is None:
            raise RuntimeError("a quantized step ran before the simulation was built")
        return self.sim

    def batchnorm_seeds(self) -> dict[str, tuple[Any, Any]]:
        """Per-output (beta, gamma) of the folded BatchNorms: the data-free statistics."""
        return {name: (st.beta, st.gamma) for name, st in self.channel_stats.items()}


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where the C library has one (not musl, not macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system. glibc keeps what a phase freed (a parsed
    model, a session's buffers) mapped for reuse, and protobuf, ONNX Runtime and numpy free
    in pieces it does not return by itself: unreturned, a large model's next phase would start
    from the last one's high-water mark."""
    if _TRIM is not None:
        _TRIM(0)


@dataclass
class Timer:
    """Runs phases, records their wall time in order, and reports progress at both ends."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    progress: Progress | None = None

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.progress is not None:
            self.progress(name, 0.0)
        start = time.perf_counter()
        result = fn()
        release_free_memory()
        self.record(name, time.perf_counter() - start)
        if self.progress is not None:
            self.progress(name, 1.0)
        return result

    def seconds(self, name: str) -> float:
        """Time spent so far in the steps called ``name``."""
        return sum(step["seconds"] for step in self.steps if step["name"] == name)

    def record(self, name: str, seconds: float) -> None:
        self.steps.append({"name": name, "seconds": round(seconds, 4)})
