"""Helpers shared by the benches: ONNX Runtime sessions, fidelity, latency, tables, CPU facts."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]


def ort_session(
    model: str | os.PathLike[str] | bytes, *, threads: int = 1, optimize: bool = True
) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads and one inter-op thread.

    ``optimize=False`` turns every graph optimization off, so QuantizeLinear/DequantizeLinear run
    as written around float kernels: what the quantized model means, free of the int8 kernels'
    arithmetic (a diagnostic, not how anyone deploys).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_logits(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """The first output of ``session`` for all of ``x``, in batches."""
    name = session.get_inputs()[0].name
    parts = [
        session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


def fidelity(
    reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None
) -> dict[str, float | None]:
    """Top-1 (with labels), output SQNR in dB and top-1 agreement against ``reference``."""
    ref = reference.astype(np.float64)
    diff = ref - logits.astype(np.float64)
    noise = float(np.sum(diff**2))
    sqnr = math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref**2)) / noise)
    return {
        "top1": None if labels is None else float(np.mean(logits.argmax(1) == labels)),
        "sqnr_db": sqnr,
        "agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
    }


def latency_ms(
    sessions: dict[str, ort.InferenceSession],
    x: np.ndarray,
    *,
    rounds: int,
    calls_per_round: int,
    warmup: int = 5,
) -> dict[str, float]:
    """Median milliseconds per ``session.run`` on batch ``x`` for every session.

    Rounds interleave the sessions (each runs ``calls_per_round`` calls in turn), so a burst of
    load from other processes on a shared machine hits all of them alike instead of one.
    """
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for name, session in sessions.items():
        for _ in range(warmup):
            session.run(None, feeds[name])
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            feed = feeds[name]
            for _ in range(calls_per_round):
                start = time.perf_counter()
                session.run(None, feed)
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table: first column left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print(f"\n{title}")
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def cpu_summary() -> str:
    """CPU model, core count and the int8-relevant ISA flags (VNNI decides u8s8 saturation)."""
    model, flags = "unknown CPU", set()
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name") and model == "unknown CPU":
                model = text.split(":", 1)[1].strip()
            elif text.startswith("flags") and not flags:
                flags = set(text.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
    have = [f for f in wanted if f in flags]
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni"))
    return (
        f"{model}, {os.cpu_count()} logical cores, ISA: {', '.join(have) or 'none of'} "
        f"({'VNNI present' if vnni else 'no VNNI: u8s8 int8 kernels may saturate'})"
    )


INT8_COMPUTE_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm")
FLOAT_COMPUTE_OPS = ("Conv", "FusedConv", "NhwcFusedConv", "Gemm", "MatMul", "FusedMatMul")


def optimized_ops(model: str | os.PathLike[str], tmp: Path, *, threads: int = 1) -> Counter[str]:
    """Op types of the graph ONNX Runtime actually runs after its optimizations (CPU)."""
    import onnx

    target = tmp / f"optimized-{Path(model).stem}.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(target)).graph.node)


def kernel_summary(ops: Counter[str]) -> str:
    """'int8 x/y' compute ops run on integer kernels, out of all conv/matmul-like ops."""
    int8 = sum(ops[name] for name in INT8_COMPUTE_OPS)
    total = int8 + sum(ops[name] for name in FLOAT_COMPUTE_OPS)
    return f"{int8}/{total}"


# Report steps that measure the result (accuracy, energy, latency, per-layer analysis) rather
# than produce it: left out of "quantization time" so it compares with peers that only quantize.
MEASUREMENT_STEPS = frozenset({"evaluation", "energy", "latency", "analysis"})
