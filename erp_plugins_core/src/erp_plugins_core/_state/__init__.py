"""The persisted state: tenants' plugin records, settings, the audit trail, per-host runtime rows, the change
feed and API tokens, in SQLite (embedded default) or PostgreSQL (a fleet).

`open_store(location)` picks the backend; everything else talks to the `StateStore` interface. The
PostgreSQL backend imports its driver only when a `postgresql://` location is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import ChangeWatch, StateStore, StateTransaction
from ._location import describe_location, open_store, parse_location
from ._migrations import MIGRATIONS, PG_MIGRATIONS, SCHEMA_VERSION
from ._model import (
    APP_NAME,
    BUSY_TIMEOUT_S,
    MIGRATED_HOST,
    STATE_ENV,
    AuditEntry,
    Change,
    RuntimeState,
    TenantPlugin,
    TokenRecord,
    default_host_name,
    default_location,
    default_state_path,
    os_user,
    validate_host,
    validate_tenant,
)
from ._sqlite import SQLiteStateStore

if TYPE_CHECKING:
    from ._postgres import PostgresStateStore

__all__ = [
    "APP_NAME",
    "BUSY_TIMEOUT_S",
    "MIGRATED_HOST",
    "MIGRATIONS",
    "PG_MIGRATIONS",
    "SCHEMA_VERSION",
    "STATE_ENV",
    "AuditEntry",
    "Change",
    "ChangeWatch",
    "PostgresStateStore",
    "RuntimeState",
    "SQLiteStateStore",
    "StateStore",
    "StateTransaction",
    "TenantPlugin",
    "TokenRecord",
    "default_host_name",
    "default_location",
    "default_state_path",
    "describe_location",
    "open_store",
    "os_user",
    "parse_location",
    "validate_host",
    "validate_tenant",
]


def __getattr__(name: str) -> Any:
    """`PostgresStateStore` on first use: its module is light, but keep the package's import minimal."""
    if name == "PostgresStateStore":
        from ._postgres import PostgresStateStore

        return PostgresStateStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
