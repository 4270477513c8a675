"""The state's records (plugin rows, audit entries, runtime rows, changes, tokens) and the names they must obey.

Plain dataclasses shared by every backend, so the host, the CLI and the server never see which database holds
them.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from .._errors import ConfigError

STATE_ENV = "ERP_PLUGINS_STATE"
APP_NAME = "erp-plugins"
#: Seconds a writer waits for another process's transaction (or an unreachable database) before giving up.
BUSY_TIMEOUT_S = 30.0
#: The state a plugin has where no live host recorded one.
INACTIVE = "inactive"
#: The host name given to runtime states carried over from a schema older than per-host runtime rows.
MIGRATED_HOST = "migrated"

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
TOKEN_SCOPES = ("call", "admin")


def default_state_path() -> Path:
    """`$ERP_PLUGINS_STATE` if set, else `state.db` in the user's data dir (the CLI's `--state` wins over both).

    Only meaningful for a file: `default_location()` is what `open_store(None)` uses, URLs included.
    """
    env = os.environ.get(STATE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path(APP_NAME) / "state.db"


def default_location() -> str:
    """`$ERP_PLUGINS_STATE` as given (a path or a URL), else the default state file's path."""
    env = os.environ.get(STATE_ENV, "").strip()
    return env or str(platformdirs.user_data_path(APP_NAME) / "state.db")


def default_host_name() -> str:
    """`hostname:pid`, the runtime-state owner when the caller names none (computed per call: forks differ)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def validate_host(name: str) -> str:
    """`name` if it can label a host's runtime rows (1-200 printable characters); ConfigError otherwise."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or not name.isprintable():
        raise ConfigError(f"invalid host name {name!r}: use 1-200 printable characters")
    return name


def validate_tenant(name: str) -> str:
    """`name` if it is a valid tenant name; ConfigError saying what is allowed otherwise."""
    if not isinstance(name, str) or not _TENANT_RE.match(name):
        raise ConfigError(
            f"invalid tenant name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def os_user() -> str:
    """The OS user running this process (for the audit trail); the numeric uid when it has no name."""
    try:
        return getpass.getuser()
    except Exception:  # KeyError/OSError when the uid has no passwd entry and no LOGNAME/USER is set
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


@dataclass
class TenantPlugin:
    """One plugin's record for one tenant.

    `config` is the STORED form: plain values, `env:NAME` references kept as text, sensitive literals as
    `{"$secret": "<fernet token>"}` (see `_config.to_stored`). `state`/`reason` are read from the most recent
    runtime row any (not yet expired) host recorded for it, "inactive"/None when there is none; they are not
    part of the policy record (see `StateStore.set_runtime_state`). `put` stamps `updated_at`.
    """

    tenant: str
    plugin: str
    enabled: bool = False
    trusted: bool = False
    granted: list[str] = field(default_factory=list)
    priority: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    state: str = INACTIVE
    reason: str | None = None
    updated_at: float = 0.0


@dataclass
class AuditEntry:
    """One administrative action: enable, disable, config change, grant. `detail` must not hold secrets."""

    time: float
    user: str
    tenant: str
    plugin: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def now(cls, tenant: str, plugin: str, action: str, detail: dict[str, Any] | None = None) -> AuditEntry:
        """An entry stamped with the current time and OS user."""
        return cls(time.time(), os_user(), tenant, plugin, action, dict(detail or {}))


@dataclass(frozen=True)
class RuntimeState:
    """The lifecycle state one host's instance of (tenant, plugin) reached, and the (redacted) error reason."""

    host: str
    tenant: str
    plugin: str
    state: str
    reason: str | None
    updated_at: float


@dataclass(frozen=True)
class Change:
    """One committed policy change, in commit order (`seq` ascends; gaps are possible).

    `kind` is "plugin" (a tenant's plugin record was put or deleted), "setting:<key>", "token" (a token was
    added or revoked; `tenant` is its tenant, None for a platform token) or "reset" (changes older than
    `seq` were pruned before the follower read them: reload everything).
    """

    seq: int
    tenant: str | None
    plugin: str | None
    kind: str
    time: float


@dataclass
class TokenRecord:
    """An API token's record. Only `digest` (hex sha256 of the token's secret part) is stored, never the token."""

    id: str
    tenant: str | None
    scope: str
    digest: str
    created: float
    expires: float | None = None
    last_used: float | None = None
    revoked: bool = False
    label: str = ""


def validate_token(rec: TokenRecord) -> TokenRecord:
    """`rec` if its fields are well formed; ConfigError naming the bad field otherwise."""
    if not isinstance(rec.id, str) or not rec.id or len(rec.id) > 128 or not rec.id.isprintable():
        raise ConfigError(f"invalid token id {rec.id!r}: use 1-128 printable characters")
    if rec.tenant is not None:
        validate_tenant(rec.tenant)
    if rec.scope not in TOKEN_SCOPES:
        raise ConfigError(f"invalid token scope {rec.scope!r}: use one of {', '.join(TOKEN_SCOPES)}")
    if not isinstance(rec.digest, str) or not _DIGEST_RE.match(rec.digest):
        raise ConfigError("invalid token digest: give the hex sha256 (64 lowercase hex digits) of its secret part")
    return rec
