"""google-auth credentials from the config: an authorized-user file or a service account acting for a user.

A value may be a path or the JSON text itself: the plugin runs sandboxed without a file system, so there
the administrator passes the JSON (e.g. `--config credentials_file=env:GOOGLE_CREDENTIALS`).
With `root_url` set, tokens are refreshed at `<root_url>token` too, so a private or test endpoint serves
everything; otherwise at Google's token endpoint.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from google.auth.credentials import Credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from erp_plugins_core import ConfigError

from ._config import GoogleConfig

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret


def _load_json(value: str, key: str) -> dict[str, Any]:
    """The JSON object a config value holds, or names by path."""
    text = value
    if not value.lstrip().startswith("{"):
        try:
            with open(value, encoding="utf-8") as fh:
                text = fh.read(1024 * 1024)
        except OSError as exc:
            raise ConfigError(
                f"google_services: cannot read {key} ({exc.strerror}); give a path readable by the host (it reads "
                f"the file for a sandboxed plugin), the JSON itself, or --config {key}=env:VARIABLE holding the JSON"
            ) from None
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"google_services: {key} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"google_services: {key} must hold a JSON object")
    return info


def _expiry(info: dict[str, Any]) -> datetime | None:
    """The access token's expiry as google-auth stores it (naive UTC); None makes the token count as expired."""
    raw = info.get("expiry")
    if not raw:
        return None
    try:
        return datetime.strptime(str(raw).rstrip("Z").split(".")[0], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise ConfigError(
            f"google_services: credentials_file 'expiry' {raw!r} is not like 2030-01-31T12:00:00Z"
        ) from None


def token_uri_for(config: GoogleConfig, default: str) -> str:
    """Where tokens are refreshed: under root_url when it is set, else `default`."""
    return config.root_url + "token" if config.root_url else default


def load_credentials(config: GoogleConfig) -> tuple[Credentials, frozenset[str] | None]:
    """Credentials for `config`, and the scopes the file says were granted (None when it does not say)."""
    if config.credentials:
        info = _load_json(config.credentials, "credentials_file")
        kind = info.get("type", "authorized_user")
        if kind != "authorized_user":
            hint = " use service_account_file (with subject) for it" if kind == "service_account" else ""
            raise ConfigError(f"google_services: credentials_file is a {kind!r} file, not authorized_user;{hint}")
        missing = [k for k in ("refresh_token", "client_id", "client_secret") if not info.get(k)]
        if missing:
            raise ConfigError(
                f"google_services: credentials_file lacks {', '.join(missing)}; create it with an OAuth "
                f"consent flow (e.g. google-auth-oauthlib) for the scopes {' '.join(config.scopes)}"
            )
        granted = info.get("scopes")
        if isinstance(granted, str):
            granted = granted.split()
        expiry = _expiry(info)
        creds = user_credentials.Credentials(
            # like google-auth: a token of unknown age counts as expired, so it is refreshed before first use
            token=info.get("token") if expiry is not None else None,
            refresh_token=info["refresh_token"],
            token_uri=token_uri_for(config, GOOGLE_TOKEN_URI),
            client_id=info["client_id"],
            client_secret=info["client_secret"],
            scopes=list(config.scopes),
            quota_project_id=info.get("quota_project_id"),
            expiry=expiry,
        )
        return creds, frozenset(granted) if isinstance(granted, list) else None

    assert config.service_account is not None  # parse_config guarantees exactly one source
    info = _load_json(config.service_account, "service_account_file")
    if info.get("type", "service_account") != "service_account":
        raise ConfigError(f"google_services: service_account_file is a {info.get('type')!r} file, not service_account")
    info = {**info, "token_uri": token_uri_for(config, info.get("token_uri") or GOOGLE_TOKEN_URI)}
    try:
        creds = service_account.Credentials.from_service_account_info(
            info, scopes=list(config.scopes), subject=config.subject
        )
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"google_services: service_account_file is not a usable service-account key ({exc}); "
            f"download a new JSON key for the service account"
        ) from None
    return creds, None
