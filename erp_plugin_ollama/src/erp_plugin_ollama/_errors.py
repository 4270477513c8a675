"""Translation of the ollama SDK's (and httpx's) exceptions into the host's provider errors.

The SDK raises `ollama.ResponseError(error, status_code)` for an error answer (status -1 for an error line inside
a stream), the builtin `ConnectionError` when it cannot connect, and lets httpx's timeouts and transport errors
through; each becomes one line naming the server and what to do.
"""

from __future__ import annotations

import httpx
import ollama

from erp_plugins_core import (
    AuthenticationError,
    BadRequestError,
    ModelNotFoundError,
    ProviderError,
    ProviderTimeout,
    RateLimitError,
    UnavailableError,
)
from erp_plugins_core import redact_url as display_url

_MAX_DETAIL = 300


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def map_error(
    exc: BaseException, *, host: str, model: str | None = None, timeout: float | None = None
) -> BaseException:
    """The provider error for `exc`, raised by the ollama SDK or httpx; other exceptions are returned as is."""
    if isinstance(exc, ProviderError):
        return exc
    where = f"Ollama at {display_url(host)}"

    if isinstance(exc, ollama.ResponseError):
        status, detail = exc.status_code, _short(exc.error)
        if status == 404:
            pull = f"; pull it with `ollama pull {model}`" if model else ""
            return ModelNotFoundError(f"{where} has no model {model!r} (HTTP 404): {detail}{pull}")
        if status in (401, 403):
            return AuthenticationError(f"{where} refused the request (HTTP {status}): {detail}")
        if status == 429:
            return RateLimitError(f"{where} rate limited the request (HTTP 429): {detail}")
        if status == 408:
            return ProviderTimeout(f"{where} timed out the request (HTTP 408): {detail}")
        if status == -1:
            return UnavailableError(f"{where} failed while answering: {detail}")
        if status >= 500:
            return UnavailableError(f"{where} failed (HTTP {status}): {detail}")
        return BadRequestError(f"{where} rejected the request (HTTP {status}): {detail}")

    if isinstance(exc, httpx.TimeoutException):
        limit = f" within {timeout:g} s (config timeout)" if timeout is not None else ""
        return ProviderTimeout(f"{where} did not answer{limit}")

    if isinstance(exc, (httpx.ConnectError, ConnectionError)):
        return UnavailableError(f"cannot connect to {where}; is `ollama serve` running there? (config host)")

    if isinstance(exc, httpx.TransportError):
        return UnavailableError(f"the connection to {where} broke: {_short(str(exc) or type(exc).__name__)}")

    if isinstance(exc, ollama.RequestError):
        return BadRequestError(f"ollama request refused before sending: {_short(exc.error)}")

    return exc
