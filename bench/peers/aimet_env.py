"""A private venv for AIMET (``bench/.venvs/aimet``), created on first use, never the project's.

aimet-torch is installed beside the same CPU torch the project uses (``torch==2.13.0``, pinned
by a constraints file so pip can never swap it). Should the resolver insist on another torch,
aimet-torch goes in with ``--no-deps`` and its declared requirements, less torch and
torchvision, are installed by hand. torchvision from PyPI is a CUDA build that cannot load beside
the CPU torch, so the AIMET process runs with ``../shared/peers/tv_stub`` first on PYTHONPATH.

Every failure is returned as a sentence for the bench to print; nothing here raises on a
missing network, a refused install or an import error.
"""

from __future__ import annotations

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
VENV = REPO / "bench" / ".venvs" / "aimet"
TV_STUB = (REPO / ".." / "shared" / "peers" / "tv_stub").resolve()
TORCH_PIN = "torch==2.13.0"
AIMET_SPEC = "aimet-torch==2.42.*"
STAMP = VENV / ".aimet-installed.json"
INSTALL_TIMEOUT_S = 1200
_SKIP_DEPS = {"torch", "torchvision"}


@dataclass
class AimetEnv:
    """``python`` is the venv's interpreter when usable; ``error`` says why when it is not."""

    python: Path | None
    versions: dict[str, str]
    installed_now: bool
    install_seconds: float
    error: str | None = None

    def env(self) -> dict[str, str]:
        """Environment for the AIMET process: tv_stub first, then the repo root."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TV_STUB), str(REPO)])
        env.pop("VIRTUAL_ENV", None)
        return env


def _run(cmd: list[str], timeout: float = INSTALL_TIMEOUT_S) -> tuple[bool, str]:
    return run_quiet(cmd, timeout)


def _probe(python: Path) -> tuple[dict[str, str] | None, str]:
    """Import torch and aimet_torch in the venv (with tv_stub); their versions, or the error."""
    code = (
        "import json, importlib.metadata as m, torch, aimet_torch.quantsim, "
        "aimet_torch.cross_layer_equalization;"
        "print(json.dumps({'torch': torch.__version__, "
        "'aimet-torch': m.version('aimet-torch')}))"
    )
    return probe_versions(python, code, AimetEnv(python, {}, False, 0.0).env())


def _torch_ok(versions: dict[str, str]) -> bool:
    return versions.get("torch", "").split("+")[0] == TORCH_PIN.split("==")[1]


def _install(python: Path, log: list[str]) -> str | None:
    """pip-install aimet-torch next to the pinned torch; ``None`` on success, else why not."""
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    constraints = VENV / "constraints.txt"
    constraints.write_text(f"{TORCH_PIN}\n")
    ok, out = _run([*pip, "-c", str(constraints), TORCH_PIN, AIMET_SPEC])
    if ok:
        return None
    log.append(f"resolver refused {AIMET_SPEC} with {TORCH_PIN}: {out}")
    # Fall back: aimet-torch without its deps, then its requirements minus torch/torchvision.
    ok, out = _run([*pip, TORCH_PIN])
    if not ok:
        return f"could not install {TORCH_PIN}: {out}"
    ok, out = _run([*pip, "--no-deps", AIMET_SPEC])
    if not ok:
        return f"could not install {AIMET_SPEC} (--no-deps): {out}"
    code = (
        "import importlib.metadata as m;"
        "print('\\n'.join(r for r in (m.requires('aimet-torch') or []) if 'extra ==' not in r))"
    )
    ok, out = _run([str(python), "-c", code], timeout=60)
    if not ok:
        return f"could not read aimet-torch's requirements: {out}"
    deps = []
    for line in out.splitlines():
        name = line.split(";")[0].strip()
        base = name.split("[")[0]
        for sep in "<>=!~ (":
            base = base.split(sep)[0]
        if base and base.lower().replace("_", "-") not in _SKIP_DEPS:
            deps.append(name)
    if deps:
        ok, out = _run([*pip, "-c", str(constraints), *deps])
        if not ok:
            return f"could not install aimet-torch's dependencies by hand: {out}"
    return None


def ensure_aimet_env(*, install: bool = True) -> AimetEnv:
    """Reuse ``bench/.venvs/aimet`` if it imports AIMET beside torch 2.13.0, else build it."""
    python = VENV / "bin" / "python"
    if python.exists() and STAMP.exists():
        versions, error = _probe(python)
        if versions is not None and _torch_ok(versions):
            return AimetEnv(python, versions, False, 0.0)
        if not install:
            return AimetEnv(None, {}, False, 0.0, f"existing AIMET venv unusable: {error}")
    if not install:
        return AimetEnv(None, {}, False, 0.0, f"no AIMET venv at {VENV} (install disabled)")
    if not TV_STUB.is_dir():
        return AimetEnv(None, {}, False, 0.0, f"torchvision stand-in not found at {TV_STUB}")
    start = time.perf_counter()
    print(f"[aimet] creating {VENV.relative_to(REPO)} and installing {AIMET_SPEC} ...", flush=True)
    if not python.exists():
        ok, out = _run(["python3", "-m", "venv", str(VENV)], 300)
        if not ok:
            return AimetEnv(None, {}, False, 0.0, f"python3 -m venv failed: {out}")
    log: list[str] = []
    error = _install(python, log)
    seconds = time.perf_counter() - start
    for line in log:
        print(f"[aimet] {line}", flush=True)
    if error is not None:
        return AimetEnv(None, {}, True, seconds, error)
    versions, probe_error = _probe(python)
    if versions is None:
        return AimetEnv(None, {}, True, seconds, f"aimet_torch does not import: {probe_error}")
    if not _torch_ok(versions):
        return AimetEnv(
            None, versions, True, seconds, f"AIMET venv ended with torch {versions['torch']}"
        )
    STAMP.write_text(json.dumps(versions))
    print(f"[aimet] installed {versions} in {seconds:.0f}s", flush=True)
    return AimetEnv(python, versions, True, seconds)


def run_aimet_script(
    script: Path,
    model: Any,
    splits: Any,
    tmp: Path,
    options: list[str],
    *,
    install: bool,
    timeout: float,
) -> tuple[dict[str, Any] | None, str | None, float]:
    """Run one of ``bench/peers/aimet_*.py`` on ``model`` and the digits splits in the AIMET venv.

    The model travels as a state dict and the data as an npz (the scripts rebuild the zoo net),
    so nothing is pickled across venvs but tensors. Returns the script's JSON (with the install
    facts added), or None and why not; and the AIMET process's wall seconds.
    """
    import numpy as np
    import torch

    env = ensure_aimet_env(install=install)
    if env.error is not None or env.python is None:
        return None, env.error or "AIMET venv unusable", 0.0
    weights, data, out = tmp / "aimet_state.pt", tmp / "aimet_digits.npz", tmp / "aimet.json"
    torch.save(model.state_dict(), weights)
    np.savez(data, x_calib=splits.x_calib, x_eval=splits.x_eval, y_eval=splits.y_eval)
    cmd = [str(env.python), str(script), f"--weights={weights}", f"--data={data}", f"--out={out}"]
    start = time.perf_counter()
    cmd += [*options, f"--launched-at={time.time()}"]
    try:
        proc = subprocess.run(
            cmd, env=env.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"AIMET process ran past {timeout:.0f}s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not out.is_file():
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        return None, f"AIMET process failed: {why}", seconds
    result = json.loads(out.read_text())
    result["installed_now"] = env.installed_now
    result["install_seconds"] = env.install_seconds
    return result, None, seconds


if __name__ == "__main__":
    result = ensure_aimet_env()
    print(result)
    sys.exit(0 if result.error is None else 1)
