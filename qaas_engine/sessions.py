"""ONNX Runtime sessions for the engine's gradient-free passes, and the thread count they use.

One place decides threads (``QAAS_THREADS``, else every core) and optimization levels, so the
float reference, calibration, evaluation and analysis all run under the same settings.
``optimized=False`` turns ORT's graph optimizer off: a QDQ graph then computes exactly the
fake-quantized forward (Q and DQ in float, no fused integer kernel). ``qdq_fusions=False``
keeps the optimizer but turns off only the passes that rewrite Q/DQ groups
(``QDQ_REWRITES``): the Q/DQ arithmetic stays as written while every float op gets the layouts
and fusions it gets deployed (NCHWc convolutions, Conv+activation, LayerNorm and Gelu kernels),
whose float sums round differently from the plain kernels'. That is the simulation's session.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

from qaas_engine.weights_apart import apart_bytes, write_apart

THREADS_ENV = "QAAS_THREADS"
# Models whose large initializers add up to this reach ONNX Runtime as a file with the weights
# beside it, not as bytes: bytes cost a serialized copy of the model plus ONNX Runtime's parsed
# copy while the session is made (~3x the weights at once for BERT-base); from a file ONNX
# Runtime reads each weight straight into the buffer it keeps. Below it, bytes are cheaper
# than a round trip through the disk.
WEIGHTS_FILE_MIN_BYTES = 16 * 2**20
# ORT's graph passes that fuse Q/DQ groups into its own integer kernels, quantize float weights
# next to them, merge or move Q/DQ pairs, or fold an integer graph back into one of its kernels
# (MatMulInteger -> Cast -> Mul is MatMulIntegerToFloat), or fold a Conv's requantization
# multiplier into its weights (ConvMulFusion: the emulated QLinearConv is a Conv on the
# integers, exact, then a Mul; folded, the products round before they are summed). Off in the
# simulation's session: what it computes for Q/DQ is its own (the fake-quantized ops, or the
# integer kernels emulated step by step), never ORT's kernel standing in for itself. The other
# passes change only how float ops are computed, and run there as deployed (a float Conv
# before a Mul by a constant, in a layer kept float, is the one float fusion it gives up).
QDQ_REWRITES = (
    "QDQSelectorActionTransformer",
    "QDQS8ToU8Transformer",
    "Avx2WeightS8ToU8Transformer",
    "WeightBiasQuantization",
    "QDQPropagationTransformer",
    "DoubleQDQPairsRemover",
    "MatMulIntegerToFloatFusion",
    "DynamicQuantizeMatMulFusion",
    "ConvMulFusion",
)


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


def sleeping_torch_threads() -> None:
    """torch's OpenMP threads sleep between parallel regions instead of spinning, where torch
    is not loaded yet and no policy was set (``OMP_WAIT_POLICY``, read once, when torch loads).

    A post-training job runs torch for one forward and backward pass (the rules' noise
    pricing) between ONNX Runtime passes; spinning threads then burn a core each for nothing
    and, on a machine other work shares, slow everyone (YOLOX's rules: 9-17 -> 5-6 CPU s in
    one run). The same thread count computes the same numbers either way."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
    qdq_fusions: bool = True,
    threads: int | None = None,
    arena: bool = True,
    save_optimized: str | None = None,
    extra_outputs: Sequence[str] = (),
) -> ort.InferenceSession:
    """A CPU session; sequential, ``threads`` intra-op threads (the job's count by default).
    ``qdq_fusions=False``: the optimizer without ``QDQ_REWRITES`` (the simulation's session).

    ``arena=False`` returns each run's buffers to the system (ORT's arena keeps its high-water
    mark and grows by doubling): for passes over large activations, where peak memory matters
    more than the allocation time saved. ``save_optimized`` (a file path) writes the graph as
    ORT's optimizer left it, its weights in a file beside it: what ``runtime_graph`` inspects.
    ``extra_outputs`` (untyped: ORT infers their types) are exposed beside the graph's outputs,
    without a copy of ``model`` being made for them.
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.log_severity_level = 3
    options.intra_op_num_threads = threads if threads is not None else thread_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle pool threads sleep instead of spinning for the next parallel section: the job's
    # sessions run mostly back to back with Python work between them (observers, metrics), and
    # on a machine other work shares a spinning thread takes a core from whoever could use it
    # (a YOLOX calibration run: 40% less CPU, and less wall time too under load); results are
    # the same, as the thread count is
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    providers = ["CPUExecutionProvider"]
    disabled = () if qdq_fusions or not optimized else QDQ_REWRITES
    if isinstance(model, onnx.ModelProto) and apart_bytes(model) >= WEIGHTS_FILE_MIN_BYTES:
        # the same graph and weights, so the same optimized graph and numbers; the folder goes
        # as soon as the session holds the weights
        with tempfile.TemporaryDirectory(prefix="qaas-session-") as folder:
            path = write_apart(model, Path(folder), extra_outputs=extra_outputs)
            return ort.InferenceSession(
                str(path), options, providers=providers, disabled_optimizers=disabled
            )
    if extra_outputs:
        model = _with_outputs(model, extra_outputs)
    payload = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(payload, options, providers=providers, disabled_optimizers=disabled)


def _with_outputs(model: onnx.ModelProto | bytes, names: Sequence[str]) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    if isinstance(model, bytes):
        exposed.ParseFromString(model)
    else:
        exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return exposed
