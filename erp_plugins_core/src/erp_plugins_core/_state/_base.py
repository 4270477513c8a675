"""The interfaces every state backend implements: the store, its transactions and its change watch.

The host, the CLI and the server use only these, so SQLite and PostgreSQL are interchangeable behind
`open_store`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, TypeVar

from ._model import AuditEntry, Change, RuntimeState, TenantPlugin, TokenRecord

T = TypeVar("T")


class StateTransaction(ABC):
    """The operations allowed inside `StateStore.transaction()`/`atomic()`: all commit together or not at all.

    `put`, `delete` and `set_setting` also record a `Change` in the same transaction, so followers learn of it
    exactly when it commits.
    """

    @abstractmethod
    def get(self, tenant: str, plugin: str) -> TenantPlugin | None:
        """The record of `plugin` for `tenant`, or None."""

    @abstractmethod
    def list(self, tenant: str | None = None) -> list[TenantPlugin]:
        """Every record (of one tenant), ordered by tenant, priority, plugin."""

    @abstractmethod
    def put(self, record: TenantPlugin) -> TenantPlugin:
        """Insert or replace a record; returns it with `updated_at` stamped."""

    @abstractmethod
    def delete(self, tenant: str, plugin: str) -> bool:
        """Remove a record (and its runtime rows); True if there was one."""

    @abstractmethod
    def add_audit(self, entry: AuditEntry) -> None:
        """Append to the audit trail."""

    @abstractmethod
    def get_setting(self, key: str) -> str | None:
        """A host-wide setting (e.g. the approved lock), or None."""

    @abstractmethod
    def set_setting(self, key: str, value: str) -> None:
        """Store a host-wide setting."""


class ChangeWatch(ABC):
    """Tells cheaply whether the state may have changed since the last time it said so.

    `maybe_changed()` never blocks for long and never raises: True means "read `changes_since`", and it says
    True whenever it cannot tell. `run()` is the background part (PostgreSQL's LISTEN); run it as a task
    where the backend needs one (it returns at once where it does not). `close()` stops both.
    """

    @abstractmethod
    def maybe_changed(self) -> bool:
        """True if another commit may have happened since the last True (or when unsure)."""

    async def run(self) -> None:  # noqa: B027 (a no-op is the right default)
        """Follow the database's notifications until `close()` or cancellation; a no-op by default."""

    @abstractmethod
    def close(self) -> None:
        """Release the watch; `maybe_changed()` then always says True."""

    def __enter__(self) -> ChangeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StateStore(ABC):
    """Where tenants' plugin records, host settings, the audit trail, runtime rows, changes and tokens persist.

    `backend` is "sqlite" or "postgresql"; `location` is safe to show (a path, or a URL without password).
    """

    backend: ClassVar[str] = ""
    location: str = ""

    # -- transactions ---------------------------------------------------------------------------------------

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[StateTransaction]:
        """A write transaction, exclusive across processes; commits on normal exit, rolls back on an exception.

        Keep it short and never `await` inside it: other processes' writers wait (up to the busy timeout) while
        it is open, and the store refuses a second transaction from the same thread.
        """

    @abstractmethod
    def atomic(self, fn: Callable[[StateTransaction], T]) -> T:
        """Run `fn(tx)` in one transaction and return its result; on PostgreSQL at SERIALIZABLE isolation,
        retried on conflicts and while the database is unreachable (up to the busy timeout), so `fn` may run
        more than once: it must only read and write through `tx`."""

    # -- plugin records, audit, settings ------------------------------------------------------------------------

    @abstractmethod
    def get(self, tenant: str, plugin: str) -> TenantPlugin | None:
        """The record of `plugin` for `tenant`, or None."""

    @abstractmethod
    def list(self, tenant: str | None = None) -> list[TenantPlugin]:
        """Every record (of one tenant), ordered by tenant, priority, plugin."""

    @abstractmethod
    def tenants(self) -> list[str]:
        """Every tenant that has at least one record, sorted."""

    @abstractmethod
    def audit(self, tenant: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail (of one tenant), oldest first; with `limit`, only the latest `limit` entries."""

    @abstractmethod
    def get_setting(self, key: str) -> str | None:
        """A host-wide setting, or None."""

    @abstractmethod
    def set_setting(self, key: str, value: str) -> None:
        """Store a host-wide setting (its own transaction; a change of kind "setting:<key>")."""

    # -- per-host runtime state ---------------------------------------------------------------------------------

    @abstractmethod
    def set_runtime_state(
        self, tenant: str, plugin: str, state: str, reason: str | None = None, *, host: str | None = None
    ) -> bool:
        """Record the state `host` (default `hostname:pid`) reached for (tenant, plugin), and mark the host alive.

        False (and nothing written) if the tenant has no record of the plugin. Not a change-feed change.
        """

    @abstractmethod
    def runtime(self, tenant: str | None = None) -> list[RuntimeState]:
        """Every runtime row (of one tenant) of hosts not yet expired, ordered by tenant, plugin, host."""

    @abstractmethod
    def heartbeat(self, host: str, *, ttl: float = 60.0) -> None:
        """Mark `host` alive now, and delete the hosts (with their runtime rows) silent for more than `ttl` s."""

    @abstractmethod
    def forget_host(self, host: str) -> None:
        """Delete `host` and its runtime rows (a clean close)."""

    # -- the change feed ------------------------------------------------------------------------------------------

    @abstractmethod
    def change_seq(self) -> int:
        """The latest committed change's `seq` (0 when there is none); cheap."""

    @abstractmethod
    def changes_since(self, seq: int) -> list[Change]:
        """The changes committed after `seq`, ascending; starts with a "reset" change if some were pruned.

        Changes are pruned only when both older than an hour and more than 10,000 changes back (tried when a
        new change's seq is a multiple of 100), so a follower that looks at least hourly misses none.
        """

    @abstractmethod
    def watch(self) -> ChangeWatch:
        """A new watch on this store's database (close it when done)."""

    # -- tokens -----------------------------------------------------------------------------------------------

    @abstractmethod
    def add_token(self, rec: TokenRecord) -> None:
        """Store a new token record (a "token" change); StateError if its id exists."""

    @abstractmethod
    def get_token(self, token_id: str) -> TokenRecord | None:
        """The token record with this id, or None."""

    @abstractmethod
    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        """Every token (None) or one tenant's tokens, ordered by creation."""

    @abstractmethod
    def revoke_token(self, token_id: str) -> bool:
        """Mark a token revoked (a "token" change); False if there is no such token."""

    @abstractmethod
    def touch_token(self, token_id: str, when: float) -> None:
        """Record when a token was last used (not a change)."""

    # -- lifetime -------------------------------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release the store; further use is an error."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
