"""Jinja2 rendering of the console's pages (autoescaped; no script anywhere, so the CSP forbids all)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"


_ENV.filters["when"] = _when


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """The page `name` with `context` (plus `session`, `csrf` and `title` defaults)."""
    data = {"session": None, "csrf": "", "title": "", "flash": None, **context}
    html = _ENV.get_template(name).render(**data)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
