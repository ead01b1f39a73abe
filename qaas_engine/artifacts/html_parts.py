"""Small HTML pieces the report's sections share."""

from __future__ import annotations

from html import escape
from typing import Any


def _num(value: Any, pattern: str = "{:.4g}") -> str:
    return "–" if value is None else escape(pattern.format(value))


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    css_class = f' class="{css}"' if css else ""
    return f"<table{css_class}><tr>{head}</tr>{body}</table>"
