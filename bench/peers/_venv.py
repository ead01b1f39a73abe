"""What the peers' private venvs share: quiet subprocess runs that report instead of raising."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def run_quiet(cmd: list[str], timeout: float) -> tuple[bool, str]:
    """Run ``cmd``; (succeeded, last lines of its output or the reason it could not start)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"{' '.join(cmd[:4])} ...: {error}"
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
    return proc.returncode == 0, "\n".join(tail)


def probe_versions(python: Path, code: str, env: dict[str, str]) -> tuple[dict | None, str]:
    """Run ``code`` (which prints one JSON object last) in the venv: the object, or why not."""
    try:
        proc = subprocess.run(
            [str(python), "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, str(error)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit status {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""
