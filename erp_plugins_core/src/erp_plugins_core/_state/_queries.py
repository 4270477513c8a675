"""The SQL both backends share, and the transaction built on it.

Every statement here is written once, with `?` placeholders, in the SQL that SQLite (3.35+) and PostgreSQL
both accept (`ON CONFLICT ... DO UPDATE`, `RETURNING`, `"user"` quoted); the PostgreSQL backend swaps the
placeholders for psycopg's. Functions take `ex`, a callable `ex(sql, params) -> cursor`, so they run on
either driver's connection, inside or outside a transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .._errors import ConfigError, StateError
from ._base import StateTransaction
from ._model import (
    INACTIVE,
    AuditEntry,
    Change,
    RuntimeState,
    TenantPlugin,
    TokenRecord,
    validate_tenant,
)

Exec = Callable[[str, Sequence[Any]], Any]

#: Changes are pruned only when older than this many seconds AND more than KEEP_CHANGES rows back.
KEEP_CHANGES_S = 3600.0
KEEP_CHANGES = 10_000
#: Pruning is tried when a new change's seq is a multiple of this.
PRUNE_EVERY = 100

#: A record with the state and reason of its most recent runtime row (of any host), NULL when none.
_RECORD = """SELECT t.tenant, t.plugin, t.enabled, t.trusted, t.granted, t.priority, t.config,
    (SELECT r.state FROM runtime r WHERE r.tenant = t.tenant AND r.plugin = t.plugin
        ORDER BY r.updated_at DESC, r.host LIMIT 1),
    (SELECT r.reason FROM runtime r WHERE r.tenant = t.tenant AND r.plugin = t.plugin
        ORDER BY r.updated_at DESC, r.host LIMIT 1),
    t.updated_at FROM tenant_plugins t"""
_TOKEN_SELECT = "SELECT id, tenant, scope, digest, created, expires, last_used, revoked, label FROM tokens"  # noqa: S105 (SQL)


def _record(row: Sequence[Any]) -> TenantPlugin:
    tenant, plugin, enabled, trusted, granted, priority, config, state, reason, updated_at = row
    return TenantPlugin(
        tenant=tenant,
        plugin=plugin,
        enabled=bool(enabled),
        trusted=bool(trusted),
        granted=list(json.loads(granted)),
        priority=int(priority),
        config=dict(json.loads(config)),
        # a disabled plugin is inactive whatever a host still retiring it (or gone) last recorded
        state=state if state is not None and enabled else INACTIVE,
        reason=reason if enabled else None,
        updated_at=float(updated_at),
    )


def _token(row: Sequence[Any]) -> TokenRecord:
    id_, tenant, scope, digest, created, expires, last_used, revoked, label = row
    return TokenRecord(
        id=id_, tenant=tenant, scope=scope, digest=digest, created=float(created),
        expires=None if expires is None else float(expires),
        last_used=None if last_used is None else float(last_used),
        revoked=bool(revoked), label=label,
    )


# --- reads ------------------------------------------------------------------------------------------------------


def get_record(ex: Exec, tenant: str, plugin: str) -> TenantPlugin | None:
    row = ex(f"{_RECORD} WHERE t.tenant = ? AND t.plugin = ?", (tenant, plugin)).fetchone()
    return None if row is None else _record(row)


def list_records(ex: Exec, tenant: str | None) -> list[TenantPlugin]:
    if tenant is None:
        rows = ex(f"{_RECORD} ORDER BY t.tenant, t.priority, t.plugin", ()).fetchall()
    else:
        rows = ex(f"{_RECORD} WHERE t.tenant = ? ORDER BY t.priority, t.plugin", (tenant,)).fetchall()
    return [_record(r) for r in rows]


def tenants(ex: Exec) -> list[str]:
    return [r[0] for r in ex("SELECT DISTINCT tenant FROM tenant_plugins ORDER BY 1", ()).fetchall()]


def audit(ex: Exec, tenant: str | None, limit: int | None) -> list[AuditEntry]:
    where, params = ("WHERE tenant = ?", [tenant]) if tenant is not None else ("", [])
    sql = f'SELECT time, "user", tenant, plugin, action, detail FROM audit {where} ORDER BY id DESC'  # noqa: S608
    if limit is not None:
        sql += " LIMIT ?"
        params.append(max(0, int(limit)))
    rows = ex(sql, params).fetchall()
    return [AuditEntry(float(r[0]), r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]


def get_setting(ex: Exec, key: str) -> str | None:
    row = ex("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def change_seq(ex: Exec) -> int:
    row = ex("SELECT MAX(seq) FROM changes", ()).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def changes_since(ex: Exec, seq: int) -> list[Change]:
    rows = ex("SELECT seq, tenant, plugin, kind, time FROM changes WHERE seq > ? ORDER BY seq", (int(seq),)).fetchall()
    out = [Change(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows]
    pruned = ex("SELECT MAX(through_seq) FROM changes_pruned", ()).fetchone()[0] or 0
    if seq < pruned:  # read after the rows: a prune in between only makes this say "reset" once too often
        out.insert(0, Change(int(pruned), None, None, "reset", time.time()))
    return out


def runtime(ex: Exec, tenant: str | None) -> list[RuntimeState]:
    sql = "SELECT host, tenant, plugin, state, reason, updated_at FROM runtime"
    if tenant is None:
        rows = ex(f"{sql} ORDER BY tenant, plugin, host", ()).fetchall()
    else:
        rows = ex(f"{sql} WHERE tenant = ? ORDER BY plugin, host", (tenant,)).fetchall()
    return [RuntimeState(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in rows]


def get_token(ex: Exec, token_id: str) -> TokenRecord | None:
    row = ex(f"{_TOKEN_SELECT} WHERE id = ?", (token_id,)).fetchone()
    return None if row is None else _token(row)


def list_tokens(ex: Exec, tenant: str | None) -> list[TokenRecord]:
    if tenant is None:
        rows = ex(f"{_TOKEN_SELECT} ORDER BY created, id", ()).fetchall()
    else:
        rows = ex(f"{_TOKEN_SELECT} WHERE tenant = ? ORDER BY created, id", (tenant,)).fetchall()
    return [_token(r) for r in rows]


# --- writes that are not policy (no change recorded, no writer lock) -------------------------------------------


def set_runtime(ex: Exec, tenant: str, plugin: str, state: str, reason: str | None, host: str) -> bool:
    if ex("SELECT 1 FROM tenant_plugins WHERE tenant = ? AND plugin = ?", (tenant, plugin)).fetchone() is None:
        return False
    now = time.time()
    ex(
        "INSERT INTO runtime (host, tenant, plugin, state, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (host, tenant, plugin) DO UPDATE SET state = excluded.state, reason = excluded.reason, "
        "updated_at = excluded.updated_at",
        (host, tenant, plugin, state, reason, now),
    )
    _alive(ex, host, now)
    return True


def _alive(ex: Exec, host: str, now: float) -> None:
    ex(
        "INSERT INTO hosts (host, heartbeat, started) VALUES (?, ?, ?) "
        "ON CONFLICT (host) DO UPDATE SET heartbeat = excluded.heartbeat",
        (host, now, now),
    )


def heartbeat(ex: Exec, host: str, ttl: float) -> None:
    now = time.time()
    _alive(ex, host, now)
    cutoff = now - max(0.0, float(ttl))
    ex(
        "DELETE FROM runtime WHERE host IN (SELECT host FROM hosts WHERE heartbeat < ?) "
        "OR host NOT IN (SELECT host FROM hosts)",
        (cutoff,),
    )
    ex("DELETE FROM hosts WHERE heartbeat < ?", (cutoff,))


def forget_host(ex: Exec, host: str) -> None:
    ex("DELETE FROM runtime WHERE host = ?", (host,))
    ex("DELETE FROM hosts WHERE host = ?", (host,))


def touch_token(ex: Exec, token_id: str, when: float) -> None:
    ex("UPDATE tokens SET last_used = ? WHERE id = ?", (float(when), token_id))


# --- the transaction -----------------------------------------------------------------------------------------


class SQLTransaction(StateTransaction):
    """Policy reads and writes on one connection inside its transaction; every write records its `Change`.

    Backends subclass it to take their writer lock before the first change (`_before_change`) and to announce
    a recorded change (`_after_change`).
    """

    def __init__(self, ex: Exec) -> None:
        self._ex = ex
        self.open = True

    def _check(self) -> Exec:
        if not self.open:
            raise StateError("state transaction used after it ended; do the work inside the `with` block")
        return self._ex

    def _before_change(self) -> None:
        """Called before each change is recorded (PostgreSQL takes its writer lock here)."""

    def _after_change(self, seq: int) -> None:
        """Called after a change is recorded (PostgreSQL notifies its listeners, delivered on commit)."""

    def record_change(self, tenant: str | None, plugin: str | None, kind: str) -> int:
        """Append a change to the feed (pruning old ones now and then); its seq."""
        ex = self._check()
        self._before_change()
        now = time.time()
        rows = ex(
            "INSERT INTO changes (tenant, plugin, kind, time) VALUES (?, ?, ?, ?) RETURNING seq",
            (tenant, plugin, kind, now),
        ).fetchall()
        seq = int(rows[0][0])
        if seq % PRUNE_EVERY == 0:
            limit = (seq - KEEP_CHANGES, now - KEEP_CHANGES_S)
            through = ex("SELECT MAX(seq) FROM changes WHERE seq <= ? AND time < ?", limit).fetchone()[0]
            if through is not None:
                ex("DELETE FROM changes WHERE seq <= ?", (int(through),))
                ex("UPDATE changes_pruned SET through_seq = ? WHERE through_seq < ?", (int(through), int(through)))
        self._after_change(seq)
        return seq

    def get(self, tenant: str, plugin: str) -> TenantPlugin | None:
        return get_record(self._check(), tenant, plugin)

    def list(self, tenant: str | None = None) -> list[TenantPlugin]:
        return list_records(self._check(), tenant)

    def put(self, record: TenantPlugin) -> TenantPlugin:
        validate_tenant(record.tenant)
        if not isinstance(record.plugin, str) or not record.plugin:
            raise ConfigError("plugin name must not be empty")
        ex = self._check()
        self.record_change(record.tenant, record.plugin, "plugin")
        record = replace(record, updated_at=time.time(), granted=list(record.granted), config=dict(record.config))
        ex(
            "INSERT INTO tenant_plugins (tenant, plugin, enabled, trusted, granted, priority, config, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, plugin) DO UPDATE SET "
            "enabled = excluded.enabled, trusted = excluded.trusted, granted = excluded.granted, "
            "priority = excluded.priority, config = excluded.config, updated_at = excluded.updated_at",
            (
                record.tenant, record.plugin, bool(record.enabled), bool(record.trusted), json.dumps(record.granted),
                int(record.priority), json.dumps(record.config, sort_keys=True), record.updated_at,
            ),
        )
        # `state`/`reason` are not policy: each host records its own with set_runtime_state (a put ignores them)
        return record

    def delete(self, tenant: str, plugin: str) -> bool:
        ex = self._check()
        self.record_change(tenant, plugin, "plugin")
        cur = ex("DELETE FROM tenant_plugins WHERE tenant = ? AND plugin = ?", (tenant, plugin))
        ex("DELETE FROM runtime WHERE tenant = ? AND plugin = ?", (tenant, plugin))
        return bool(cur.rowcount > 0)

    def add_audit(self, entry: AuditEntry) -> None:
        self._check()(
            'INSERT INTO audit (time, "user", tenant, plugin, action, detail) VALUES (?, ?, ?, ?, ?, ?)',
            (entry.time, entry.user, entry.tenant, entry.plugin, entry.action, json.dumps(entry.detail, default=str)),
        )

    def get_setting(self, key: str) -> str | None:
        return get_setting(self._check(), key)

    def set_setting(self, key: str, value: str) -> None:
        ex = self._check()
        self.record_change(None, None, f"setting:{key}")
        ex(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # tokens: used by the store's token methods (their changes must commit with them)

    def add_token(self, rec: TokenRecord) -> None:
        ex = self._check()
        self.record_change(rec.tenant, None, "token")
        cur = ex(
            "INSERT INTO tokens (id, tenant, scope, digest, created, expires, last_used, revoked, label) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (rec.id, rec.tenant, rec.scope, rec.digest, float(rec.created), rec.expires, rec.last_used,
             bool(rec.revoked), rec.label),
        )
        if cur.rowcount == 0:
            raise StateError(f"a token with id {rec.id!r} exists already; make a new id")

    def revoke_token(self, token_id: str) -> bool:
        ex = self._check()
        row = ex("SELECT tenant FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            return False
        self.record_change(row[0], None, "token")
        ex("UPDATE tokens SET revoked = ? WHERE id = ?", (True, token_id))
        return True
