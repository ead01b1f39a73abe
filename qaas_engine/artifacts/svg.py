"""Hand-written SVG charts: a report that opens offline needs no plotting library or CDN.

Each function returns one ``<svg>`` element as a string, every label escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH = 760
LABEL_WIDTH = 230
PALETTE = {
    "float": "#8c8c8c",
    "quantized": "#1f77b4",
    "before": "#d62728",
    "after": "#2ca02c",
    "weights only": "#ff7f0e",
    "activations only": "#9467bd",
    "full model": "#1f77b4",
    "validation": "#1f77b4",
    "train loss": "#d62728",
    "frontier": "#1f77b4",
    "other configurations": "#8c8c8c",
}
Series = tuple[str, Sequence[float | None]]


def _color(name: str, index: int) -> str:
    fallback = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
    return PALETTE.get(name, fallback[index % len(fallback)])


def _fmt(value: float) -> str:
    """A tick or tooltip number people read at a glance: 250k, 1.5M, 0.05, 3.2e-05."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    if magnitude < 0.001:
        return f"{value:.2g}"
    return f"{value:.4g}"


def nice_step(span: float, count: int = 5) -> float:
    """The 1-2-5 step (…, 0.5, 1, 2, 5, 10, …) that cuts ``span`` into at most ``count``
    intervals: ticks land on round numbers (10, 20, 30), never on 15.9 or 31.8."""
    if not math.isfinite(span) or span <= 0:
        return 1.0
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 5.0, 10.0):
        if multiple * power >= raw * (1 - 1e-9):
            return multiple * power
    return 10.0 * power


def _round_to_step(value: float, step: float) -> float:
    """``value`` without the float noise of k * step (0.30000000000000004 -> 0.3)."""
    return round(value, max(0, -math.floor(math.log10(step)) + 1))


def short_labels(labels: Sequence[str], width: int = 38) -> list[str]:
    """Labels that fit ``width`` characters and stay tell-apart: the path segments every label
    shares at the start (then the end) go first, then the middle of what is still too long,
    the cut placed where the labels stay distinct; equal names get a number."""
    shown = list(labels)
    if any(len(label) > width for label in labels):
        trimmed = _without_common_parts(labels, suffix=False)
        if any(len(label) > width for label in trimmed):
            trimmed = _without_common_parts(labels, suffix=True)
        distinct = len(set(labels))
        cuts = ([_middle_cut(t, width, head) for t in trimmed] for head in _head_lengths(width))
        fallback = [_middle_cut(t, width, (width - 1) // 3) for t in trimmed]
        shown = next((cut for cut in cuts if len(set(cut)) == distinct), fallback)
    seen: dict[str, int] = {}
    for i, label in enumerate(shown):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            shown[i] = f"{label} #{seen[label]}"
    return shown


def _head_lengths(width: int) -> list[int]:
    """Where to cut, the most balanced first (a third kept before the "…")."""
    preferred = (width - 1) // 3
    return sorted(range(width), key=lambda head: abs(head - preferred))


def _without_common_parts(labels: Sequence[str], suffix: bool) -> list[str]:
    """``/net/a/Conv/out``, ``/net/b/Conv/out`` -> ``…/a/Conv/…``, ``…/b/Conv/…``: what every
    label shares says nothing about which layer a bar is."""
    if len(set(labels)) < 2:
        return list(labels)
    parts = [label.split("/") for label in labels]
    start = 1 if all(p[0] == "" for p in parts) else 0  # a leading "/" is no prefix to drop
    first = start
    while all(len(p) > first + 1 for p in parts) and len({p[first] for p in parts}) == 1:
        first += 1
    last = 0  # shared trailing segments, leaving at least one distinct segment in each
    while (
        suffix
        and all(len(p) - last - 1 > first for p in parts)
        and len({p[-1 - last] for p in parts}) == 1
    ):
        last += 1
    if first == start and last == 0:
        return list(labels)
    head = "…/" if first > start else ("/" if start else "")
    tail = "/…" if last else ""
    return [head + "/".join(p[first : len(p) - last]) + tail for p in parts]


def _middle_cut(label: str, width: int, head: int) -> str:
    """``head`` characters of the start, "…", then the end: ``width`` characters at most."""
    if len(label) <= width:
        return label
    return label[:head] + "…" + label[len(label) - (width - 1 - head) :]


class _Scale:
    """Maps values to pixels along [0, length]; log10 when asked (values must be > 0)."""

    low: float
    high: float
    step: float = 1.0

    def __init__(
        self, values: Sequence[float], length: float, log: bool, from_zero: bool = True
    ) -> None:
        finite = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
        self.log = log and bool(finite)
        if self.log:
            self.low = math.floor(math.log10(min(finite)))
            self.high = max(math.ceil(math.log10(max(finite))), self.low + 1)
        else:
            if not from_zero and finite:  # the data's own span, padded: points apart, not at 0
                span = (max(finite) - min(finite)) or abs(max(finite)) or 1.0
                low, high = min(finite) - 0.1 * span, max(finite) + 0.1 * span
            else:
                low, high = min([0.0, *finite]), max([0.0, *finite])
                if high == low:
                    high = low + 1.0
            # widened to whole 1-2-5 steps, so the first and last ticks are round numbers too
            self.step = nice_step(high - low)
            self.low = math.floor(low / self.step + 1e-9) * self.step
            self.high = math.ceil(high / self.step - 1e-9) * self.step
        self.length = length

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(max(value, 10.0**self.low))
        return (value - self.low) / (self.high - self.low) * self.length

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0**e for e in range(int(self.low), int(self.high) + 1)]
        count = round((self.high - self.low) / self.step)
        return [_round_to_step(self.low + i * self.step, self.step) for i in range(count + 1)]


def _legend(series: Sequence[Series], x: float, y: float) -> list[str]:
    parts = []
    for index, (name, _) in enumerate(series):
        cx = x + index * 150
        parts.append(
            f'<rect x="{cx:.1f}" y="{y - 9:.1f}" width="10" height="10" '
            f'fill="{_color(name, index)}"/>'
            f'<text x="{cx + 14:.1f}" y="{y:.1f}">{escape(name)}</text>'
        )
    return parts


def _frame(title: str, height: float, body: list[str]) -> str:
    return (
        f'<svg class="plot" role="img" width="{WIDTH}" '
        f'height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" font-size="11" '
        f'font-family="sans-serif"><title>{escape(title)}</title>'
        f'<text x="4" y="14" font-size="13" font-weight="bold">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def hbar_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], unit: str, log: bool = False
) -> str:
    """Grouped horizontal bars, one row per label: readable with 50+ layers."""
    bar = 9
    row = bar * len(series) + 6
    top, plot_width = 40, WIDTH - LABEL_WIDTH - 20
    values = [v for _, vs in series for v in vs if v is not None]
    scale = _Scale(values, plot_width, log)
    height = top + row * len(labels) + 40
    body = _legend(series, LABEL_WIDTH, 30)
    zero = LABEL_WIDTH + (scale(scale.low) if scale.log else scale(0.0))
    for tick in scale.ticks():
        x = LABEL_WIDTH + scale(tick)
        body.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 34}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{height - 20}" text-anchor="middle">{_fmt(tick)}</text>'
        )
    body.append(
        f'<text x="{WIDTH - 20}" y="{height - 3}" text-anchor="end">{escape(unit)}'
        f"{' (log scale)' if scale.log else ''}</text>"
    )
    for i, (label, short) in enumerate(zip(labels, short_labels(labels), strict=True)):
        y = top + i * row
        body.append(
            f'<text x="{LABEL_WIDTH - 4}" y="{y + row / 2 + 3:.1f}" text-anchor="end">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
        )
        for j, (name, vs) in enumerate(series):
            value = vs[i]
            if value is None or not math.isfinite(value):
                continue
            end = LABEL_WIDTH + scale(value)
            x, w = min(zero, end), max(abs(end - zero), 0.8)
            body.append(
                f'<rect x="{x:.1f}" y="{y + 3 + j * bar:.1f}" width="{w:.1f}" height="{bar - 1}" '
                f'fill="{_color(name, j)}"><title>{escape(label)} {escape(name)}: '
                f"{_fmt(value)} {escape(unit)}</title></rect>"
            )
    return _frame(title, height, body)


def column_chart(title: str, series: Sequence[Series], unit: str, x_label: str) -> str:
    """Grouped vertical bars over an index (channels): the before/after CLE picture."""
    top, bottom, left = 40, 36, 50
    plot_h, plot_w = 160, WIDTH - left - 10
    count = max((len(vs) for _, vs in series), default=0)
    values = [v for _, vs in series for v in vs if v is not None]
    scale = _Scale(values, plot_h, False)
    height = top + plot_h + bottom
    body = _legend(series, left, 30)
    for tick in scale.ticks():
        y = top + plot_h - scale(tick)
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    slot = plot_w / max(count, 1)
    bar = max(slot * 0.8 / max(len(series), 1), 0.5)
    for j, (name, vs) in enumerate(series):
        for i, value in enumerate(vs):
            if value is None:
                continue
            h = max(scale(value) - scale(0.0), 0.5)
            x = left + i * slot + slot * 0.1 + j * bar
            body.append(
                f'<rect x="{x:.2f}" y="{top + plot_h - scale(value):.1f}" width="{bar:.2f}" '
                f'height="{h:.1f}" fill="{_color(name, j)}"><title>{escape(x_label)} {i} '
                f"{escape(name)}: {_fmt(value)}</title></rect>"
            )
    body.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        f"{escape(x_label)} (0..{max(count - 1, 0)}); {escape(unit)}</text>"
    )
    return _frame(title, height, body)


def line_chart(
    title: str, xs: Sequence[float], series: Sequence[Series], x_label: str, unit: str
) -> str:
    """Lines with markers over a shared x axis (the QAT curve)."""
    top, bottom, left = 40, 36, 50
    plot_h, plot_w = 180, WIDTH - left - 20
    values = [v for _, vs in series for v in vs if v is not None]
    y_scale = _Scale(values, plot_h, False)
    x_scale = _Scale(list(xs), plot_w, False)
    height = top + plot_h + bottom
    body = _legend(series, left, 30)
    for tick in y_scale.ticks():
        y = top + plot_h - y_scale(tick)
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - 20}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    for x_value in xs:
        body.append(
            f'<text x="{left + x_scale(x_value):.1f}" y="{top + plot_h + 14}" '
            f'text-anchor="middle">{_fmt(x_value)}</text>'
        )
    for j, (name, vs) in enumerate(series):
        points = [
            (left + x_scale(x), top + plot_h - y_scale(v))
            for x, v in zip(xs, vs, strict=False)
            if v is not None
        ]
        if not points:
            continue
        color = _color(name, j)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        body.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points)
    body.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">'
        f"{escape(x_label)}; {escape(unit)}</text>"
    )
    return _frame(title, height, body)


def scatter_chart(
    title: str,
    points: Sequence[tuple[str, float, float, bool]],
    x_label: str,
    y_label: str,
) -> str:
    """Labelled points (name, x, y, highlighted) with the highlighted ones joined by a line:
    the accuracy-vs-energy frontier of the configurations pipeline auto tried."""
    top, bottom, left = 40, 36, 60
    plot_h, plot_w = 220, WIDTH - left - 140
    x_scale = _Scale([p[1] for p in points], plot_w, False, from_zero=False)
    y_scale = _Scale([p[2] for p in points], plot_h, False, from_zero=False)
    height = top + plot_h + bottom
    body = _legend([("frontier", []), ("other configurations", [])], left, 30)
    for tick in y_scale.ticks():
        y = top + plot_h - y_scale(tick)
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    for tick in x_scale.ticks():
        x = left + x_scale(tick)
        body.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{_fmt(tick)}</text>'
        )
    placed = [(name, left + x_scale(x), top + plot_h - y_scale(y), on) for name, x, y, on in points]
    frontier = sorted((px, py) for _, px, py, on in placed if on)
    if len(frontier) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in frontier)
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{_color("frontier", 0)}" '
            'stroke-width="2"/>'
        )
    for name, px, py, on in placed:
        color = _color("frontier", 0) if on else _color("other configurations", 1)
        body.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{color}"><title>{escape(name)}'
            f"</title></circle>"
            f'<text x="{px + 6:.1f}" y="{py - 5:.1f}">{escape(name)}</text>'
        )
    body.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">'
        f"{escape(x_label)}; vertical: {escape(y_label)}</text>"
    )
    return _frame(title, height, body)
