"""The pages' HTML: small, no framework, no external URL; the jobs list fills itself from
``/ui/jobs.json`` so state and progress stay live without reloading."""

from __future__ import annotations

from html import escape

STYLE = """
body{font-family:sans-serif;margin:1.5em auto;max-width:960px;color:#222}
table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left}progress{width:120px}.muted{color:#777}.failed{color:#b00}
.succeeded{color:#080}form.inline{display:inline}
"""
HEAD = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<link rel="icon" href="data:,"><title>{title}</title><style>{style}</style></head><body>'
)

JOBS_SCRIPT = """
const body = document.getElementById("jobs");
const stamp = document.getElementById("updated");
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
function cell(row, text, cls) {
  const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td;
}
function render(jobs) {
  body.replaceChildren();
  if (jobs.length === 0) {
    cell(body.insertRow(), "no jobs yet: submit one with qaas submit", "muted").colSpan = 5;
  }
  for (const job of jobs) {
    const row = body.insertRow();
    row.dataset.job = job.id;
    cell(row, job.id);
    cell(row, job.status, job.status);
    const progress = row.insertCell();
    const bar = document.createElement("progress");
    bar.max = 1; bar.value = job.progress || 0;
    progress.append(bar, " " + (job.phase || ""));
    cell(row, job.created_at.replace("T", " ").slice(0, 19));
    const link = row.insertCell();
    if (job.report_url) {
      const a = document.createElement("a"); a.href = job.report_url; a.textContent = "report";
      link.append(a);
    } else if (job.error) { link.textContent = job.error; link.className = "failed"; }
  }
  stamp.textContent = "updated " + new Date().toLocaleTimeString();
  return jobs.some((job) => !TERMINAL.has(job.status));
}
async function refresh() {
  let busy = false;
  try {
    const response = await fetch("/ui/jobs.json", {credentials: "same-origin"});
    if (response.status === 401) { window.location = "/ui/login"; return; }
    busy = render(await response.json());
  } catch (error) { stamp.textContent = "could not refresh: " + error; }
  setTimeout(refresh, busy ? 1000 : 5000);
}
refresh();
"""


def login_page(csrf_token: str, message: str | None = None) -> str:
    note = f'<p class="failed">{escape(message)}</p>' if message else ""
    return (
        HEAD.format(title="qaas: log in", style=STYLE)
        + "<h1>qaas</h1>"
        + note
        + '<form method="post" action="/ui/login">'
        + _csrf_field(csrf_token)
        + '<label>API key <input type="password" name="key" autocomplete="current-password" '
        'size="50" required></label> <button type="submit">Log in</button></form>'
        '<p class="muted">The key printed by <code>qaas serve</code> or made with '
        "<code>qaas keys create</code>. It is checked once; this browser then holds only a "
        "session cookie (HttpOnly, this site only) until you log out.</p>"
        "</body></html>"
    )


def jobs_page(tenant_name: str, nonce: str, csrf_token: str) -> str:
    return (
        HEAD.format(title="qaas: jobs", style=STYLE)
        + f"<h1>Jobs of {escape(tenant_name)}</h1>"
        + '<p class="muted"><span id="updated">loading…</span> · '
        '<form class="inline" method="post" action="/ui/logout">'
        + _csrf_field(csrf_token)
        + '<button type="submit">Log out</button></form></p>'
        "<table><thead><tr><th>job</th><th>state</th><th>progress</th><th>created (UTC)</th>"
        '<th>report</th></tr></thead><tbody id="jobs"></tbody></table>'
        + f'<script nonce="{nonce}">{JOBS_SCRIPT}</script></body></html>'
    )


def _csrf_field(token: str) -> str:
    """Every POST form carries one (checked in app.pages.csrf)."""
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'
