"""The pipeline steps by name: what each one needs, and where its code lives.

A table of declarations, not of code: the spec validates a pipeline against it (names, order)
without importing any algorithm, and the CLI, the service and ``auto`` ask it which data a
pipeline needs instead of keeping lists of their own. Each entry points at its implementation
as ``"module:function"`` (a function of ``PipelineState`` returning the step's report section),
imported only when the step runs. Adding a step is one module plus one ``register`` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

Stage = Literal["float", "quantized"]
# The data a step can learn from. "labels" means labelled training (or validation) data.
Data = Literal["calibration", "training", "labels"]

AUTO = "auto"  # the pipeline that picks its own steps (``qaas_engine.auto``)

# How each kind of data is given, for messages that tell a person what to add.
DATA_FLAGS: dict[str, str] = {
    "calibration": "--calibration NPZ",
    "training": "--training NPZ",
    "labels": "--training NPZ with labels",
}


@dataclass(frozen=True)
class StepInfo:
    """One step: ``float`` steps rewrite the float model before quantizers exist, ``quantized``
    steps work on the calibrated simulation. ``needs`` is data without which the step cannot
    run; ``uses`` is data it takes when given (and does without otherwise)."""

    name: str
    stage: Stage
    run: str  # "package.module:function"
    summary: str
    needs: frozenset[Data] = frozenset()
    uses: frozenset[Data] = frozenset()
    prefers_gpu: bool = False  # learns by gradient descent: worth a CUDA device when present

    def function(self) -> Callable[[Any], dict[str, Any]]:
        """The implementation, imported on first use."""
        module, _, attribute = self.run.partition(":")
        return getattr(import_module(module), attribute)


STEPS: dict[str, StepInfo] = {}


def register(step: StepInfo) -> StepInfo:
    if ":" not in step.run:
        raise ValueError(f"step {step.name}: run must be 'module:function', got {step.run!r}")
    STEPS[step.name] = step
    return step


def unregister(name: str) -> None:
    STEPS.pop(name, None)


def check_pipeline(pipeline: tuple[str, ...]) -> None:
    """Raise ValueError naming the fault: an unknown or repeated step, ``auto`` given with
    others, or a float step after a quantized one."""
    if AUTO in pipeline:
        if pipeline != (AUTO,):
            others = ", ".join(step for step in pipeline if step != AUTO)
            raise ValueError(
                f"pipeline 'auto' chooses the steps itself: give it alone, not with {others}"
            )
        return
    unknown = [step for step in pipeline if step not in STEPS]
    if unknown:
        raise ValueError(
            f"unknown pipeline step(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(STEPS))}, or auto alone"
        )
    # Every step is idempotent or converges on its own (cle iterates to a fixed point, qat has
    # qat_epochs), and reports are kept by step name: a repeat only costs time.
    repeated = sorted({step for step in pipeline if pipeline.count(step) > 1})
    if repeated:
        raise ValueError(
            f"pipeline step(s) {', '.join(repeated)} given more than once; each step runs at "
            "most once (raise qat_epochs or adaround_iterations for a longer run)"
        )
    quantized = None
    for name in pipeline:
        if STEPS[name].stage == "quantized":
            quantized = name
        elif quantized is not None:
            raise ValueError(
                f"pipeline step '{name}' changes the float model and must come before "
                f"'{quantized}', which works on the quantized model"
            )


def steps_needing(pipeline: Iterable[str], data: Data) -> list[str]:
    """The steps of ``pipeline`` that cannot run without ``data``, in pipeline order."""
    return [name for name in pipeline if name in STEPS and data in STEPS[name].needs]


def steps_taking(data: Data) -> list[str]:
    """Every registered step that needs or uses ``data``."""
    return sorted(name for name, s in STEPS.items() if data in s.needs or data in s.uses)


def missing_data(pipeline: Iterable[str], available: Iterable[Data]) -> list[tuple[str, Data]]:
    """``(step, data)`` for each thing a step needs that is not available, in pipeline order."""
    have = set(available)
    return [
        (name, need)
        for name in pipeline
        if name in STEPS
        for need in sorted(STEPS[name].needs)
        if need not in have
    ]


def learns(pipeline: Iterable[str]) -> bool:
    """Whether a step of ``pipeline`` trains by gradient descent (in the torch executor)."""
    return any(STEPS[name].prefers_gpu for name in pipeline if name in STEPS)


def missing_data_message(pipeline: Iterable[str], available: Iterable[Data]) -> str | None:
    """One line naming the first step that lacks its data and the flag that gives it."""
    missing = missing_data(pipeline, available)
    if not missing:
        return None
    step, data = missing[0]
    return f"the {step} step needs {data} data: give {DATA_FLAGS[data]}"


def _step(name: str, stage: Stage, run: str, summary: str, *, needs=(), uses=(), gpu=False) -> None:
    register(StepInfo(name, stage, run, summary, frozenset(needs), frozenset(uses), gpu))


_step(
    "bn_fold",
    "float",
    "qaas_engine.steps.float_steps:bn_fold",
    "BatchNormalization folded into the preceding Conv/Gemm (always done while preparing; "
    "listed here as a step so pipelines can name it)",
)
_step(
    "cle",
    "float",
    "qaas_engine.steps.float_steps:cle",
    "cross-layer equalization of Conv/Gemm -> (P)ReLU -> Conv/Gemm chains, depthwise included",
)
_step(
    "bias_absorption",
    "float",
    "qaas_engine.steps.float_steps:bias_absorption",
    "high-bias absorption into the next layer (after cle)",
    uses=("calibration",),
)
_step(
    "bias_correction",
    "quantized",
    "qaas_engine.steps.bias_correction:bias_correction",
    "empirical bias correction with calibration data; analytical from BN statistics without",
    uses=("calibration",),
)
_step(
    "adaround",
    "quantized",
    "qaas_engine.steps.adaround:adaround_step",
    "learned rounding of weights, layer by layer, from unlabelled calibration data",
    needs=("calibration",),
    gpu=True,
)
_step(
    "qat",
    "quantized",
    "qaas_engine.steps.training:qat",
    "quantization-aware training with learned ranges, from labels or by distillation",
    needs=("training",),
    uses=("labels",),
    gpu=True,
)
_step(
    "bayesian_bits",
    "quantized",
    "qaas_engine.steps.training:bayesian_bits",
    "mixed precision: learned bit-width per weight and activation (2/4/8/16) and pruned "
    "channels, weighted by the energy model; from labels or by distillation",
    needs=("training",),
    uses=("labels",),
    gpu=True,
)
