"""The four quantizers, each as a whole process on the same files, timed from start to exit.

A tool that fails or refuses a model is a result, not a crash of the bench: its exact error text
is kept (the last lines qaas prints, ORT's or NNCF's exception) and the bench goes on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers.nncf_env import NncfEnv, ensure_nncf_env

ROOT = Path(__file__).resolve().parents[2]
QAAS = Path(sys.executable).with_name("qaas")
HERE = Path(__file__).resolve().parent
TIMEOUT_S = 900


@dataclass
class ToolRun:
    """What one tool produced: the model (or the error that stopped it) and its wall time."""

    tool: str
    model: Path | None
    wall_s: float
    error: str | None = None
    report: dict[str, Any] = field(default_factory=dict)


def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return -1, "", f"timed out after {TIMEOUT_S} s", time.perf_counter() - start
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


def _json_result(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                return parsed
    return None


def run_qaas(
    model: Path,
    calibration: Path,
    evaluation: Path,
    folder: Path,
    *,
    strict: bool,
    options: tuple[str, ...] = (),
    tool: str | None = None,
) -> ToolRun:
    """``qaas quantize`` (default W8A8 per-channel, or ``--strict-bits``) with held-out data
    as ``--evaluation``, so report.json's sim-vs-ORT figures are measured on it; ``tool``
    names a run with other ``options`` (``qaas auto``)."""
    tool = tool or ("qaas strict" if strict else "qaas")
    out = folder / tool.replace(" ", "-")
    command = [str(QAAS), "quantize", str(model), "--calibration", str(calibration)]
    command += ["--evaluation", str(evaluation), "--evaluation-samples", "all", "-o", str(out)]
    command += ["--quiet", *(["--strict-bits"] if strict else []), *options]
    code, stdout, stderr, wall = _run(command)
    quantized = out / "model.quant.onnx"
    if code != 0 or not quantized.exists():
        return ToolRun(tool, None, wall, f"exit {code}: {_tail(stderr or stdout)}")
    report = json.loads((out / "report.json").read_text())
    return ToolRun(tool, quantized, wall, report=report)


def run_ort(model: Path, calibration: Path, folder: Path, *, reduce_range: bool = False) -> ToolRun:
    """``quantize_static`` QDQ per-channel MinMax in its own process (``ort_peer.py``);
    ``reduce_range``: its 7-bit-weight variant (tool ``ORT reduce_range``)."""
    tool = "ORT reduce_range" if reduce_range else "ORT"
    output = folder / ("ort-reduce-range.onnx" if reduce_range else "ort.onnx")
    command = [sys.executable, str(HERE / "ort_peer.py"), str(model), str(calibration)]
    command += [str(output), *(["--reduce-range"] if reduce_range else [])]
    code, stdout, stderr, wall = _run(command)
    result = _json_result(stdout) or {}
    if code != 0 or not output.exists():
        return ToolRun(tool, None, wall, result.get("error") or _tail(stderr))
    return ToolRun(tool, output, wall)


_NNCF: list[NncfEnv] = []


def run_nncf(model: Path, calibration: Path, folder: Path) -> ToolRun:
    """``nncf.quantize`` defaults in NNCF's venv (``nncf_peer.py``)."""
    if not _NNCF:
        _NNCF.append(ensure_nncf_env())
    env = _NNCF[0]
    if env.python is None:
        return ToolRun("NNCF", None, 0.0, f"no NNCF venv: {env.error}")
    output = folder / "nncf.onnx"
    command = [str(env.python), str(HERE / "nncf_peer.py"), str(model), str(calibration)]
    code, stdout, stderr, wall = _run([*command, str(output)], env=env.env())
    result = _json_result(stdout) or {}
    if code != 0 or not output.exists():
        return ToolRun("NNCF", None, wall, result.get("error") or _tail(stderr))
    return ToolRun("NNCF", output, wall)


def auto_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What ``--pipeline auto`` chose and the frontier it measured (report.json ``auto``)."""
    auto = report.get("auto") or {}
    return {
        "chosen": auto.get("chosen"),
        "verdict": auto.get("verdict"),
        "message": auto.get("message"),
        "search_s": auto.get("search_seconds"),
        "tried": [
            {
                key: entry.get(key)
                for key in (
                    "name",
                    "met",
                    "confirmed",
                    "calibration_check",
                    "on_frontier",
                    "energy_ratio_vs_float",
                    "fidelity",
                )
            }
            for entry in auto.get("tried") or []
        ],
    }


def rules_fired(report: dict[str, Any]) -> str:
    """The rules of report.json, as ``name x count``, or '-' when none has a line; a line whose
    action says it was not applied (e.g. over the time budget) is counted as such."""
    counts: dict[str, int] = {}
    for rule in report.get("rules") or []:
        name = str(rule.get("rule", "?")) if isinstance(rule, dict) else str(rule)
        action = str(rule.get("action", "")) if isinstance(rule, dict) else ""
        name += " (not applied)" if action.startswith("not applied") else ""
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())) or "-"


def sim_vs_ort_db(report: dict[str, Any]) -> float | None:
    """The lowest simulation-vs-ONNX-Runtime SQNR over the model's outputs (report.json)."""
    metrics = report.get("metrics") or {}
    found = [
        (output.get("simulation_vs_onnxruntime") or {}).get("sqnr_db")
        for output in (metrics.get("outputs") or {}).values()
    ]
    values = [float(v) for v in found if isinstance(v, int | float)]
    if not values:
        value = (metrics.get("simulation_vs_onnxruntime") or {}).get("sqnr_db")
        return value if isinstance(value, int | float) else None
    return min(values)
