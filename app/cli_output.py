"""What ``qaas quantize`` and ``qaas submit --wait`` print: a progress line, one overall bar
for a job on a server, and the result table of a report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress

    from qaas.types import JobInfo


class ProgressLine:
    """One self-overwriting line on a terminal; coarse lines otherwise (logs, CI)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, int] | None = None

    def __call__(self, phase: str, fraction: float) -> None:
        if not self.enabled:
            return
        percent = int(fraction * 100)
        step = percent if self.tty else percent // 25 * 25
        if self.last == (phase, step):
            return
        self.last = (phase, step)
        if self.tty:
            sys.stderr.write(f"\r{phase:<12} {percent:3d}%")
            if percent >= 100:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(f"{phase} {step}%\n")
        sys.stderr.flush()


class JobProgress:
    """One bar for the whole job (``overall_progress``) with its state (queue position, phase)
    beside it, drawn by rich on a terminal; where stderr is not a terminal, plain lines (a
    change of state or a quarter of the way), which logs and CI keep readable."""

    def __init__(self, enabled: bool) -> None:
        from qaas.progress import TextProgress

        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.lines = TextProgress(sys.stderr)
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, job: JobInfo) -> None:
        if not self.enabled:
            return
        if not self.tty:
            self.lines(job)
            return
        from qaas.progress import describe

        if self.bar is None:
            self.bar = _rich_bar()
            self.bar.start()
            self.task = self.bar.add_task(job.id, total=1.0, state="")
        self.bar.update(self.task, completed=job.overall_progress, state=describe(job))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _rich_bar() -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[state]}"),
        console=Console(stderr=True),
    )


def job_line(job: JobInfo) -> str:
    """``ID  STATUS`` with the queue position or overall progress and phase, and the error."""
    from qaas.progress import describe

    line = f"{job.id}  {job.status}"
    if job.status == "queued" and job.queue_position:
        line += f"  position {job.queue_position} in the queue"
    elif job.status == "running":
        line += f"  {int(100 * job.overall_progress)}%  {describe(job).removeprefix('running: ')}"
    if job.error:
        line += f"\n  {job.error.kind}: {job.error.detail}"
    return line


def jobs_table(jobs: Sequence[JobInfo]) -> str:
    """``qaas jobs list``: one job a line, newest first."""
    rows = [f"{'ID':32}  {'STATUS':9}  {'DONE':>4}  {'CREATED (UTC)':19}  {'PIPELINE':20}  MODEL"]
    for job in jobs:
        pipeline = ",".join(job.quantization.get("pipeline") or []) or "-"
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        done = f"{int(100 * job.overall_progress)}%"
        rows.append(
            f"{job.id:32}  {job.status:9}  {done:>4}  {created:19}  {pipeline:20.20}  "
            f"{job.model_id or '-'}"
        )
    return "\n".join(rows)


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def result_table(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    rows = [f"{'':<14}{'top1':>8}{'SQNR dB':>10}{'agree':>8}{'cosine':>9}"]
    for key in ("float", "simulated", "onnxruntime"):
        m = metrics.get(key, {})
        rows.append(
            f"{key:<14}{_fmt(m.get('top1'), '{:.4f}'):>8}{_fmt(m.get('sqnr_db'), '{:.2f}'):>10}"
            f"{_fmt(m.get('top1_agreement'), '{:.4f}'):>8}{_fmt(m.get('cosine'), '{:.5f}'):>9}"
        )
    gap = metrics.get("simulation_vs_onnxruntime", {})
    seconds = sum(step["seconds"] for step in report["steps"])
    rows.append(
        f"sim vs ORT agreement {_fmt(gap.get('top1_agreement'), '{:.4f}')}"
        f"{_simulated_on(metrics.get('samples') or {})}; "
        f"size {size_line(report['size_bytes'])}; {seconds:.1f} s"
    )
    rows.extend(auto_lines(report.get("auto")))
    rows.extend(f"warning: {w}" for w in report.get("warnings", []))
    return "\n".join(rows)


def _simulated_on(samples: dict[str, Any]) -> str:
    """Where the simulation ran on fewer samples than the other rows (a sampled check), so a
    row of 16 is not read beside one of 400 as the same measurement."""
    simulated, measured = samples.get("simulated"), samples.get("measured")
    if not isinstance(simulated, int) or not isinstance(measured, int) or simulated >= measured:
        return ""
    return f" (simulated row and agreement: first {simulated:,} of {measured:,} samples)"


def size_line(size: dict[str, Any]) -> str:
    """The files' sizes (the model uploaded, the ``model.quant.onnx`` downloaded): what a user
    sees on disk. The weights' packed figures, which leave out scales, zero points and the
    graph, only for a report written before the files' sizes were recorded."""
    if size.get("quantized_file") is not None:
        before = size.get("float_file", size["float"])
        return f"{before:,} -> {size['quantized_file']:,} bytes"
    return f"{size['float']:,} -> {size['quantized']:,} bytes (weights)"


def auto_lines(auto: dict[str, Any] | None) -> list[str]:
    """What pipeline auto tried, one line per configuration, and what it chose."""
    if not auto:
        return []
    lines = [f"auto: {auto['message']}"]
    for row in auto["tried"]:
        if "skipped" in row:
            lines.append(f"  {row['name']:<16} skipped: {row['skipped']}")
            continue
        lines.append(
            f"  {row['name']:<16} {_judged(row)}  energy "
            f"{row['energy_pj']:>14,.0f} pJ  {row['seconds']:7.1f} s"
            f"{'  <- chosen' if row['name'] == auto['chosen'] else ''}"
        )
    return lines


def _judged(row: dict[str, Any]) -> str:
    """A configuration's figure: its top-1 drop, or each judged output's fidelity."""
    verdicts = row.get("fidelity") or {}
    if not verdicts or all(v["metric"] == "top1" for v in verdicts.values()):
        drop = row.get("drop_points")
        return "drop    n/a" if drop is None else f"drop {drop:6.2f}"
    units = {"sqnr": "dB", "cosine": "cos", "top1": "pts lost"}
    return ", ".join(
        f"{name} {'n/a' if v['value'] is None else format(v['value'], '.4g')} "
        f"{units[v['metric']]}{'' if v['met'] else ' (missed)'}"
        for name, v in verdicts.items()
    )
