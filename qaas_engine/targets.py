"""Deployment targets: which integer kernels the exported model is laid out for.

ONNX Runtime's CPU int8 kernels take u8 activations with s8 weights (u8s8) or with u8 weights
(u8u8). Where the CPU has an int8 dot product (x86 AVX-512 VNNI, AVX-VNNI or AMX; ARM's
dot-product extension) u8s8 accumulates in 32 bits: exact, and the fast path. Without one (AVX2),
u8s8 sums pairs of u8*s8 products in int16 and saturates unless every weight is within
[-64, 64] (2 * 255 * 64 fits int16): ``avx2-s7`` puts the weights of GEMM kernels (Conv, Gemm,
MatMul) on 7-bit grids, which run the fast u8s8 kernels exactly, at a 7-bit grid's accuracy
(depthwise convs keep 8 bits: ORT's depthwise kernel sums in int32); ``avx2`` keeps 8-bit grids
and stores them as uint8 (zero point + 128), which changes no value and runs the exact but slower
u8u8 kernels. ``onnxruntime-cpu`` picks by the CPU that runs the job (``avx2-s7`` where it has no
int8 dot product, ``avx2`` under ``--strict-bits``, which keeps the grids asked for);
``:vnni``, ``:avx2`` or ``:avx2-s7`` forces a mode for a fleet whose CPUs differ from the
worker's.

``qnn-htp`` (Qualcomm's Hexagon NPU through QNN) and ``tensorrt`` (NVIDIA) cannot run here: their
grids and quantizer layout follow the targets' documented rules (:class:`TargetRules`), the
export is checked against them (``export.target_checks``) and the report says it was not run.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TARGETS = (
    "onnxruntime-cpu",
    "onnxruntime-cpu:vnni",
    "onnxruntime-cpu:avx2",
    "onnxruntime-cpu:avx2-s7",
    "qnn-htp",
    "tensorrt",
)
DEFAULT_TARGET = "onnxruntime-cpu"
PLANNED: tuple[str, ...] = ()  # named targets not built yet: refused with that reason

# CPU flags (Linux /proc/cpuinfo) of an int8 dot product ONNX Runtime's u8s8 kernels use
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")

# ONNX Runtime's u8s8 GEMM without an int8 dot product sums two u8*s8 products in int16: exact
# while every weight integer is within this bound (255 * 64 * 2 < 2**15)
S8_PAIR_SAFE_BOUND = 64
SEVEN_BIT_WEIGHTS = 7
GEMM_OPS = frozenset({"Conv", "Gemm", "MatMul"})  # weighted ops ORT runs on its int8 GEMM

KernelMode = Literal["vnni", "avx2", "avx2-s7", "qnn-htp", "tensorrt"]
Layout = Literal["producer-outputs", "consumer-inputs"]


@dataclass(frozen=True)
class TargetRules:
    """What a target's kernels take: the grids, where quantizers stand, which ops fuse.

    ``onnxruntime-cpu`` leaves the grids to the spec and places a quantizer on every computed
    output (ONNX Runtime fuses DQ -> op -> Q groups); the other two state their vendor's rules.
    """

    name: str
    executed_here: bool = True
    # None: the spec's activation_symmetric decides; True/False: the target fixes it
    activation_symmetric: bool | None = None
    activation_signed: bool = False  # symmetric grids signed even for non-negative tensors
    activation_bits: tuple[int, ...] | None = None  # None: any the spec allows
    weight_bits: tuple[int, ...] | None = None
    # ops whose weights the target quantizes per tensor whatever the spec's granularity
    per_tensor_weight_ops: frozenset[str] = frozenset()
    layout: Layout = "producer-outputs"
    # (producer, consumer) pairs run as one kernel: no quantizer between; None: the generic rule
    fused_pairs: frozenset[tuple[str, str]] | None = None
    tied_ops: frozenset[str] = frozenset()  # inputs and output on one grid
    fixed_ranges: tuple[tuple[str, float, float], ...] = ()  # op, low, high of its output grid
    bias: Literal["int32", "int32-saturating", "float"] = "int32"
    unsigned_activation_container: bool = True  # signed 8-bit activation grids stored as uint8
    constraints: tuple[str, ...] = ()  # what target_checks verifies, in words, for the report
    # no 16-bit integer kernel: a group on a 16-bit grid runs float between its Q/DQ, so each
    # 16-bit activation is weighed against the float work it causes (rules.sensitive_tensors)
    sixteen_bit_runs_float: bool = False
    # a Div or Mul by a positive constant scalar puts its output on its input's grid scaled by
    # the constant (the same integers, so exact): the export drops the op and its Q and reads
    # the input's integers with a DequantizeLinear of the scaled grid (quant.placement.scaled)
    scalings_on_grid: bool = False
    # float forms ORT runs faster, with the same values (export.runtime_forms): a PRelu's slope
    # tiled along the width, a pooled head's Reshape read channels-last
    runtime_forms: bool = False


# Qualcomm HTP: AIMET's htp_quantsim_config_v73/v75.json and QNN's HTP quantization rules.
QNN_HTP = TargetRules(
    name="qnn-htp",
    executed_here=False,
    activation_symmetric=False,
    activation_bits=(8, 16),
    weight_bits=(4, 8, 16),
    per_tensor_weight_ops=frozenset({"Gemm", "MatMul"}),
    fused_pairs=frozenset(
        {
            ("Conv", "Relu"),
            ("Conv", "Clip"),
            ("Conv", "PRelu"),
            ("Conv", "HardSwish"),
            ("ConvTranspose", "Relu"),
            ("Gemm", "Relu"),
            ("Add", "Relu"),
        }
    ),
    tied_ops=frozenset({"Concat"}),
    fixed_ranges=(("Sigmoid", 0.0, 1.0), ("Softmax", 0.0, 1.0)),
    bias="int32-saturating",
    constraints=(
        "htp.weight_grid: weights symmetric signed (zero point 0), int4, int8 or int16",
        "htp.weight_per_channel: per-channel weights only on the output channel of Conv (axis 0)"
        " and ConvTranspose (axis 1); Gemm and MatMul weights per tensor",
        "htp.activation_grid: activations asymmetric unsigned, uint8 or uint16",
        "htp.kernel: each weighted op an HTP kernel: A8W8, A8W4, A16W8, A16W4 or A16W16",
        "htp.bias_int32: a quantized bias int32, symmetric, at scale s_input * s_weight (a "
        "float one is the converter's to quantize so)",
        "htp.no_output_quantizer: data-movement ops (Reshape, Transpose, MaxPool, Pad, Slice, "
        "Split, Squeeze, Tile, Gather, Expand, ReduceMax/Min, Dropout, Upsample) keep their "
        "input's encoding",
        "htp.concat_shared: a Concat's inputs and output on one encoding",
        "htp.supergroup: no quantizer inside Conv+Relu/Clip/PRelu/HardSwish, ConvTranspose+Relu,"
        " Gemm+Relu, Add+Relu",
        "htp.fixed_range: Sigmoid and Softmax outputs on the grid of [0, 1]",
        "htp.model_input: float graph inputs quantized",
    ),
)

# NVIDIA TensorRT explicit quantization (Q/DQ): symmetric INT8 only, zero points 0.
TENSORRT = TargetRules(
    name="tensorrt",
    executed_here=False,
    activation_symmetric=True,
    activation_signed=True,
    activation_bits=(8,),
    weight_bits=(8,),
    layout="consumer-inputs",
    bias="float",
    unsigned_activation_container=False,
    constraints=(
        "trt.int8: every QuantizeLinear/DequantizeLinear INT8, in the default ONNX domain",
        "trt.zero_point: every zero point 0 (symmetric quantization)",
        "trt.activation_per_tensor: activations quantized per tensor",
        "trt.weight_axis: per-channel weights along the output channel (Conv 0, ConvTranspose 1,"
        " Gemm by transB, MatMul the last axis)",
        "trt.bias_float: biases float (TensorRT quantizes them itself)",
        "trt.weighted_inputs: a Conv/ConvTranspose/Gemm/MatMul with INT8 weights has its "
        "activation input quantized",
        "trt.residual_add: an Add fed by a Conv/Gemm has its other (residual) input quantized",
        "trt.no_qdq_before_activation: no Q/DQ between a Conv/Gemm/MatMul and its activation",
        "trt.opset: opset 13 or later (per-channel Q/DQ)",
    ),
)

ONNXRUNTIME_CPU = TargetRules(
    name="onnxruntime-cpu", sixteen_bit_runs_float=True, scalings_on_grid=True, runtime_forms=True
)
_RULES = {"qnn-htp": QNN_HTP, "tensorrt": TENSORRT}


def target_rules(target: str) -> TargetRules:
    """The rules of ``target`` (every ``onnxruntime-cpu`` mode shares one set)."""
    return _RULES.get(target, ONNXRUNTIME_CPU)


@dataclass(frozen=True)
class KernelChoice:
    """What the export is laid out for, and why: the report prints it."""

    target: str
    mode: KernelMode
    cpu_features: tuple[str, ...]  # the dot-product flags this machine has
    reason: str
    # the documented constraints the export was checked against (targets not run here)
    constraints_checked: tuple[str, ...] = field(default=())
    # what ``--objective latency`` measured and kept float (latency_objective.LatencyChoice)
    objective: dict[str, object] | None = None
    # Div/Mul outputs exported as a DequantizeLinear of their input's integers on a scaled grid
    scaled_reads: tuple[str, ...] = ()
    # float forms ORT runs faster, same values (export.runtime_forms.applied_forms): kind -> names
    runtime_forms: dict[str, list[str]] = field(default_factory=dict)

    @property
    def signed_weights(self) -> bool:
        """s8 weights (u8s8 kernels, and every target that is not ONNX Runtime's CPU) rather
        than the u8 container (u8u8 kernels)."""
        return self.mode != "avx2"

    @property
    def saturates_here(self) -> bool:
        """Whether ONNX Runtime on this CPU computes the export's 8-bit int8 weights wrongly:
        signed weights for GEMM kernels (VNNI forced, or a target not run here) on a CPU
        without an int8 dot product; measurements then run ``export.unsigned_copy``."""
        return self.signed_weights and self.mode != "avx2-s7" and not self.cpu_features

    def weight_bits(self, asked: int, op_type: str, *, depthwise: bool) -> int:
        """The grid a weight gets: ``avx2-s7`` narrows the 8-bit weights of GEMM kernels to 7
        bits, the widest that ORT's u8s8 kernels sum exactly without an int8 dot product."""
        return SEVEN_BIT_WEIGHTS if asked == 8 and self._int16_pairs(op_type, depthwise) else asked

    def saturates(self, bits: int, op_type: str, *, depthwise: bool) -> bool:
        """Whether a weight of ``bits`` stored int8 would saturate this mode's GEMM kernels
        (``avx2-s7``: wider than 7 bits); the export stores it as uint8 instead."""
        return SEVEN_BIT_WEIGHTS < bits <= 8 and self._int16_pairs(op_type, depthwise)

    def _int16_pairs(self, op_type: str, depthwise: bool) -> bool:
        """``avx2-s7``'s kernels for this op add pairs of u8*s8 products in int16 (a GEMM;
        ORT's depthwise kernel sums in int32)."""
        return self.mode == "avx2-s7" and op_type in GEMM_OPS and not depthwise

    def describe(self) -> dict[str, object]:
        if self.mode in ("qnn-htp", "tensorrt"):
            return {
                "target": self.target,
                "kernel_mode": self.mode,
                "weights": "signed symmetric (zero point 0), the spec's bit-width",
                "executed": False,
                "validation": "validated against the target's documented constraints; NOT "
                "executed (the target's runtime is not available here)",
                "constraints_checked": list(self.constraints_checked),
                "figures_from": "ONNX Runtime (CPU) running the exported QDQ model, not the target",
                "reason": self.reason,
            }
        return {
            "target": self.target,
            "kernel_mode": self.mode,
            "weights": _WEIGHTS[self.mode],
            "cpu_dot_product": list(self.cpu_features),
            "cpu": platform.processor() or platform.machine(),
            "reason": self.reason,
            **({"objective": self.objective} if self.objective is not None else {}),
            **({"scaled_reads": self._scaled_reads()} if self.scaled_reads else {}),
            **({"runtime_forms": self._runtime_forms()} if self.runtime_forms else {}),
        }

    def _runtime_forms(self) -> dict[str, object]:
        return {
            **self.runtime_forms,
            "why": "the same values in a form ONNX Runtime runs faster: a PReLU slope tiled "
            "along the width (ORT runs it channels-last between int8 kernels, C values a span "
            "untiled); a pooled [N, C, 1, 1] tensor read channels-last, so the int8 tail before "
            "it stays NHWC (a uint8 MaxPool as NhwcMaxPool); the int8 weight of a Gemm whose "
            "activation is float written as its dequantized float values (ORT would dequantize "
            "it on every run and run the Gemm unpacked; the file holds it at 32 bits); the same "
            "for a Gemm/Conv in a Q/DQ group ORT runs float (a 16-bit activation, or a Conv "
            "output read in float), with a Gemm's bias as float [1, N]; an 8-bit 3x3 conv over "
            "one input channel as a depthwise conv over the input's integers tiled to its "
            "channels (ORT's depthwise int8 kernel instead of a GEMM 9 deep)",
        }

    def _scaled_reads(self) -> dict[str, object]:
        return {
            "ops": len(self.scaled_reads),
            "tensors": list(self.scaled_reads),
            "why": "a Div/Mul by a positive constant: its output is on its input's grid "
            "scaled, so the same integers; exported as a DequantizeLinear of them, no op for "
            "ONNX Runtime to run (it has no integer Div; a QLinearMul by a scalar is a pass)",
        }


_WEIGHTS = {
    "vnni": "int8 (u8s8 kernels)",
    "avx2": "uint8 (u8u8 kernels)",
    "avx2-s7": "int8 (u8s8 kernels): the 8-bit weights of Conv, Gemm and MatMul on 7-bit grids "
    "[-64, 63], which those kernels sum exactly without an int8 dot product; depthwise convs "
    "at 8 bits (their kernel sums in int32); a weight wider than 7 bits there (asked for, or "
    "from bayesian_bits) stored as uint8 (u8u8 kernels, exact)",
}


def check_target(name: str) -> str:
    """The target name, or ValueError with the accepted forms."""
    if name in TARGETS:
        return name
    base = name.split(":", 1)[0]
    if base in PLANNED:
        raise ValueError(f"target {name!r} is not supported yet; use one of {', '.join(TARGETS)}")
    raise ValueError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}")


def check_target_grids(
    target: str,
    *,
    weight_bits: int,
    activation_bits: int | None,
    weight_symmetric: bool,
    pipeline: tuple[str, ...] = (),
) -> None:
    """ValueError naming the target's rule when the spec's grids are ones it cannot run."""
    rules = target_rules(target)
    if not rules.executed_here and "bayesian_bits" in pipeline:
        raise ValueError(
            f"target {target} runs the bit-widths asked for: bayesian_bits, which picks 2 to 16 "
            "bits per tensor and prunes, cannot be used with it"
        )
    if rules.weight_bits is not None and weight_bits not in rules.weight_bits:
        allowed = ", ".join(f"int{b}" for b in rules.weight_bits)
        raise ValueError(f"target {target} takes weights {allowed}, not int{weight_bits}")
    if rules.activation_bits is not None and activation_bits is None:
        raise ValueError(
            f"target {target} runs integer kernels on quantized activations: --activations "
            "float (weights only) is not one of them"
        )
    if (
        rules.activation_bits is not None
        and activation_bits is not None
        and activation_bits not in rules.activation_bits
    ):
        allowed = ", ".join(f"int{b}" for b in rules.activation_bits)
        raise ValueError(
            f"target {target} takes activations {allowed} (or float), not int{activation_bits}"
        )
    if rules.name == "qnn-htp" and weight_bits == 16 and activation_bits == 8:
        raise ValueError("target qnn-htp has no kernel for int16 weights with int8 activations")
    if not rules.executed_here and not weight_symmetric:
        raise ValueError(f"target {target} takes symmetric weights only")


def cpu_dot_product_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The int8 dot-product flags of this CPU (empty where they cannot be read)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return tuple(flag for flag in DOT_PRODUCT_FLAGS if flag in flags)


def choose_kernels(
    target: str, features: tuple[str, ...] | None = None, *, strict_bits: bool = False
) -> KernelChoice:
    """The kernel mode for ``target`` on this CPU (or on ``features``, for tests).

    Without an int8 dot product the default is ``avx2-s7``: on an AVX2-only AMD EPYC it ran
    the bundled example 1.5x faster than u8u8 at batch 32 (1.29x float's speed against 0.86x)
    for 1.4 dB of output SQNR (README, ``--target``); ``strict_bits`` (the grids asked for,
    exactly) takes ``avx2``."""
    check_target(target)
    seen = cpu_dot_product_flags() if features is None else features
    if target == "qnn-htp":
        return KernelChoice(
            target,
            "qnn-htp",
            seen,
            "Qualcomm HTP (QNN): symmetric per-channel weights, asymmetric uint8/uint16 "
            "activations, int32 bias, AIMET's HTP supergroups and shared encodings",
        )
    if target == "tensorrt":
        return KernelChoice(
            target,
            "tensorrt",
            seen,
            "NVIDIA TensorRT explicit quantization: symmetric INT8 weights and activations, "
            "Q/DQ on the inputs of weighted ops and residual Adds",
        )
    if target.endswith(":vnni"):
        reason = "forced by the target"
        if not seen:
            reason += (
                "; this CPU has no int8 dot product, so ONNX Runtime's u8s8 kernels here "
                "saturate on this file: the report's ONNX Runtime figures run it with its int8 "
                "tensors stored as uint8 (the same values), which is what a VNNI machine computes"
            )
        return KernelChoice(target, "vnni", seen, reason)
    if target.endswith(":avx2"):
        return KernelChoice(target, "avx2", seen, "forced by the target: exact on any CPU")
    if target.endswith(":avx2-s7"):
        return KernelChoice(
            target, "avx2-s7", seen, "forced by the target: exact on any CPU, 7-bit GEMM weights"
        )
    if seen:
        return KernelChoice(
            target, "vnni", seen, f"this CPU has {', '.join(seen)}: u8s8 kernels are exact and fast"
        )
    if strict_bits:
        return KernelChoice(
            target,
            "avx2",
            seen,
            "this CPU has no int8 dot product: u8s8 kernels would saturate on 8-bit weights and "
            "--strict-bits keeps them 8-bit, so u8u8 kernels (exact, slower)",
        )
    return KernelChoice(
        target,
        "avx2-s7",
        seen,
        "this CPU has no int8 dot product: u8s8 kernels saturate on 8-bit weights, so the "
        "weights of Conv, Gemm and MatMul take 7-bit grids, which they sum exactly and faster "
        "than u8u8 kernels (--target onnxruntime-cpu:avx2 or --strict-bits keeps 8-bit weights "
        "on u8u8)",
    )
