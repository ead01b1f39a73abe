"""The quantization spec: data that validates itself and round-trips through JSON.

The CLI builds one from flags, the service from a job's JSON; both hand it to ``quantize``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from qaas_engine.step_registry import AUTO, check_pipeline
from qaas_engine.targets import DEFAULT_TARGET, check_target, check_target_grids

SPEC_VERSION = 1

# Caps on the lists a spec holds. A spec is stored with its job and returned by every job
# listing, and each pipeline step is run: without caps one request could store megabytes or
# queue thousands of steps. Far above what a real model needs.
MAX_PIPELINE_STEPS = 16
MAX_KEEP_FLOAT_NODES = 1000
MAX_KEEP_FLOAT_OPS = 256
MAX_NAME_CHARS = 256  # one node or op name
MAX_STEP_NAME_CHARS = 64
MAX_OUTPUT_METRICS = 256
MAX_FIXED_INPUTS = 64

# How auto judges one output (``--metric OUTPUT=top1|sqnr|cosine``): top-1 (against the labels
# for the first output, else agreement with the float model), the worst per-channel SQNR, or
# the mean cosine similarity with the float output.
OutputMetric = Literal["top1", "sqnr", "cosine"]
OUTPUT_METRICS: tuple[str, ...] = ("top1", "sqnr", "cosine")

NodeName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
StepName = Annotated[str, StringConstraints(max_length=MAX_STEP_NAME_CHARS)]


# The report measures on the first DEFAULT_EVALUATION_SAMPLES evaluation samples, or, without
# evaluation data, on CALIBRATION_CHECK_SAMPLES of the calibration data (which set the ranges: a
# sanity figure), and on no more of them than CALIBRATION_CHECK_MACS of the model's
# multiply-accumulates buy (at least CALIBRATION_CHECK_MIN_SAMPLES): each sample runs the
# exported graph twice (as simulated and as deployed), so on a large detector the sanity figure
# alone would cost more than the whole of ONNX Runtime's quantizer. A count, not seconds: the
# same model and data give the same figure on any machine. max_evaluation_samples (a count, or
# "all") overrides all of these.
DEFAULT_EVALUATION_SAMPLES = 1000
CALIBRATION_CHECK_SAMPLES = 64
CALIBRATION_CHECK_MACS = 1e10
CALIBRATION_CHECK_MIN_SAMPLES = 8
# The simulation (the exported graph unfused, ORT's integer kernels emulated in float ops) costs
# 5-10x the deployed graph a sample, and no verdict reads it: it checks that the simulation
# computes what ORT computes. It runs on the first SIMULATION_CHECK_SAMPLES of the samples
# measured; max_simulation_samples (a count, or "all") overrides it.
SIMULATION_CHECK_SAMPLES = 16
SampleCount = Annotated[int, Field(ge=1)]


class QuantSpec(BaseModel):
    """How to quantize a model. Unknown fields are refused so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = SPEC_VERSION
    weight_bits: int = Field(8, ge=2, le=16)
    weight_granularity: Literal["per-tensor", "per-channel"] = "per-channel"
    weight_symmetric: bool = True
    activation_bits: int | None = Field(8, ge=2, le=16)  # None keeps activations in float
    activation_symmetric: bool = False
    # auto: min/max ranges, which the range_method rule (qaas_engine.rules) replaces by a
    # histogram estimator's where that measures better on calibration data
    calibration_method: Literal["auto", "minmax", "percentile", "mse"] = "auto"
    percentile: float = Field(99.99, gt=50.0, le=100.0)
    keep_float_nodes: tuple[NodeName, ...] = Field((), max_length=MAX_KEEP_FLOAT_NODES)
    keep_float_ops: tuple[NodeName, ...] = Field((), max_length=MAX_KEEP_FLOAT_OPS)
    # True turns off the rules that change grids after calibration (qaas_engine.rules)
    strict_bits: bool = False
    # latency: keep float the nodes whose int8 form measured slower in ONNX Runtime on this
    # machine (qaas_engine.latency_objective); energy: every node the rules allow is int8, and
    # auto picks the cheapest configuration by the energy model
    objective: Literal["energy", "latency"] = "energy"
    # output SQNR (dB, against float, on calibration samples) below which the rules give the
    # noisiest quantizers 16-bit grids
    min_sqnr_db: float = Field(30.0, ge=0.0, le=200.0)
    # the cosine an output judged by cosine (output_metrics) must reach
    min_cosine: float = Field(0.99, gt=0.0, le=1.0)
    # output name, or its index as a string ("0") -> the metric that decides auto's verdict for
    # it; outputs not named get the default (top1 for the first when labels or a top-1 target
    # are given, sqnr otherwise)
    output_metrics: dict[NodeName, OutputMetric] = Field(
        default_factory=dict, max_length=MAX_OUTPUT_METRICS
    )
    # input name -> the value it always has where the model is deployed (``--fix-input
    # sr=16000``): import computes with it as a constant, so an If on it takes its branch; the
    # exported model keeps the input, optional, and does not read it
    fixed_inputs: dict[NodeName, StrictInt | FiniteFloat] = Field(
        default_factory=dict, max_length=MAX_FIXED_INPUTS
    )
    pipeline: tuple[StepName, ...] = Field((), max_length=MAX_PIPELINE_STEPS)
    batch_size: int = Field(32, ge=1, le=4096)
    max_calibration_samples: int | None = Field(None, ge=1)
    # the integer kernels the export is laid out for (qaas_engine.targets); qnn-htp and
    # tensorrt also fix the activations' symmetry (asymmetric and symmetric) and the bits they take
    target: str = Field(DEFAULT_TARGET, max_length=64)
    # the report's accuracy and fidelity: a bounded sample by default (None), all on request
    max_evaluation_samples: SampleCount | Literal["all"] | None = None
    # the simulation-vs-runtime check: a bounded sample of those by default, all on request
    max_simulation_samples: SampleCount | Literal["all"] | None = None
    adaround_iterations: int = Field(1000, ge=10, le=100_000)
    qat_epochs: int = Field(15, ge=1, le=1000)
    qat_learn_ranges: bool = True
    qat_weight_lr: float = Field(1e-2, gt=0, le=1.0)  # grid steps per update
    qat_range_lr: float = Field(1e-3, gt=0, le=1.0)  # relative change of a range per update
    bayesian_bits_epochs: int = Field(8, ge=1, le=1000)
    bayesian_bits_finetune_epochs: int = Field(4, ge=0, le=1000)
    bayesian_bits_strength: float = Field(0.5, ge=0, le=100.0)  # weight of the relative cost
    bayesian_bits_cost: Literal["energy", "bops"] = "energy"
    bayesian_bits_prune: bool = True
    # top-1 points (or points of top-1 agreement with the float model when the validation data
    # has no labels): the target of pipeline auto, and an early stop for QAT
    max_accuracy_drop: float | None = Field(None, ge=0, le=100)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy refuses negative seeds, torch huge ones

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SPEC_VERSION:
            raise ValueError(
                f"spec version {value} is not supported (this engine reads {SPEC_VERSION})"
            )
        return value

    @field_validator("target")
    @classmethod
    def _target_known(cls, target: str) -> str:
        return check_target(target)

    @model_validator(mode="after")
    def _grids_the_target_runs(self) -> QuantSpec:
        # qnn-htp and tensorrt run only some grids; their activation symmetry is the target's
        check_target_grids(
            self.target,
            weight_bits=self.weight_bits,
            activation_bits=self.activation_bits,
            weight_symmetric=self.weight_symmetric,
            pipeline=self.pipeline,
        )
        return self

    @field_validator("pipeline")
    @classmethod
    def _pipeline_valid(cls, pipeline: tuple[str, ...]) -> tuple[str, ...]:
        check_pipeline(pipeline)  # known names, each once, float steps before quantized ones
        return pipeline

    @property
    def is_auto(self) -> bool:
        return self.pipeline == (AUTO,)

    @property
    def range_estimator(self) -> Literal["minmax", "percentile", "mse"]:
        """The estimator calibration sets activation ranges with (``auto`` starts at min/max)."""
        return "minmax" if self.calibration_method == "auto" else self.calibration_method

    def evaluation_limit(
        self, *, on_calibration_data: bool, macs_per_sample: int = 0
    ) -> int | None:
        """Samples the report measures on (None: all of them); ``macs_per_sample`` (0: not
        known) bounds the default check on calibration data by work."""
        if self.max_evaluation_samples == "all":
            return None
        if self.max_evaluation_samples is not None:
            return self.max_evaluation_samples
        if not on_calibration_data:
            return DEFAULT_EVALUATION_SAMPLES
        return calibration_check_samples(macs_per_sample)

    def simulation_limit(self) -> int | None:
        """Samples the simulation is checked against ONNX Runtime on (None: all measured)."""
        if self.max_simulation_samples == "all":
            return None
        if self.max_simulation_samples is not None:
            return self.max_simulation_samples
        return SIMULATION_CHECK_SAMPLES

    @property
    def quantize_activations(self) -> bool:
        return self.activation_bits is not None


def calibration_check_samples(macs_per_sample: int) -> int:
    """The default count of calibration samples the report measures on (see
    ``CALIBRATION_CHECK_MACS``)."""
    if macs_per_sample <= 0:
        return CALIBRATION_CHECK_SAMPLES
    by_work = int(CALIBRATION_CHECK_MACS // macs_per_sample)
    return max(CALIBRATION_CHECK_MIN_SAMPLES, min(CALIBRATION_CHECK_SAMPLES, by_work))


def is_op_type(name: str) -> bool:
    """Whether ``--keep-float NAME`` means an op type rather than a node name.

    Any op of the default ONNX domain counts, not only those the engine computes in torch: an
    op with no torch kernel (GRU, say) is exactly the one a user wants kept float.
    """
    import onnx.defs

    return onnx.defs.has(name)


def parse_metric(text: str) -> tuple[str, str]:
    """``OUTPUT=top1|sqnr|cosine`` -> (output, metric). Raises ValueError naming the forms."""
    output, sep, metric = text.rpartition("=")
    output, metric = output.strip(), metric.strip().lower()
    if not sep or not output or metric not in OUTPUT_METRICS:
        raise ValueError(
            f"'{text}' is not OUTPUT=METRIC; OUTPUT is an output name or index, METRIC one of "
            + ", ".join(OUTPUT_METRICS)
        )
    return output, metric


def parse_fixed_input(text: str) -> tuple[str, int | float]:
    """``NAME=VALUE`` -> (name, number). Raises ValueError naming the form."""
    name, sep, value = text.rpartition("=")
    name, value = name.strip(), value.strip()
    try:
        number: int | float = int(value) if value.lstrip("+-").isdigit() else float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name or number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"'{text}' is not NAME=VALUE with VALUE a finite number (sr=16000)")
    return name, number


def parse_bits(text: str, *, allow_float: bool) -> int | None:
    """``int8`` -> 8; ``float`` -> None where allowed. Raises ValueError with the accepted forms."""
    value = text.strip().lower()
    if allow_float and value in ("float", "fp32", "none"):
        return None
    if value.startswith("int") and value[3:].isdigit():
        bits = int(value[3:])
        if 2 <= bits <= 16:
            return bits
    accepted = "int2..int16" + (" or float" if allow_float else "")
    raise ValueError(f"'{text}' is not a bit-width; use {accepted}")
