"""Measured latency of the float and the quantized model in ONNX Runtime on this machine.

Energy is a model; latency is measured. Int8 is not always faster on a CPU (no VNNI, small
layers dominated by Q/DQ overhead), so the report states what this machine did, either way.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from qaas_engine.sessions import session

# Found at import: on Linux platform.processor() runs `uname -p`, a process per call, and the
# worker's forkserver imports this module once for every job it forks.
PROCESSOR = platform.processor() or platform.machine()
DEFAULT_BATCHES = (1, 32)
WARMUP_RUNS = 1
MIN_RUNS = 1
MAX_RUNS = 200
# The whole measurement (both models, every batch size) stops timing new runs after this: a
# measured case gets its warm-up and one timed run, then another only where the last run's time
# says it ends within the case's share (before, three runs each whatever they cost: a layout
# detector at one thread spent 9.5 s of a 1 s budget); a larger batch whose runs would not fit
# what is left (estimated from the smaller one) is skipped with the estimate.
DEFAULT_BUDGET_S = 0.6
# A case also stops once its median is known well enough: the box plot's notch (a 95% interval
# of the median, 1.58 IQR / sqrt(n)) within 2% of it, checked every 10 runs from 20 on. A small
# model's runs are steady, and timing 200 of them told nothing that 20 did not.
STEADY_MIN_RUNS = 20
STEADY_EVERY = 10
STEADY_HALF_WIDTH = 0.02


def _batch_of(sample: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Repeat one sample ``batch`` times along axis 0."""
    return {
        name: np.ascontiguousarray(np.repeat(array[:1], batch, axis=0))
        for name, array in sample.items()
    }


def _time(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float
) -> dict[str, Any]:
    deadline = time.perf_counter() + seconds
    for _ in range(WARMUP_RUNS):
        session.run(None, feeds)
    times: list[float] = []
    while len(times) < MAX_RUNS:
        start = time.perf_counter()
        if len(times) >= MIN_RUNS and start + times[-1] / 1000 > deadline:
            break  # the next run would end past this case's share of the budget
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
        if len(times) >= STEADY_MIN_RUNS and len(times) % STEADY_EVERY == 0 and _steady(times):
            break
    return {"median": round(statistics.median(times), 4), "runs": len(times)}


def _steady(times: list[float]) -> bool:
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return bool(1.58 * (q3 - q1) / np.sqrt(len(times)) <= STEADY_HALF_WIDTH * median)


def measure_latency(
    float_model: onnx.ModelProto,
    quantized_model: onnx.ModelProto,
    sample: Mapping[str, np.ndarray],
    *,
    batch_sizes: tuple[int, ...] = DEFAULT_BATCHES,
    threads: int = 1,
    budget_s: float = DEFAULT_BUDGET_S,
) -> dict[str, Any]:
    """Median milliseconds per run of each model at each batch size, same feeds for both.

    One intra-op thread by default: the figure then does not depend on how busy the other cores
    are, and matches a single-core device better than a many-thread number would.
    """
    sessions = {
        "float": session(float_model, threads=threads),
        "quantized": session(quantized_model, threads=threads),
    }
    deadline = time.perf_counter() + budget_s
    previous: tuple[int, float] | None = None  # batch size, seconds per run of both models
    result: dict[str, Any] = {
        "float": {},
        "quantized": {},
        "speedup": {},
        "skipped": {},
    }
    for index, batch in enumerate(batch_sizes):
        remaining = deadline - time.perf_counter()
        if previous is not None:
            estimate = previous[1] * batch / previous[0] * (WARMUP_RUNS + MIN_RUNS)
            if estimate > remaining:
                result["skipped"][f"batch_{batch}"] = (
                    f"not measured: about {estimate:.1f} s of runs, over what was left of the "
                    f"{budget_s:.2f} s latency budget"
                )
                continue
        per_case = max(remaining, 0.0) / (len(sessions) * (len(batch_sizes) - index))
        feeds = _batch_of(sample, batch)
        try:
            timings = {key: _time(run, feeds, per_case) for key, run in sessions.items()}
        except Exception as error:  # a model with a fixed batch axis cannot run batch 32
            result["skipped"][f"batch_{batch}"] = str(error).splitlines()[0][:300]
            continue
        previous = (batch, sum(t["median"] for t in timings.values()) / 1000)
        for key, timing in timings.items():
            result[key][f"batch_{batch}"] = timing["median"]
        result["speedup"][f"batch_{batch}"] = round(
            timings["float"]["median"] / timings["quantized"]["median"], 3
        )
        result.setdefault("runs", {})[f"batch_{batch}"] = {
            key: timing["runs"] for key, timing in timings.items()
        }
    result["how"] = (
        f"ONNX Runtime {ort.__version__} CPUExecutionProvider, intra-op threads {threads}, "
        f"{WARMUP_RUNS} warm-up run then the median of the runs that end within the budget, "
        f"at least {MIN_RUNS} ({budget_s:.2f} s in all; a larger batch that would not fit is "
        f"skipped), fewer once the median is known to {100 * STEADY_HALF_WIDTH:g}%; one sample "
        "repeated per batch"
    )
    result["threads"] = threads
    result["machine"] = {
        "processor": PROCESSOR,
        "cpu_count": os.cpu_count(),
        "system": platform.system(),
    }
    result["speedup_note"] = (
        "speedup = float / quantized time; below 1 means the int8 model ran slower here "
        "(common on CPUs without int8 dot-product instructions or on tiny layers)"
    )
    return result
