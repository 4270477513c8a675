"""What a plugin's `health_check()` answer means: `{healthy: bool, ...}` or the seed's `{status: ...}`.

`status` values `healthy`, `ok`, `up` and `pass` (any case) mean healthy and any other status unhealthy, as in
the health-check conventions plugin authors know (Spring's UP, the IETF draft's pass). An answer of neither
shape is an error quoting what came back, shortened and with secrets redacted.
"""

from __future__ import annotations

from typing import Any

from ._redact import Redactor

HEALTHY_STATUSES = frozenset({"healthy", "ok", "up", "pass"})
_QUOTE_MAX = 120


def quote(value: Any, redactor: Redactor) -> str:
    """`repr(value)` with secrets redacted, cut to a readable length."""
    text = redactor.text(" ".join(repr(value).split()))
    return text if len(text) <= _QUOTE_MAX else text[: _QUOTE_MAX - 3] + "..."


def health_verdict(report: Any, redactor: Redactor) -> tuple[bool, str | None]:
    """(healthy, None) for an answer of either shape; (False, why) quoting an answer of neither shape."""
    if isinstance(report, dict):
        healthy = report.get("healthy")
        if isinstance(healthy, bool):
            return healthy, None
        status = report.get("status")
        if "healthy" not in report and isinstance(status, str) and status.strip():
            return status.strip().lower() in HEALTHY_STATUSES, None
    return False, (
        "health_check() must return a dict with healthy: bool or status: text (healthy, ok, up or pass mean "
        f"healthy), got {quote(report, redactor)}"
    )


def unhealthy_reason(report: dict[str, Any], detail: str) -> str:
    """The plugin's own words for why it is unhealthy: its error and detail, else its status."""
    reason = str(report.get("error") or "")
    # the plugin's own words say what to fix; a bare error name alone would hide them
    reason = f"{reason}: {detail}" if reason and detail and reason not in detail else (reason or detail)
    if not reason and isinstance(report.get("status"), str):
        reason = f"status {report['status']!r}"
    return reason or "unhealthy"
