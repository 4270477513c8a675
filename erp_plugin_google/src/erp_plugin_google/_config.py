"""The plugin's config, checked once at initialize: exactly one credential source, scopes, endpoint, chunk size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from erp_plugins_core import ConfigError

from . import _scopes

#: Google requires every upload chunk but the last to be a multiple of 256 KiB.
CHUNK_ALIGN = 256 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
MAX_CHUNK_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GoogleConfig:
    """A tenant's validated config for google_services."""

    credentials: str | None  # authorized-user JSON: a path, or the JSON text itself
    service_account: str | None  # service-account JSON: a path, or the JSON text itself
    subject: str | None
    scopes: tuple[str, ...]
    root_url: str | None
    upload_chunk_size: int

    def __repr__(self) -> str:  # the credential values may be JSON holding secrets: never show them
        kind = "credentials_file" if self.credentials else "service_account_file"
        return f"GoogleConfig({kind}, subject={self.subject!r}, scopes={self.scopes!r}, root_url={self.root_url!r})"


def _text(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"google_services: config {key!r} must be a string, got {type(value).__name__}")
    return value.strip()


def parse_config(config: Mapping[str, Any]) -> GoogleConfig:
    """Validate `config`; ConfigError naming the key and the fix otherwise."""
    credentials = _text(config, "credentials_file")
    service_account = _text(config, "service_account_file")
    subject = _text(config, "subject")
    if bool(credentials) == bool(service_account):
        which = "both are set" if credentials else "neither is set"
        raise ConfigError(
            f"google_services: set exactly one of 'credentials_file' (authorized-user JSON) or "
            f"'service_account_file' (service-account JSON, with 'subject'); {which}"
        )
    if service_account and not subject:
        raise ConfigError(
            "google_services: 'service_account_file' needs 'subject', the Workspace user the service account "
            "acts for (e.g. --config subject=billing@example.com); domain-wide delegation must be enabled for it"
        )
    if credentials and subject:
        raise ConfigError(
            "google_services: 'subject' only applies to 'service_account_file'; an authorized-user "
            "credentials_file already acts as its user. Remove 'subject'"
        )
    if subject and "@" not in subject:
        raise ConfigError(f"google_services: 'subject' must be an email address, got {subject!r}")

    raw_scopes = config.get("scopes")
    if raw_scopes is None:
        scopes = _scopes.DEFAULT_SCOPES
    else:
        if isinstance(raw_scopes, str):
            raw_scopes = raw_scopes.replace(",", " ").split()
        if not isinstance(raw_scopes, (list, tuple)) or not all(isinstance(s, str) and s.strip() for s in raw_scopes):
            raise ConfigError("google_services: 'scopes' must be a list of scope URLs or names like 'gmail.send'")
        scopes = tuple(dict.fromkeys(_scopes.expand(s) for s in raw_scopes))
        if not scopes:
            raise ConfigError("google_services: 'scopes' is empty; leave it out for the default scopes")

    root_url = _text(config, "root_url")
    if root_url is not None:
        parts = urlsplit(root_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(
                f"google_services: 'root_url' must be an http(s) URL such as https://googleapis.example.com/, "
                f"got {root_url!r}"
            )
        if not root_url.endswith("/"):
            root_url += "/"

    chunk = config.get("upload_chunk_size", DEFAULT_CHUNK_SIZE)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not (CHUNK_ALIGN <= chunk <= MAX_CHUNK_SIZE):
        raise ConfigError(
            f"google_services: 'upload_chunk_size' must be an integer from {CHUNK_ALIGN} to {MAX_CHUNK_SIZE} "
            f"bytes, got {chunk!r}"
        )
    if chunk % CHUNK_ALIGN:
        raise ConfigError(
            f"google_services: 'upload_chunk_size' must be a multiple of 262144 (256 KiB), as Google requires; "
            f"got {chunk} (try {chunk // CHUNK_ALIGN * CHUNK_ALIGN or CHUNK_ALIGN})"
        )
    return GoogleConfig(credentials, service_account, subject, scopes, root_url, chunk)
