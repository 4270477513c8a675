"""Errors as RFC 9457 `application/problem+json` (`type`, `title`, `status`, `detail`) with the CLI's messages.

Every PluginError the host raises maps to one status here, so a route only raises and never formats errors.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .._errors import (
    AllPluginsFailed,
    ConfigError,
    DependencyError,
    HookArgumentError,
    IntegrityError,
    LifecycleError,
    PermissionDenied,
    PluginError,
    SandboxError,
    StateError,
    StreamInterrupted,
    UnknownHookError,
    UnknownPluginError,
)
from .._tokens import TokenError

MEDIA_TYPE = "application/problem+json"

#: Status of each error class, most specific first.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (TokenError, 401),
    (UnknownPluginError, 404),
    (UnknownHookError, 404),
    (HookArgumentError, 422),
    (ConfigError, 422),
    (DependencyError, 409),
    (PermissionDenied, 409),
    (IntegrityError, 409),
    (LifecycleError, 404),
    (AllPluginsFailed, 502),
    (StreamInterrupted, 502),
    (SandboxError, 503),
    (StateError, 503),
    (PluginError, 400),
)


class Problem(Exception):
    """An HTTP error to answer with: status, one-line detail, and optional headers (WWW-Authenticate)."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def status_of(exc: BaseException) -> int:
    """The HTTP status for a host error."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem_body(status: int, detail: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The problem document for `status` with `detail`."""
    title = HTTPStatus(status).phrase
    slug = title.lower().replace(" ", "-").replace("'", "")
    return {"type": f"https://erp-plugins.dev/problems/{slug}", "title": title, "status": status,
            "detail": detail, **(extra or {})}


def problem_response(status: int, detail: str, *, headers: dict[str, str] | None = None,
                     extra: dict[str, Any] | None = None) -> Response:
    """A problem+json response."""
    body = json.dumps(problem_body(status, detail, extra)).encode()
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def from_exception(exc: BaseException) -> Problem:
    """A Problem for any exception a route let through (internal errors name only their class)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, PluginError):
        extra = None
        if isinstance(exc, AllPluginsFailed):
            results = getattr(exc, "results", None) or []
            extra = {"errors": [{"plugin": r.plugin, "error": r.error, "error_kind": r.error_kind} for r in results]}
        headers = {"WWW-Authenticate": 'Bearer realm="erp-plugins"'} if isinstance(exc, TokenError) else None
        return Problem(status_of(exc), str(exc), headers=headers, extra=extra)
    return Problem(500, f"internal error ({type(exc).__name__}); see the server log")


async def handle(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: every error as problem+json."""
    problem = from_exception(exc)
    if problem.status >= 500 and not isinstance(exc, (Problem, PluginError)):
        import logging

        logging.getLogger("erp_plugins.server").error("internal error on %s %s", request.method,
                                                      request.url.path, exc_info=exc)
    return problem_response(problem.status, problem.detail, headers=problem.headers, extra=problem.extra)
