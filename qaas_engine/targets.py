"""Deployment targets: which integer kernels the exported model is laid out for.

ONNX Runtime's CPU int8 kernels take u8 activations with s8 weights (u8s8) or with u8 weights
(u8u8). Where the CPU has an int8 dot product (x86 AVX-512 VNNI, AVX-VNNI or AMX; ARM's
dot-product extension) u8s8 accumulates in 32 bits: exact, and the fast path. Without one (AVX2),
u8s8 sums pairs of u8*s8 products in int16 and saturates: wrong results, so there the weights'
signed grid is stored as uint8 (zero point + 128), which changes no value and runs the exact
u8u8 kernels. ``onnxruntime-cpu`` picks by the CPU that runs the job; ``:vnni`` or ``:avx2``
forces a mode for a fleet whose CPUs differ from the worker's.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TARGETS = ("onnxruntime-cpu", "onnxruntime-cpu:vnni", "onnxruntime-cpu:avx2")
DEFAULT_TARGET = "onnxruntime-cpu"
PLANNED = ("qnn-htp", "tensorrt")  # named by issue #18, not built yet: refused with that reason

# CPU flags (Linux /proc/cpuinfo) of an int8 dot product ONNX Runtime's u8s8 kernels use
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")

KernelMode = Literal["vnni", "avx2"]


@dataclass(frozen=True)
class KernelChoice:
    """What the export is laid out for, and why: the report prints it."""

    target: str
    mode: KernelMode
    cpu_features: tuple[str, ...]  # the dot-product flags this machine has
    reason: str

    @property
    def signed_weights(self) -> bool:
        """s8 weights (u8s8 kernels) rather than the u8 container (u8u8 kernels)."""
        return self.mode == "vnni"

    def describe(self) -> dict[str, object]:
        return {
            "target": self.target,
            "kernel_mode": self.mode,
            "weights": "int8 (u8s8 kernels)" if self.signed_weights else "uint8 (u8u8 kernels)",
            "cpu_dot_product": list(self.cpu_features),
            "cpu": platform.processor() or platform.machine(),
            "reason": self.reason,
        }


def check_target(name: str) -> str:
    """The target name, or ValueError with the accepted forms."""
    if name in TARGETS:
        return name
    base = name.split(":", 1)[0]
    if base in PLANNED:
        raise ValueError(f"target {name!r} is not supported yet; use one of {', '.join(TARGETS)}")
    raise ValueError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}")


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


def choose_kernels(target: str, features: tuple[str, ...] | None = None) -> KernelChoice:
    """The kernel mode for ``target`` on this CPU (or on ``features``, for tests)."""
    check_target(target)
    seen = cpu_dot_product_flags() if features is None else features
    if target.endswith(":vnni"):
        reason = "forced by the target"
        if not seen:
            reason += (
                "; this CPU has no int8 dot product, so ONNX Runtime's u8s8 kernels here may "
                "saturate: metrics.onnxruntime understates what a VNNI machine computes"
            )
        return KernelChoice(target, "vnni", seen, reason)
    if target.endswith(":avx2"):
        return KernelChoice(target, "avx2", seen, "forced by the target: exact on any CPU")
    if seen:
        return KernelChoice(
            target, "vnni", seen, f"this CPU has {', '.join(seen)}: u8s8 kernels are exact and fast"
        )
    return KernelChoice(
        target,
        "avx2",
        seen,
        "this CPU has no int8 dot product: u8s8 kernels would saturate, u8u8 ones are exact",
    )
