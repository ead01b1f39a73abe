"""A private venv for NNCF (``bench/.venvs/nncf``), created on first use, never the project's.

NNCF is the peer for ``pipeline: auto``: ``nncf.quantize_with_accuracy_control`` on its ONNX
backend is OpenVINO's answer to "quantize, but lose at most N points". nncf 3.4 declares no torch
dependency; a constraints file still pins ``torch==2.13.0`` (the local CPU wheel) so that no
resolver path can ever pull a CUDA torch in. onnx and onnxruntime are pinned, when the resolver
allows it, to the versions of the interpreter running the bench, so the peer's model is built and
validated by the same runtime that the bench scores it with.

Every failure is returned as a sentence for the bench to print; nothing here raises on a
missing network, a refused install, an import error or a crashed run.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers._venv import probe_versions, run_quiet

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / "bench" / ".venvs" / "nncf"
SCRIPT = Path(__file__).resolve().with_name("nncf_accuracy_control.py")
TORCH_PIN = "torch==2.13.0"
NNCF_SPEC = "nncf==3.4.*"
STAMP = VENV / ".nncf-installed.json"
INSTALL_TIMEOUT_S = 1200
_MATCHED = ("onnx", "onnxruntime")


@dataclass
class NncfEnv:
    """``python`` is the venv's interpreter when usable; ``error`` says why when it is not."""

    python: Path | None
    versions: dict[str, str]
    installed_now: bool
    install_seconds: float
    error: str | None = None

    def env(self) -> dict[str, str]:
        """Environment for the NNCF process: its own venv only, telemetry stubbed out.

        ``NNCF_CI`` makes nncf swap its openvino-telemetry client for a stub, so no run tries to
        reach an analytics host (none is reachable here anyway; it would only cost timeouts).
        """
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        env["NNCF_CI"] = "1"
        return env


def _run(cmd: list[str], timeout: float = INSTALL_TIMEOUT_S) -> tuple[bool, str]:
    return run_quiet(cmd, timeout)


def _probe(python: Path) -> tuple[dict[str, str] | None, str]:
    """Import nncf's ONNX entry points in the venv; versions (torch too, if present), or why not."""
    code = (
        "import json, importlib.util, importlib.metadata as m, numpy, onnx, onnxruntime, nncf;"
        "from nncf import quantize, quantize_with_accuracy_control;"
        "v = {p: m.version(p) for p in ('nncf', 'onnx', 'onnxruntime', 'numpy')};"
        "v.update({'torch': m.version('torch')} if importlib.util.find_spec('torch') else {});"
        "print(json.dumps(v))"
    )
    return probe_versions(python, code, NncfEnv(python, {}, False, 0.0).env())


def _torch_ok(versions: dict[str, str]) -> bool:
    """No torch at all is best; one that slipped in must be exactly the CPU pin."""
    torch = versions.get("torch")
    return torch is None or torch.split("+")[0] == TORCH_PIN.split("==")[1]


def _matched_pins() -> list[str]:
    """onnx/onnxruntime at the bench interpreter's versions, where it has them."""
    pins = []
    for name in _MATCHED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def _install(python: Path, log: list[str]) -> str | None:
    """pip-install nncf, onnx, onnxruntime and numpy; ``None`` on success, else why not."""
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    constraints = VENV / "constraints.txt"
    wanted = [NNCF_SPEC, "onnx", "onnxruntime", "numpy"]
    matched = _matched_pins()
    if matched:
        constraints.write_text("\n".join([TORCH_PIN, *matched]) + "\n")
        ok, out = _run([*pip, "-c", str(constraints), *wanted])
        if ok:
            return None
        log.append(f"resolver refused {NNCF_SPEC} with {', '.join(matched)}: {out}")
    constraints.write_text(f"{TORCH_PIN}\n")
    ok, out = _run([*pip, "-c", str(constraints), *wanted])
    return None if ok else f"could not install {NNCF_SPEC}: {out}"


def ensure_nncf_env(*, install: bool = True) -> NncfEnv:
    """Reuse ``bench/.venvs/nncf`` if it imports nncf's ONNX entry points, else build it."""
    python = VENV / "bin" / "python"
    if python.exists() and STAMP.exists():
        versions, error = _probe(python)
        if versions is not None and _torch_ok(versions):
            return NncfEnv(python, versions, False, 0.0)
        if not install:
            return NncfEnv(None, {}, False, 0.0, f"existing NNCF venv unusable: {error}")
    if not install:
        return NncfEnv(None, {}, False, 0.0, f"no NNCF venv at {VENV} (install disabled)")
    start = time.perf_counter()
    print(f"[nncf] creating {VENV.relative_to(REPO)} and installing {NNCF_SPEC} ...", flush=True)
    if not python.exists():
        ok, out = _run(["python3", "-m", "venv", str(VENV)], 300)
        if not ok:
            return NncfEnv(None, {}, False, 0.0, f"python3 -m venv failed: {out}")
    log: list[str] = []
    error = _install(python, log)
    seconds = time.perf_counter() - start
    for line in log:
        print(f"[nncf] {line}", flush=True)
    if error is not None:
        return NncfEnv(None, {}, True, seconds, error)
    versions, probe_error = _probe(python)
    if versions is None:
        return NncfEnv(None, {}, True, seconds, f"nncf does not import: {probe_error}")
    if not _torch_ok(versions):
        return NncfEnv(None, versions, True, seconds, f"NNCF venv pulled torch {versions['torch']}")
    STAMP.write_text(json.dumps(versions))
    print(f"[nncf] installed {versions} in {seconds:.0f}s", flush=True)
    return NncfEnv(python, versions, True, seconds)


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                return parsed
    return None


def run_nncf_accuracy_control(
    model_path: Path | str,
    calibration_npz: Path | str,
    validation_npz: Path | str,
    max_drop_points: float,
    output_path: Path | str,
    timeout: float = 1800,
    *,
    install: bool = True,
    extra_args: list[str] | None = None,
) -> dict[str, Any]:
    """Run ``nncf_accuracy_control.py`` in the NNCF venv; its JSON, or ``{"ok": False, ...}``.

    ``max_drop_points`` is in top-1 points (1.0 = one point), as ``pipeline: auto`` states it;
    the script converts it to NNCF's absolute fraction. The returned dict also carries
    ``install_seconds`` (0 when the venv was reused) and ``wall_seconds`` (the whole subprocess,
    interpreter start and model loading included; ``seconds`` is NNCF's call alone).
    """
    env = ensure_nncf_env(install=install)
    if env.python is None:
        return {"ok": False, "error": env.error, "install_seconds": env.install_seconds}
    cmd = [
        str(env.python),
        str(SCRIPT),
        str(Path(model_path).resolve()),
        "--calibration",
        str(Path(calibration_npz).resolve()),
        "--validation",
        str(Path(validation_npz).resolve()),
        "--max-drop",
        repr(float(max_drop_points)),
        "--output",
        str(Path(output_path).resolve()),
        *(extra_args or []),
    ]
    start = time.perf_counter()
    base = {"install_seconds": round(env.install_seconds, 1)}
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env.env(),
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**base, "ok": False, "error": f"NNCF run timed out after {timeout:.0f}s"}
    except OSError as error:
        return {**base, "ok": False, "error": f"could not start the NNCF run: {error}"}
    wall = round(time.perf_counter() - start, 2)
    result = _last_json_line(proc.stdout)
    if result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        reason = " | ".join(tail) or f"exit status {proc.returncode}"
        return {**base, "ok": False, "wall_seconds": wall, "error": f"no JSON from NNCF: {reason}"}
    return {**base, "wall_seconds": wall, **result}


if __name__ == "__main__":
    result = ensure_nncf_env()
    print(result)
    sys.exit(0 if result.error is None else 1)
