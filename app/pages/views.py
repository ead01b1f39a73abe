"""The pages' HTML: small, no framework, no external URL, no script (the job pages are in
``job_views``)."""

from __future__ import annotations

from html import escape

STYLE = """
body{font-family:sans-serif;margin:1.5em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;width:100%}td,th{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left}progress{width:80px}.muted{color:#777}.failed{color:#b00}
.succeeded{color:#080}form.inline{display:inline}
"""
HEAD = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<link rel="icon" href="data:,"><title>{title}</title><style>{style}</style></head><body>'
)


def login_page(csrf_token: str, message: str | None = None) -> str:
    note = f'<p class="failed">{escape(message)}</p>' if message else ""
    return (
        HEAD.format(title="qaas: log in", style=STYLE)
        + "<h1>qaas</h1>"
        + note
        + '<form method="post" action="/ui/login">'
        + csrf_field(csrf_token)
        + '<label>API key <input type="password" name="key" autocomplete="current-password" '
        'size="50" required></label> <button type="submit">Log in</button></form>'
        '<p class="muted">The key printed by <code>qaas serve</code> or made with '
        "<code>qaas keys create</code>. It is checked once; this browser then holds only a "
        "session cookie (HttpOnly, this site only) until you log out.</p>"
        "</body></html>"
    )


def csrf_field(token: str) -> str:
    """Every POST form carries one (checked in app.pages.csrf)."""
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'
