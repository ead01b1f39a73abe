"""ONNX Runtime sessions for the engine's gradient-free passes, and the thread count they use.

One place decides threads (``QAAS_THREADS``, else every core) and optimization levels, so the
float reference, calibration, evaluation and analysis all run under the same settings.
``optimized=False`` turns ORT's graph optimizer off: a QDQ graph then computes exactly the
fake-quantized forward (Q and DQ in float, no fused integer kernel), which is what the
simulation computes.
"""

from __future__ import annotations

import os
import sys

import onnx
import onnxruntime as ort

THREADS_ENV = "QAAS_THREADS"


def thread_count() -> int:
    """Threads a job may use: ``QAAS_THREADS`` when set (a positive integer), else all cores."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, not {raw!r}") from None
        if value < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, not {raw!r}")
        return value
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_thread_count(threads: int | None) -> None:
    """Pin every later pass (ORT sessions, and torch when it is loaded) to ``threads``."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    os.environ[THREADS_ENV] = str(threads)
    torch = sys.modules.get("torch")  # only when a pass already loaded it: never import it here
    if torch is not None:
        torch.set_num_threads(threads)


def session(
    model: onnx.ModelProto | bytes,
    *,
    optimized: bool = True,
    threads: int | None = None,
    arena: bool = True,
    save_optimized: str | None = None,
) -> ort.InferenceSession:
    """A CPU session; sequential, ``threads`` intra-op threads (the job's count by default).

    ``arena=False`` returns each run's buffers to the system (ORT's arena keeps its high-water
    mark and grows by doubling): for passes over large activations, where peak memory matters
    more than the allocation time saved. ``save_optimized`` (a file path) writes the graph as
    ORT's optimizer left it, its weights in a file beside it: what ``runtime_graph`` inspects.
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.log_severity_level = 3
    options.intra_op_num_threads = threads if threads is not None else thread_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_optimized is not None:
        options.optimized_model_filepath = save_optimized
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "weights.bin"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    payload = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
