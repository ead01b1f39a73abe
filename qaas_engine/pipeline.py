"""One pipeline run: prepare (BN folding) -> float steps -> quantizers and ranges -> quantized
steps -> QDQ export. The model, not the report: ``flow`` and ``auto`` measure and report.

Which steps exist, their stage and their data needs come from ``step_registry``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import onnx

from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.data import Dataset
from qaas_engine.errors import SpecError
from qaas_engine.export.encodings import aimet_encodings
from qaas_engine.export.qdq import export_qdq
from qaas_engine.export.runtime_forms import applied_forms
from qaas_engine.export.target_checks import check_export
from qaas_engine.graph.lazy import LazyExecutor, materialized
from qaas_engine.importer import ImportedModel
from qaas_engine.latency_objective import keep_float_where_faster, ort_measure
from qaas_engine.quant.moments import propagate
from qaas_engine.quant.placement import place_quantizers
from qaas_engine.quant.sim import QuantSim
from qaas_engine.rules import CalibrationProbe, apply_rules
from qaas_engine.spec import QuantSpec
from qaas_engine.state import PipelineState, Progress, Timer, no_progress
from qaas_engine.step_registry import STEPS, Data, Stage, learns, missing_data_message
from qaas_engine.targets import KernelChoice, target_rules
from qaas_engine.transforms.bn_fold import fold_batchnorms
from qaas_engine.transforms.cle import ChannelStats
from qaas_engine.transforms.integer_rewrites import needs_rewrite, rewrite_for_integer_kernels
from qaas_engine.version import __version__
from qaas_engine.weights_apart import check_model_apart


@dataclass(frozen=True)
class PipelineData:
    """The datasets steps learn from; the evaluation set is kept apart and only measures."""

    calibration: Dataset | None = None
    training: Dataset | None = None
    validation: Dataset | None = None

    def available(self) -> set[Data]:
        have: set[Data] = set()
        if self.calibration is not None:
            have.add("calibration")
        if self.training is not None:
            have.add("training")
            if self.training.labels is not None:
                have.add("labels")
        return have


def check_needs(pipeline: tuple[str, ...], data: PipelineData) -> None:
    """Refuse before any work when a step lacks the data it cannot do without."""
    message = missing_data_message(pipeline, data.available())
    if message is not None:
        raise SpecError(message)


def build_state(
    imported: ImportedModel,
    spec: QuantSpec,
    calibration: Dataset | None,
    progress: Progress | None,
) -> PipelineState:
    """The model with BatchNorms folded (their statistics kept for data-free steps), constant
    Adds after a Conv folded into its bias and divisions by a constant made products
    (:mod:`qaas_engine.transforms.integer_rewrites`: what ONNX Runtime's integer kernels take).

    A copy when anything will rewrite the graph (a BatchNorm to fold, a pipeline step); else the
    imported model itself, which the report reads as the float model: nothing after this point
    changes a model in place (export and the report's probes build their own), and a second
    copy of a large model would hold its whole size for the rest of the job."""
    model = imported.model
    onnxruntime_cpu = target_rules(spec.target).executed_here
    keep = frozenset(spec.keep_float_nodes) | frozenset(spec.keep_float_ops)
    if (
        spec.pipeline
        or any(node.op_type == "BatchNormalization" for node in model.graph.node)
        or needs_rewrite(model, onnxruntime_cpu=onnxruntime_cpu, keep=keep)
    ):
        model = onnx.ModelProto()
        model.CopyFrom(imported.model)
    folded = fold_batchnorms(model)
    rewrite_for_integer_kernels(model, onnxruntime_cpu=onnxruntime_cpu, keep=keep)
    executor = LazyExecutor(model)  # torch only when a step runs the graph in it
    state = PipelineState(model, executor, spec, calibration, folded, progress or no_progress)
    state.channel_stats = {f.output: ChannelStats(f.beta, f.gamma) for f in folded}
    return state


def run_steps(state: PipelineState, stage: Stage, timer: Timer) -> None:
    for name in state.spec.pipeline:
        step = STEPS[name]
        if step.stage == stage:
            apply = step.function()
            report: dict[str, Any] = timer.run(name, partial(apply, state))
            state.step_reports[name] = report
            if stage == "float":
                state.rebuild_executor()


def build_sim(state: PipelineState, timer: Timer) -> QuantSim:
    """Quantizers placed, weight ranges set, activation ranges from data or BN statistics."""
    spec = state.spec
    placement = place_quantizers(
        state.model,
        quantize_activations=spec.quantize_activations,
        keep_float_nodes=frozenset(spec.keep_float_nodes),
        keep_float_ops=frozenset(spec.keep_float_ops),
        target=spec.target,
    )
    sim = QuantSim(state.executor, placement, spec)
    timer.run("weight_ranges", sim.compute_weight_encodings)
    if spec.quantize_activations and placement.activations:
        if state.calibration is not None:
            timer.run("calibration", lambda: calibrate(state, sim))
        elif state.channel_stats:
            state.data_free = True
            moments = propagate(state.model, state.batchnorm_seeds())
            timer.run("data_free_ranges", lambda: sim.set_ranges_from_moments(moments))
        else:
            raise SpecError(
                "activation quantization needs calibration data (--calibration NPZ): the model "
                "carries no BatchNorm statistics to set ranges without data; or keep "
                "activations in float (--activations float)"
            )
        if target_rules(spec.target).executed_here:
            # a target run elsewhere keeps its documented grids: no rule widens or drops one
            executor = state.executor
            lazy = isinstance(executor, LazyExecutor) and not executor.built
            sim, actions = timer.run("rules", lambda: apply_rules(state, sim))
            if lazy and isinstance(executor, LazyExecutor) and not learns(spec.pipeline):
                # the rules only read gradients from the torch executor; nothing later runs
                # it, and a large model's torch weights would stay for the whole report
                executor.release()
                sim.invalidate()
            state.rules = [action.as_dict() for action in actions]
    state.sim = sim
    return sim


def calibrate(state: PipelineState, sim: QuantSim) -> None:
    """Activation ranges from the calibration data: the float graph run in ONNX Runtime, or,
    when a later step trains the simulation, in the torch executor that step trains, so the
    ranges it starts from are the ones its own arithmetic gives (ORT's differ in the last bit,
    and training amplifies such differences)."""
    data = state.calibration
    if data is None:
        raise RuntimeError("calibrate needs calibration data")
    in_torch = learns(state.spec.pipeline)
    spec = state.spec
    # the rules' probe reads the first samples as this pass runs them (rules.CalibrationProbe)
    recorder = None
    if not (in_torch or spec.strict_bits) and target_rules(spec.target).executed_here:
        recorder = CalibrationProbe(state, sim.placement.activations)
    summary = sim.calibrate(
        state.calibration_arrays,
        state.progress,
        float_model=None if in_torch else state.model,
        batched=not data.one_at_a_time,
        on_values=recorder,
    )
    state.calibration_outputs = summary.float_outputs
    if sim.engines.get("calibration") == "onnxruntime":
        state.calibration_probe = recorder  # a torch fallback recorded a failed pass's part
    if in_torch:
        sim.engines["calibration"] = "torch (a learning step trains the torch simulation)"


def run_pipeline(
    imported: ImportedModel,
    spec: QuantSpec,
    data: PipelineData,
    timer: Timer,
    profile: EnergyProfile,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[PipelineState, QuantSim, onnx.ModelProto]:
    """Prepare, float steps, calibration, quantized steps and export: the model, not the report."""
    check_needs(spec.pipeline, data)
    state = timer.run("prepare", lambda: build_state(imported, spec, data.calibration, progress))
    if should_stop is not None:
        state.should_stop = should_stop
    state.training, state.validation = data.training, data.validation
    state.energy_profile = profile
    run_steps(state, "float", timer)
    if any(STEPS[name].stage == "quantized" for name in spec.pipeline):
        # Quantized steps (bias correction, AdaRound...) run the graph in torch and rewrite
        # weights in place; the float reference is the model as it stands here.
        materialized(state.executor)
        state.float_weights = dict(state.executor.weights)
    sim = build_sim(state, timer)
    run_steps(state, "quantized", timer)
    kernels = sim.kernels
    rules = target_rules(spec.target)
    if spec.objective == "latency" and rules.executed_here and not spec.strict_bits:
        sim, kernels = timer.run("latency_objective", lambda: latency_float(state, sim, kernels))
    if not rules.executed_here and sim.activation_encodings:
        # learning steps train each quantizer's range on its own: the target's tied and fixed
        # grids are set again over what they learned, and the biases follow their inputs
        sim.apply_target_grids()
        sim.derive_bias_encodings()
    qdq = timer.run(
        "export",
        lambda: export_qdq(
            state.model,
            sim,
            unsigned_weights=not kernels.signed_weights,
            unsigned_activations=rules.unsigned_activation_container,
            quantize_scalar_operands=rules.executed_here,
            runtime_forms=rules.runtime_forms,
        ),
    )
    check_model_apart(qdq)  # the checker without a serialized copy of the weights
    if not rules.executed_here:
        timer.run("target_check", lambda: check_against_target(kernels, sim, qdq))
        kernels = replace(kernels, constraints_checked=rules.constraints)
    produced = {name for node in qdq.graph.node for name in node.output}
    read_scaled = tuple(name for name in sim.placement.scaled if name not in produced)
    if read_scaled:
        kernels = replace(kernels, scaled_reads=read_scaled)
    if rules.runtime_forms:
        kernels = replace(kernels, runtime_forms=applied_forms(qdq))
    state.kernels = kernels
    return state, sim, qdq


def latency_float(
    state: PipelineState, sim: QuantSim, kernels: KernelChoice
) -> tuple[QuantSim, KernelChoice]:
    """``--objective latency``: nodes measured faster float are kept float (a rule line each)."""
    if not sim.activation_encodings:
        return sim, replace(kernels, objective={"note": "activations float: nothing to time"})
    sim, actions, choice = keep_float_where_faster(state, sim, ort_measure(state, sim, kernels))
    state.sim = sim
    state.rules += [action.as_dict() for action in actions]
    return sim, replace(kernels, objective=choice.describe())


def check_against_target(kernels: KernelChoice, sim: QuantSim, qdq: onnx.ModelProto) -> None:
    """Refuse an export that breaks a documented constraint of a target we cannot run here."""
    violations = check_export(kernels.target, qdq, aimet_encodings(sim, __version__))
    if violations:
        shown = "; ".join(str(v) for v in violations[:5])
        more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
        raise SpecError(
            f"the export breaks {len(violations)} documented constraint(s) of target "
            f"{kernels.target}: {shown}{more}; --keep-float the named nodes or pick another target"
        )
