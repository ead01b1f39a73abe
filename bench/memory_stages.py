"""Peak RSS per stage of one ``qaas quantize`` run, to find where a large model's memory goes.

``bench/speed.py`` gives each whole process's peak; this says which stage set it. It runs the
CLI's own ``main`` in this process and, around every report step (``Timer.run``) and a few calls
known to copy a model (checker, shape inference, ONNX Runtime sessions), reads ``VmHWM`` and
``VmRSS`` from ``/proc/self/status`` and then resets the high-water mark (``clear_refs`` 5,
Linux), so each line's peak is that interval's own. Lines: ``[during|after] NAME``: the peak
inside the call and the resident size when it returned; ``gap`` lines cover the code between.

Run: ``python bench/memory_stages.py MODEL --calibration NPZ [--wrap MODULE:FUNCTION ...]
[qaas quantize options...]`` (``--wrap`` adds a line for each call of that function)
(the output folder defaults to a temporary one). Linux only.
"""

from __future__ import annotations

import functools
import importlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout: bench/ is not an installed package

MIB = 1024


def _status() -> tuple[float, float]:
    """(VmHWM, VmRSS) in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmHWM"].split()[0]) / MIB, int(fields["VmRSS"].split()[0]) / MIB


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Recorder:
    """Prints one line per interval: its peak RSS, the RSS at its end, and its seconds."""

    def __init__(self) -> None:
        self.depth = 0
        self.mark = time.perf_counter()
        self.overall = 0.0

    def close(self, label: str) -> None:
        peak, rss = _status()
        self.overall = max(self.overall, peak)
        now = time.perf_counter()
        indent = "  " * self.depth
        print(
            f"{indent}{label:<40} peak {peak:8.0f} MiB   rss after {rss:8.0f} MiB   "
            f"{now - self.mark:7.2f} s",
            flush=True,
        )
        self.mark = now
        _reset_peak()

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.close(f"gap before {label}")
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                self.close(label)

        return wrapped


def _patch(recorder: Recorder, extra: list[str]) -> None:
    """Wrap the report steps, the calls known to copy a whole model, and ``extra``
    (``module:function`` names, looked up through the module at call time)."""
    import onnx
    import onnxruntime

    from qaas_engine import importer, state, tapped

    original_run = state.Timer.run

    def timed(timer: Any, name: str, fn: Callable[[], Any]) -> Any:
        return original_run(timer, name, recorder.wrap(f"step {name}", fn))

    state.Timer.run = timed  # type: ignore[method-assign]
    for module, attr in (
        (onnx.checker, "check_model"),
        (onnx.shape_inference, "infer_shapes"),
        (onnx.shape_inference, "infer_shapes_path"),
        (importer, "parse_onnx_bytes"),
        (importer, "_load_external_data"),
    ):
        if hasattr(module, attr):
            setattr(module, attr, recorder.wrap(attr, getattr(module, attr)))
    onnxruntime.InferenceSession.__init__ = recorder.wrap(  # type: ignore[method-assign]
        "InferenceSession()", onnxruntime.InferenceSession.__init__
    )
    tapped.TappedModel.__init__ = recorder.wrap(  # type: ignore[method-assign]
        "TappedModel()", tapped.TappedModel.__init__
    )
    for target in extra:
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        setattr(module, attr, recorder.wrap(attr, getattr(module, attr)))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    while "--wrap" in args:
        at = args.index("--wrap")
        extra.append(args[at + 1])
        del args[at : at + 2]
    recorder = Recorder()
    recorder.close("interpreter start")
    from app.cli import main as cli_main

    recorder.close("import app.cli")
    _patch(recorder, extra)
    with tempfile.TemporaryDirectory(prefix="qaas-memory-") as tmp:
        if "-o" not in args and "--output" not in args:
            args += ["-o", str(Path(tmp) / "out")]
        code = cli_main(["quantize", *args, "--quiet"])
    recorder.close("end (writing artifacts, cleanup)")
    print(f"overall peak {recorder.overall:.0f} MiB; exit {code}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
