"""Translation of the openai SDK's exceptions into the host's provider errors.

Each message says which server failed and how, in one line, and never contains the API key: the server's own
text is dropped for authentication failures (OpenAI echoes part of the key there) and scrubbed elsewhere.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable
from typing import Any

import openai

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

_REDACTED = "***"
_MAX_DETAIL = 300


def http_error_kind(exc: BaseException) -> str | None:
    """"timeout" or "transport" for an error of the HTTP library under the SDK (httpx, or httpx2 in newer SDKs).

    The SDK wraps errors of the request itself, but older versions let an error while reading a stream's body
    through raw. Matched by class name within the library's own hierarchy, so neither library is imported here.
    """
    names = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.split(".")[0] in {"httpx", "httpx2"}}
    if "TimeoutException" in names:
        return "timeout"
    if "TransportError" in names:
        return "transport"
    return None


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` on one line, shortened, with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
        parsed = email.utils.parsedate_tz(value) if header == "retry-after" else None
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
    return exc.message


def map_error(
    exc: BaseException, *, base_url: str, model: str | None = None, secrets: Iterable[str] = (),
    timeout: float | None = None,
) -> BaseException:
    """The provider error for `exc`, an exception raised by the openai SDK; other exceptions are returned as is.

    `base_url` names the server in the message; `secrets` (the API key) are removed from any text taken over.
    """
    if isinstance(exc, ProviderError):
        return exc
    secrets = tuple(secrets)
    where = f"OpenAI API at {display_url(base_url)}"

    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = f" {exc.code}" if exc.code else ""
        detail = scrub(_server_message(exc), secrets)
        if status == 401:
            return AuthenticationError(
                f"{where} refused the API key (HTTP 401{code}); check the api_key config (the key is not shown)"
            )
        if status == 403:
            return AuthenticationError(f"{where} refused access (HTTP 403{code}): {detail}")
        if status == 429:
            wait = retry_after_seconds(exc.response.headers)
            hint = f"; retry after {wait:g} s" if wait is not None else ""
            return RateLimitError(f"{where} rate limited the request (HTTP 429{code}): {detail}{hint}",
                                  retry_after=wait)
        if status == 404 or exc.code == "model_not_found":
            named = f" for model {model!r}" if model else ""
            return ModelNotFoundError(f"{where} found nothing{named} (HTTP {status}{code}): {detail}")
        if status >= 500:
            return UnavailableError(f"{where} failed (HTTP {status}{code}): {detail}")
        if status == 408:
            return ProviderTimeout(f"{where} timed out the request (HTTP 408): {detail}")
        return BadRequestError(f"{where} rejected the request (HTTP {status}{code}): {detail}")

    kind = http_error_kind(exc)
    if isinstance(exc, openai.APITimeoutError) or kind == "timeout":
        limit = f" within {timeout:g} s (config timeout)" if timeout is not None else ""
        return ProviderTimeout(f"{where} did not answer{limit}")

    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        reason = scrub(str(cause) or type(cause).__name__, secrets) if cause is not None else exc.message
        return UnavailableError(f"cannot reach the {where}: {reason}")

    if kind == "transport":
        reason = scrub(str(exc) or type(exc).__name__, secrets)
        return UnavailableError(f"the connection to the {where} broke: {reason}")

    if isinstance(exc, openai.APIResponseValidationError):
        return UnavailableError(f"{where} sent a response the openai SDK cannot read: {scrub(exc.message, secrets)}")

    if isinstance(exc, openai.OpenAIError):
        return ProviderError(f"{where}: {scrub(str(exc), secrets)}")

    return exc
