"""The store's public methods, written once over three primitives each backend provides.

A backend implements `_read(fn)` (run `fn(ex)` outside any writer lock), `_write(fn)` (a short transaction for
rows that are not policy: runtime rows, heartbeats, token use), `transaction()` and `atomic()`; everything
else (records, audit, settings, runtime rows, changes, tokens) is the same SQL on both.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TypeVar

from . import _queries as q
from ._base import StateStore, StateTransaction
from ._model import (
    AuditEntry,
    Change,
    RuntimeState,
    TenantPlugin,
    TokenRecord,
    default_host_name,
    validate_host,
    validate_token,
)
from ._queries import Exec, SQLTransaction

T = TypeVar("T")


class SQLStateStore(StateStore):
    """A StateStore over an SQL database reached through `_read`, `_write`, `transaction` and `atomic`."""

    @abstractmethod
    def _read(self, fn: Callable[[Exec], T]) -> T:
        """`fn(ex)` on a connection, outside any transaction the caller holds; errors become StateErrors."""

    @abstractmethod
    def _write(self, fn: Callable[[Exec], T]) -> T:
        """`fn(ex)` in its own short transaction that takes no writer lock; errors become StateErrors."""

    def _tx_call(self, fn: Callable[[SQLTransaction], T]) -> T:
        """`fn` in `atomic`, typed for the transaction's own extra methods (tokens, changes)."""
        return self.atomic(lambda tx: fn(tx))  # type: ignore[arg-type]

    def get(self, tenant: str, plugin: str) -> TenantPlugin | None:
        return self._read(lambda ex: q.get_record(ex, tenant, plugin))

    def list(self, tenant: str | None = None) -> list[TenantPlugin]:
        return self._read(lambda ex: q.list_records(ex, tenant))

    def tenants(self) -> list[str]:
        return self._read(q.tenants)

    def audit(self, tenant: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        return self._read(lambda ex: q.audit(ex, tenant, limit))

    def get_setting(self, key: str) -> str | None:
        return self._read(lambda ex: q.get_setting(ex, key))

    def set_setting(self, key: str, value: str) -> None:
        def run(tx: StateTransaction) -> None:
            tx.set_setting(key, value)

        self.atomic(run)

    def set_runtime_state(
        self, tenant: str, plugin: str, state: str, reason: str | None = None, *, host: str | None = None
    ) -> bool:
        owner = default_host_name() if host is None else validate_host(host)
        return self._write(lambda ex: q.set_runtime(ex, tenant, plugin, state, reason, owner))

    def runtime(self, tenant: str | None = None) -> list[RuntimeState]:
        return self._read(lambda ex: q.runtime(ex, tenant))

    def heartbeat(self, host: str, *, ttl: float = 60.0) -> None:
        validate_host(host)
        self._write(lambda ex: q.heartbeat(ex, host, ttl))

    def forget_host(self, host: str) -> None:
        validate_host(host)
        self._write(lambda ex: q.forget_host(ex, host))

    def change_seq(self) -> int:
        return self._read(q.change_seq)

    def changes_since(self, seq: int) -> list[Change]:
        return self._read(lambda ex: q.changes_since(ex, seq))

    def add_token(self, rec: TokenRecord) -> None:
        validate_token(rec)
        self._tx_call(lambda tx: tx.add_token(rec))

    def get_token(self, token_id: str) -> TokenRecord | None:
        return self._read(lambda ex: q.get_token(ex, token_id))

    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        return self._read(lambda ex: q.list_tokens(ex, tenant))

    def revoke_token(self, token_id: str) -> bool:
        return self._tx_call(lambda tx: tx.revoke_token(token_id))

    def touch_token(self, token_id: str, when: float) -> None:
        self._write(lambda ex: q.touch_token(ex, token_id, when))
