"""The jobs list and a job's page, rendered on the server: the filters are a GET form (they
work without script), and while a job is queued or running the list reloads itself with a
``<meta http-equiv="refresh">`` instead of a script, so the pages run under ``script-src
'none'``."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from app.jobs.tables import TERMINAL
from app.pages.repository import STATUSES
from app.pages.summary import JobSummary
from app.pages.views import HEAD, STYLE, csrf_field

REFRESH_S = 3
PAGE_STYLE = """
.nowrap{white-space:nowrap}.num{text-align:right}.filters{margin:.5em 0 1em}
.filters label{margin-right:1em}.bar{background:#1f77b4;height:10px;display:inline-block}
.warn{color:#b00}.cancelled{color:#777}.running,.queued{color:#a60}code{font-size:.9em}
.top{display:flex;justify-content:space-between;align-items:center}
.lane{position:relative;height:12px;background:#f3f3f3}.lane .bar{position:absolute;top:1px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}dt{color:#555}dd{margin:0}
"""


def jobs_list_page(
    tenant_name: str,
    csrf_token: str,
    jobs: list[JobSummary],
    filters: dict[str, str],
) -> str:
    """The table the issue asked for: model, pipeline, target, accuracy, energy, size,
    duration, status; each row links its job page."""
    active = any(job.status not in TERMINAL for job in jobs)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if active else ""
    rows = "".join(_job_row(job) for job in jobs) or (
        '<tr><td colspan="10" class="muted">no jobs'
        + (" match these filters" if any(filters.values()) else " yet: submit one with qaas submit")
        + "</td></tr>"
    )
    header = "".join(
        f"<th{' class=num' if numeric else ''}>{escape(title)}</th>"
        for title, numeric in (
            ("model", False), ("pipeline", False), ("target", False), ("accuracy Δ", True),
            ("energy", True), ("size", True), ("duration", True), ("status", False),
            ("created (UTC)", False), ("", False),
        )
    )  # fmt: skip
    return (
        _head("qaas: jobs", refresh)
        + _top_bar(csrf_token)
        + f"<h1>Jobs of {escape(tenant_name)}</h1>"
        + _filters(filters)
        + f'<table id="jobs-table"><thead><tr>{header}</tr></thead><tbody id="jobs">{rows}'
        "</tbody></table>"
        '<p class="muted">accuracy Δ: top-1 points of the quantized model in ONNX Runtime '
        "against float (agreement points without labels); energy: modelled float ÷ quantized; "
        "size: model.quant.onnx as downloaded.</p></body></html>"
    )


def _job_row(job: JobSummary) -> str:
    model = (
        escape(job.model_name) if job.model_name else '<span class="muted">(model deleted)</span>'
    )
    status = escape(job.status)
    if job.status not in TERMINAL:
        status += (
            f' <progress max="1" value="{job.progress:.3f}"></progress> '
            f'<span class="muted">{escape(job.phase or "")}</span>'
        )
    elif job.status == "succeeded":
        status += ' <progress max="1" value="1"></progress>'
    if job.error:
        status += f'<br><span class="failed">{escape(_error_text(job)[:120])}</span>'
    cells = [
        f'<a href="/ui/jobs/{quote(job.id)}">{model}</a>',
        escape(",".join(job.pipeline) or "ptq"),
        escape(job.target or "–") + (f" ({escape(job.kernel_mode)})" if job.kernel_mode else ""),
        _delta(job.accuracy_delta, job.accuracy_measure),
        "–" if job.energy_ratio is None else f"{job.energy_ratio:.1f}× less",
        human_bytes(job.artifact_bytes),
        human_seconds(job.duration_s),
        status,
        job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        f'<a href="/ui/jobs/{quote(job.id)}/report">report</a>' if job.has_report else "",
    ]
    numeric = {3, 4, 5, 6}
    tds = "".join(
        f'<td class="{"num nowrap" if i in numeric else ("nowrap" if i == 8 else "")}">{c}</td>'
        for i, c in enumerate(cells)
    )
    return f'<tr data-job="{escape(job.id)}">{tds}</tr>'


def _error_text(job: JobSummary) -> str:
    """``cancelled: cancelled by request`` says it twice: the kind only where it adds to it."""
    kind, _, detail = (job.error or "").partition(": ")
    return detail if kind == job.status and detail else job.error or ""


def _filters(filters: dict[str, str]) -> str:
    options = "".join(
        f'<option value="{s}"{" selected" if filters.get("status") == s else ""}>{s or "any"}'
        "</option>"
        for s in ("", *STATUSES)
    )
    model = escape(filters.get("model", ""))
    return (
        '<form class="filters" method="get" action="/ui/jobs">'
        f'<label>status <select name="status">{options}</select></label>'
        f'<label>model file <input type="search" name="model" value="{model}" size="24">'
        '</label><button type="submit">Filter</button> <a href="/ui/jobs">clear</a></form>'
    )


def job_page(csrf_token: str, job: JobSummary, row: dict[str, Any]) -> str:
    """One job: what it ran on and with, its steps as a timeline, warnings, files, error."""
    report = row.get("report") or {}
    active = job.status not in TERMINAL
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if active else ""
    title = job.model_name or "(model deleted)"
    facts = [
        ("job", f"<code>{escape(job.id)}</code>"),
        ("status", _status(job)),
        ("model", escape(title)),
        ("pipeline", escape(",".join(job.pipeline) or "ptq") + _auto_choice(report)),
        ("quantization", escape(_scheme(row.get("spec") or {}))),
        ("target", escape(job.target or "–")),
        ("accuracy Δ", _delta(job.accuracy_delta, job.accuracy_measure)),
        ("energy", "–" if job.energy_ratio is None else f"{job.energy_ratio:.2f}× less (modelled)"),
        ("created (UTC)", job.created_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("duration", human_seconds(job.duration_s)),
    ]
    if (measured := (report.get("metrics") or {}).get("dataset")) is not None:
        facts.insert(6, ("measured on", f"the {escape(str(measured))} data"))
    body = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    if job.has_report:
        body += f'<p><a href="/ui/jobs/{quote(job.id)}/report"><b>Open the report</b></a></p>'
    if job.error:
        body += f'<h2>Error</h2><p class="failed">{escape(job.error)}</p>'
    warnings = report.get("warnings") or []
    if warnings:
        body += (
            "<h2>Warnings</h2><ul>"
            + "".join(f'<li class="warn">{escape(w)}</li>' for w in warnings)
            + "</ul>"
        )
    body += "<h2>Steps</h2>" + step_timeline(report.get("steps") or row.get("steps") or [])
    body += "<h2>Artifacts</h2>" + _artifacts(job)
    return (
        _head(f"qaas: job {title}", refresh)
        + _top_bar(csrf_token)
        + f"<h1>{escape(title)}</h1>"
        + body
        + "</body></html>"
    )


def step_timeline(steps: list[dict[str, Any]]) -> str:
    """Each step as a bar on one time axis (where it started, how long it took), in run order."""
    timed = [s for s in steps if isinstance(s.get("seconds"), int | float)]
    if not timed:
        return '<p class="muted">no step has finished yet</p>'
    total = sum(s["seconds"] for s in timed)
    rows, start = [], 0.0
    for step in timed:
        left = 100.0 * start / (total or 1.0)
        width = max(100.0 * step["seconds"] / (total or 1.0), 0.3)
        rows.append(
            f"<tr><td>{escape(str(step.get('name', '?')))}</td>"
            f'<td class="num nowrap">+{human_seconds(start)}</td>'
            f'<td class="num nowrap">{human_seconds(step["seconds"])}</td>'
            f'<td style="width:55%"><div class="lane"><span class="bar" '
            f'style="left:{left:.2f}%;width:{width:.2f}%"></span></div></td></tr>'
        )
        start += step["seconds"]
    return (
        '<table class="timeline"><thead><tr><th>step</th><th class="num">started</th>'
        '<th class="num">took</th><th></th></tr></thead><tbody>'
        + "".join(rows)
        + f'</tbody></table><p class="muted">{len(timed)} steps, {human_seconds(total)} in all</p>'
    )


def _artifacts(job: JobSummary) -> str:
    if not job.artifacts:
        return '<p class="muted">none (artifacts exist once the job succeeds)</p>'
    items = []
    for artifact in job.artifacts:
        name = str(artifact["name"])
        link = f"/ui/jobs/{quote(job.id)}/artifacts/{quote(name)}"
        view = (
            f' · <a href="/ui/jobs/{quote(job.id)}/report">open</a>'
            if name == "report.html"
            else ""
        )
        items.append(
            f'<tr><td><a href="{link}" download>{escape(name)}</a>{view}</td>'
            f'<td class="num nowrap">{human_bytes(artifact.get("size_bytes"))}</td>'
            f'<td><code class="muted">{escape(str(artifact.get("sha256", ""))[:16])}</code>'
            "</td></tr>"
        )
    return (
        '<table><thead><tr><th>file</th><th class="num">size</th><th>sha256</th></tr></thead>'
        f"<tbody>{''.join(items)}</tbody></table>"
    )


def _auto_choice(report: dict[str, Any]) -> str:
    auto = report.get("auto")
    if not auto:
        return ""
    return (
        f" → chose <b>{escape(str(auto.get('chosen')))}</b> "
        f"({escape(','.join(auto.get('chosen_pipeline') or []) or 'calibration only')})"
        f'<br><span class="muted">{escape(str(auto.get("message", "")))}</span>'
    )


def _scheme(spec: dict[str, Any]) -> str:
    """W8A8 per-channel, minmax: what a person reads first about a quantization."""
    activations = spec.get("activation_bits")
    return (
        f"W{spec.get('weight_bits', '?')}A{activations or 'float'} "
        f"{spec.get('weight_granularity', '')}, {spec.get('calibration_method', '')} calibration"
    )


def _status(job: JobSummary) -> str:
    text = f'<span class="{escape(job.status)}">{escape(job.status)}</span>'
    if job.status not in TERMINAL:
        text += (
            f' <progress max="1" value="{job.progress:.3f}"></progress> {escape(job.phase or "")}'
        )
    return text


def _delta(delta: float | None, measure: str | None) -> str:
    if delta is None:
        return "–"
    unit = "pt" if measure == "top-1" else "pt agr."
    return f"{delta:+.2f} {unit}"


def _head(title: str, extra: str = "") -> str:
    return HEAD.format(title=escape(title), style=STYLE + PAGE_STYLE).replace(
        "</head>", extra + "</head>", 1
    )


def _top_bar(csrf_token: str) -> str:
    """The way back to the list and the way out, on every job page."""
    return (
        '<div class="top"><a href="/ui/jobs">all jobs</a>'
        '<form class="inline" method="post" action="/ui/logout">'
        + csrf_field(csrf_token)
        + '<button type="submit">Log out</button></form></div>'
    )


def human_bytes(size: int | None) -> str:
    if size is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"
