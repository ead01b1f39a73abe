"""The engine's one verb: ``quantize(model, spec, data) -> QuantizationResult``.

Fixed phases (prepare, calibrate, export, evaluate) around the user's pipeline steps. A step is
registered by name in ``STEPS`` with its stage: ``float`` steps change the float model before
quantizers exist (equalization), ``quantized`` steps work on the calibrated simulation
(bias correction, AdaRound, QAT). The CLI and the worker are the two callers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import onnx
import torch

from qaas_engine.data import Dataset
from qaas_engine.errors import SpecError
from qaas_engine.graph.executor import GraphExecutor
from qaas_engine.importer import ImportedModel
from qaas_engine.quant.moments import propagate
from qaas_engine.quant.placement import place_quantizers
from qaas_engine.quant.sim import QuantSim
from qaas_engine.reporting.energy import EnergyProfile
from qaas_engine.spec import QuantSpec
from qaas_engine.transforms.bn_fold import FoldedBatchNorm, fold_batchnorms
from qaas_engine.transforms.cle import ChannelStats

Progress = Callable[[str, float], None]
Stage = Literal["float", "quantized"]


@dataclass
class PipelineState:
    """What steps read and change. Steps never open files: data arrives as ``Dataset``."""

    model: onnx.ModelProto
    executor: GraphExecutor
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

    def rebuild_executor(self) -> None:
        """After a float step rewrote the graph or its initializers."""
        self.executor = GraphExecutor(self.model)

    def calibration_feeds(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.calibration is None:
            return iter(())
        return (
            to_torch(feeds)
            for feeds, _ in self.calibration.batches(
                self.spec.batch_size, self.spec.max_calibration_samples
            )
        )


@dataclass(frozen=True)
class Step:
    name: str
    stage: Stage
    apply: Callable[[PipelineState], dict[str, Any]]
    summary: str


STEPS: dict[str, Step] = {}


def register_step(step: Step) -> Step:
    STEPS[step.name] = step
    return step


def to_torch(feeds: dict) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array) for name, array in feeds.items()}


def _bn_fold_report(state: PipelineState) -> dict[str, Any]:
    return {
        "folded": [{"layer": f.layer, "batchnorm": f.batchnorm} for f in state.folded_batchnorms],
    }


register_step(
    Step(
        "bn_fold",
        "float",
        _bn_fold_report,
        "BatchNormalization folded into the preceding Conv/Gemm (always done while preparing; "
        "listed here as a step so pipelines can name it)",
    )
)


@dataclass
class Timer:
    steps: list[dict[str, Any]] = field(default_factory=list)

    progress: Progress | None = None

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.progress is not None:
            self.progress(name, 0.0)
        start = time.perf_counter()
        result = fn()
        self.steps.append({"name": name, "seconds": round(time.perf_counter() - start, 4)})
        if self.progress is not None:
            self.progress(name, 1.0)
        return result


def check_pipeline_order(pipeline: tuple[str, ...]) -> None:
    seen_quantized = None
    if pipeline == ("auto",):
        return
    for name in pipeline:
        stage = STEPS[name].stage
        if stage == "quantized":
            seen_quantized = name
        elif seen_quantized:
            raise SpecError(
                f"pipeline step '{name}' changes the float model and must come before "
                f"'{seen_quantized}', which works on the quantized model"
            )


def prepare(imported: ImportedModel) -> tuple[onnx.ModelProto, list[FoldedBatchNorm]]:
    model = onnx.ModelProto()
    model.CopyFrom(imported.model)
    folded = fold_batchnorms(model)
    return model, folded


def build_state(
    imported: ImportedModel,
    spec: QuantSpec,
    calibration: Dataset | None,
    progress: Progress | None,
) -> PipelineState:
    model, folded = prepare(imported)
    executor = GraphExecutor(model)
    state = PipelineState(model, executor, spec, calibration, folded, progress or _no_progress)
    state.channel_stats = {f.output: ChannelStats(f.beta, f.gamma) for f in folded}
    return state


def run_steps(state: PipelineState, stage: Stage, timer: Timer) -> None:
    for name in state.spec.pipeline:
        step = STEPS[name]
        if step.stage == stage:
            state.step_reports[name] = timer.run(name, lambda s=step: s.apply(state))
            if stage == "float":
                state.rebuild_executor()


def build_sim(state: PipelineState, timer: Timer) -> QuantSim:
    spec = state.spec
    placement = place_quantizers(
        state.model,
        quantize_activations=spec.quantize_activations,
        keep_float_nodes=frozenset(spec.keep_float_nodes),
        keep_float_ops=frozenset(spec.keep_float_ops),
    )
    sim = QuantSim(state.executor, placement, spec)
    timer.run("weight_ranges", sim.compute_weight_encodings)
    if spec.quantize_activations and placement.activations:
        if state.calibration is not None:
            timer.run("calibration", lambda: sim.calibrate(state.calibration_feeds, state.progress))
        elif state.channel_stats:
            state.data_free = True
            moments = propagate(state.model, seeds(state))
            timer.run("data_free_ranges", lambda: sim.set_ranges_from_moments(moments))
        else:
            raise SpecError(
                "activation quantization needs calibration data (--calibration NPZ): the model "
                "carries no BatchNorm statistics to set ranges without data; or keep "
                "activations in float (--activations float)"
            )
    state.sim = sim
    return sim


def seeds(state: PipelineState) -> dict:
    return {name: (st.beta, st.gamma) for name, st in state.channel_stats.items()}


def _no_progress(phase: str, fraction: float) -> None:
    return None


import qaas_engine.steps  # noqa: E402,F401  (registers the pipeline steps)
