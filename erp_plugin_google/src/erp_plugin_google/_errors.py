"""Google's errors as the host's error classes, each with a message that says what to fix.

| Google says | raised as |
| --- | --- |
| 401, or the token endpoint refuses the refresh token | AuthenticationError: re-authorise |
| 403 with an insufficient-scope reason | AuthenticationError naming the scope to add (the fix is new consent) |
| 403 rate-limit reasons, 429 | RateLimitError (after the client's own retries) |
| other 403 | BadRequestError with Google's message (e.g. no access to that folder) |
| 404 | ModelNotFoundError naming the folder or calendar |
| other 4xx | BadRequestError with Google's message |
| 5xx, connection failures | UnavailableError (after the client's own retries); socket timeouts ProviderTimeout |
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import httplib2
from google.auth import exceptions as auth_exceptions
from googleapiclient.errors import HttpError

from erp_plugins_core import (
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    ProviderError,
    ProviderTimeout,
    RateLimitError,
    UnavailableError,
)

from . import _scopes

_SCOPE_REASONS = {"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "insufficient_scope"}
_RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded", "dailyLimitExceeded"}

#: Exceptions of the transport (httplib2 over sockets) that mean "the service could not be reached".
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    httplib2.HttpLib2Error,
    http.client.HTTPException,
)


def _error_body(exc: HttpError) -> dict[str, Any]:
    try:
        data = json.loads(exc.content.decode("utf-8", "replace"))
    except (ValueError, AttributeError):
        return {}
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else {}


def _reasons(exc: HttpError, body: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for item in body.get("errors") or []:
        if isinstance(item, dict) and isinstance(item.get("reason"), str):
            found.add(item["reason"])
    for item in body.get("details") or []:
        if isinstance(item, dict) and isinstance(item.get("reason"), str):
            found.add(item["reason"])
    www = exc.resp.get("www-authenticate", "") if exc.resp is not None else ""
    if "insufficient_scope" in www:
        found.add("insufficient_scope")
    return found


def _message(body: dict[str, Any], exc: HttpError) -> str:
    msg = body.get("message")
    if isinstance(msg, str) and msg:
        return msg.strip()
    return exc.resp.reason if exc.resp is not None and exc.resp.reason else f"HTTP {exc.status_code}"


def _retry_after(exc: HttpError) -> float | None:
    raw = exc.resp.get("retry-after") if exc.resp is not None else None
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def map_http_error(exc: HttpError, *, hook: str, resource: str) -> ProviderError:
    """The host error for an HttpError raised while `hook` worked on `resource` (e.g. "Drive folder 'x'")."""
    status = exc.status_code or 0
    body = _error_body(exc)
    reasons = _reasons(exc, body)
    google_says = _message(body, exc)
    if status == 401:
        return AuthenticationError(
            f"Google refused the credentials for {hook} ({google_says}); re-authorise: create a new "
            f"credentials file (or check the service account's key and delegation) and update the config"
        )
    if status == 403 and reasons & _SCOPE_REASONS:
        scope = _scopes.HOOK_SCOPES[hook][0]
        return AuthenticationError(
            f"Google refused {hook}: the credentials lack the scope {scope}; add it to 'scopes' and "
            f"re-authorise so the token carries it"
        )
    if status == 429 or (status == 403 and reasons & _RATE_REASONS):
        return RateLimitError(f"Google rate-limited {hook} ({google_says}); try again later", _retry_after(exc))
    if status == 404:
        return ModelNotFoundError(
            f"{resource} does not exist or is not shared with this account ({google_says}); check the id"
        )
    if status >= 500:
        return UnavailableError(f"Google failed {hook} with HTTP {status} ({google_says}) after retries")
    if status == 403:
        return BadRequestError(f"Google refused {hook} on {resource}: {google_says}")
    return BadRequestError(f"Google rejected {hook} ({status}): {google_says}")


def map_error(exc: BaseException, *, hook: str, resource: str) -> BaseException:
    """The host error for any exception the client raised; other exceptions are returned unchanged."""
    if isinstance(exc, HttpError):
        return map_http_error(exc, hook=hook, resource=resource)
    if isinstance(exc, auth_exceptions.RefreshError):
        said = exc.args[0] if exc.args and isinstance(exc.args[0], str) else type(exc).__name__
        return AuthenticationError(
            f"the Google token could not be refreshed for {hook} ({said[:200]}); "
            f"re-authorise: create a new credentials file and update the config"
        )
    if isinstance(exc, auth_exceptions.TransportError):
        return UnavailableError(f"the Google token endpoint is unreachable ({type(exc).__name__}); check the network")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ProviderTimeout(f"Google did not answer {hook} in time; try again")
    if isinstance(exc, TRANSPORT_ERRORS):
        return UnavailableError(f"cannot reach Google for {hook} ({type(exc).__name__}: {exc}); check the network")
    return exc
