"""bench/speed.py times the code of the checkout it is run from, whatever the environment's
``qaas`` script would import."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import speed


def test_qaas_runs_this_checkouts_code_and_the_baseline_its_own(tmp_path, monkeypatch) -> None:
    calls: list[tuple[list[str], dict[str, str] | None]] = []

    def fake_child(command, log, env=None, cwd=speed.ROOT):
        calls.append((command, env, cwd))
        out = Path(command[command.index("-o") + 1])
        out.mkdir(parents=True, exist_ok=True)
        steps = [{"name": "calibration", "seconds": 1.0}, {"name": "rules", "seconds": 2.0}]
        (out / "report.json").write_text(json.dumps({"steps": steps}))
        return 3.5, 100.0

    monkeypatch.setattr(speed, "run_child", fake_child)
    case = speed.Case("m", tmp_path / "m.onnx", tmp_path / "m.onnx", tmp_path / "c.npz", None, 8)
    ours = speed.run_qaas(case, tmp_path / "ours")
    base = speed.run_qaas(case, tmp_path / "base", tmp_path / "main")

    (command, env, cwd), (base_command, base_env, base_cwd) = calls
    # an interpreter with the checkout first on sys.path, not the installed script (an
    # editable install of main would have measured main against itself)
    assert command[0] == sys.executable and env is not None
    assert env["PYTHONPATH"] == str(speed.ROOT)
    assert base_command[0] == sys.executable and base_env is not None
    assert base_env["PYTHONPATH"] == str(tmp_path / "main")
    # run in the checkout's folder: `python -c` puts the working folder ahead of PYTHONPATH
    assert cwd == speed.ROOT and base_cwd == tmp_path / "main"
    assert ours.steps == {"calibration": 1.0, "rules": 2.0} and ours.wall == 3.5
    assert base.steps == ours.steps


def test_a_childs_cpu_seconds_are_read_with_its_peak_memory(tmp_path) -> None:
    """CPU seconds (user + system, from wait4) sit beside wall time: on a shared machine they
    move less with other work's load."""
    speed.LAST_CPU[0] = -1.0
    wall, rss = speed.run_child([sys.executable, "-c", "sum(range(10**6))"], tmp_path / "log")
    assert speed.LAST_CPU[0] > 0.0 and wall > 0.0 and rss > 0.0
