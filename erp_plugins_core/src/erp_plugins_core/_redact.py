"""Redaction of secret values wherever text leaves the host: logs, errors, results, CLI output."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
_MIN_SECRET_LEN = 4  # shorter values would redact ordinary text; such secrets are still never stored in clear


class Redactor:
    """Replaces every known secret value in strings (also inside dicts and lists) with `***`."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Learn more secret values (longest first, so a secret containing another is redacted whole)."""
        known = set(self._secrets) | {s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET_LEN}
        self._secrets = tuple(sorted(known, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"

    def text(self, value: str) -> str:
        """`value` with every secret replaced."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def redact(self, value: Any) -> Any:
        """A copy of `value` (str, dict, list, tuple or other) with every secret string replaced."""
        if not self._secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.redact(v) for v in value)
        return value


def redact_url(url: str) -> str:
    """`url` without any user:password part, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
