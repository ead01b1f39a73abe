"""What ``qaas quantize`` and ``qaas submit --wait`` print: a progress line and the result
table of a report."""

from __future__ import annotations

import sys
from typing import Any


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
    size = report["size_bytes"]
    seconds = sum(step["seconds"] for step in report["steps"])
    rows.append(
        f"sim vs ORT agreement {_fmt(gap.get('top1_agreement'), '{:.4f}')}; "
        f"size {size['float']:,} -> {size['quantized']:,} bytes; {seconds:.1f} s"
    )
    rows.extend(auto_lines(report.get("auto")))
    rows.extend(f"warning: {w}" for w in report.get("warnings", []))
    return "\n".join(rows)


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
            f"  {row['name']:<16} drop {row['drop_points']:6.2f}  energy "
            f"{row['energy_pj']:>14,.0f} pJ  {row['seconds']:7.1f} s"
            f"{'  <- chosen' if row['name'] == auto['chosen'] else ''}"
        )
    return lines
