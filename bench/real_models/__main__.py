"""``python -m bench.real_models [--models a,b] [--samples N] [--json PATH] [--auto DB]``: the
table per model (task metric, output and worst-channel SQNR vs float, the latter raw and with
probability rows in log-odds as the engine judges them, qaas's sim-vs-ORT SQNR and rules,
whole-process wall time per tool), then a summary across models. ``--auto DB`` adds
``qaas --pipeline auto --min-sqnr DB``: what it chose, whether it met the target on its
validation data, and (in the JSON) every configuration it measured."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._common import cpu_summary, print_table
from bench.real_models.bench import PEERS, bench_case
from bench.real_models.catalog import CASES

TOOLS = ("float", "ORT", "NNCF", "qaas", "qaas strict")


def _cell(row: dict[str, Any], key: str) -> Any:
    value = row.get(key)
    return None if isinstance(value, float) and math.isnan(value) else value


def _tools(result: dict[str, Any]) -> tuple[str, ...]:
    return TOOLS + (("qaas auto",) if "qaas auto" in result["tools"] else ())


def print_model(result: dict[str, Any]) -> None:
    """One model's table: a row per tool, errors in full below it."""
    rows = []
    for tool in _tools(result):
        row = result["tools"].get(tool, {})
        rows.append(
            [
                tool,
                _cell(row, "task"),
                _cell(row, "sqnr_db"),
                _cell(row, "worst_channel_sqnr_db"),
                _cell(row, "worst_channel_log_odds_db"),
                _cell(row, "sim_vs_ort_db"),
                row.get("rules"),
                _cell(row, "wall_s"),
                "FAILED (below)" if row.get("error") else "",
            ]
        )
    title = f"{result['model']}: {result['kind']}; task metric: {result['metric']}"
    headers = ["tool", "task", "SQNR dB", "worst ch dB", "log-odds worst ch dB", "sim-vs-ORT dB",
               "rules", "wall s", ""]  # fmt: skip
    print_table(title, headers, rows)
    for tool in _tools(result):
        error = result["tools"].get(tool, {}).get("error")
        if error:
            print(f"  {tool} error: {error}")


def print_summary(results: list[dict[str, Any]]) -> None:
    """Task metric per model and tool, side by side."""
    rows = []
    tools = TOOLS[1:] + (("qaas auto",) if any("qaas auto" in r["tools"] for r in results) else ())
    for result in results:
        cells = []
        for tool in tools:
            row = result["tools"].get(tool, {})
            cells.append("error" if row.get("error") else _cell(row, "task"))
        qaas = result["tools"].get("qaas", {})
        rows.append([result["model"], *cells, _cell(qaas, "sim_vs_ort_db")])
    headers = ["model", *tools, "qaas sim-vs-ORT dB"]
    print_table("Summary: task metric vs float (1.0 = decides as float does)", headers, rows)


@contextlib.contextmanager
def _work_folder(keep: Path | None) -> Iterator[str]:
    """``keep`` (created) when given, else a temporary folder removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield str(keep)
        return
    with tempfile.TemporaryDirectory(prefix="qaas-real-models-") as folder:
        yield folder


def main(argv: list[str] | None = None) -> int:
    names = [case.name for case in CASES]
    parser = argparse.ArgumentParser(prog="python -m bench.real_models", description=__doc__)
    parser.add_argument("--models", default="", help=f"comma-separated, from: {','.join(names)}")
    parser.add_argument("--samples", type=int, default=32, help="calibration = held-out count")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write each model's data and every tool's artifacts under this folder and keep "
        "them (to inspect a row); a temporary folder otherwise",
    )
    parser.add_argument(
        "--auto",
        type=float,
        default=None,
        metavar="DB",
        help="also run qaas --pipeline auto --min-sqnr DB (its choice, verdict and frontier)",
    )
    parser.add_argument(
        "--tools",
        default=",".join(PEERS),
        help=f"comma-separated, from: {','.join(PEERS)} (all by default; 'qaas auto' comes "
        "with --auto); fewer, to rerun one tool's rows quickly",
    )
    parser.add_argument(
        "--qaas-options",
        default="",
        help="more qaas quantize options for every qaas row, as one string "
        "(e.g. '--pipeline bias_correction'): what a default would gain",
    )
    args = parser.parse_args(argv)
    peers = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    if set(peers) - set(PEERS):
        parser.error(f"unknown tool(s) {', '.join(sorted(set(peers) - set(PEERS)))}")
    wanted = [n.strip() for n in args.models.split(",") if n.strip()] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(names)}")
    print(cpu_summary())
    print(f"load average at start: {os.getloadavg()}")
    if args.qaas_options:
        print(f"qaas rows run with: {args.qaas_options}")
    start = time.perf_counter()
    results = []
    with _work_folder(args.keep) as folder:
        for case in (c for c in CASES if c.name in wanted):
            print(f"\n[{case.name}] {args.samples} samples ...", flush=True)
            try:
                result = bench_case(
                    case, args.samples, Path(folder) / case.name, args.auto, peers,
                    tuple(shlex.split(args.qaas_options)),
                )  # fmt: skip
            except Exception as error:  # the bench's own setup for this model: say so, go on
                print(f"  bench setup failed: {type(error).__name__}: {error}")
                continue
            print_model(result)
            results.append(result)
            _write(args.json, results, time.perf_counter() - start)  # partial results survive
    print_summary(results)
    elapsed = time.perf_counter() - start
    print(f"\nwhole bench {elapsed:.0f} s; load average at end: {os.getloadavg()}")
    _write(args.json, results, elapsed)
    return 0


def _write(path: Path | None, results: list[dict[str, Any]], seconds: float) -> None:
    if path is not None:
        payload = {"cpu": cpu_summary(), "seconds": round(seconds, 1), "results": results}
        path.write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
