"""The persisted state: which plugins each tenant enabled, with what config and grants, plus the audit trail.

`StateStore` is the small interface the rest of the host uses, so a server database can replace the embedded
`SQLiteStateStore` later. Every change runs inside one `BEGIN IMMEDIATE` transaction, so a read-check-write
sequence is atomic even when several processes (CLI commands, hosts) use the same file at once; WAL keeps
readers from blocking writers, and a process killed at any moment leaves the last committed state.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

from ._errors import ConfigError, StateError

__all__ = [
    "AuditEntry",
    "SCHEMA_VERSION",
    "SQLiteStateStore",
    "StateStore",
    "StateTransaction",
    "TenantPlugin",
    "default_state_path",
    "os_user",
    "validate_tenant",
]

STATE_ENV = "ERP_PLUGINS_STATE"
APP_NAME = "erp-plugins"
#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 30.0

#: Backoff between attempts to open a file another process holds locked (see SQLiteStateStore.__init__).
_OPEN_RETRY_FIRST_S = 0.005
_OPEN_RETRY_MAX_S = 0.2

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_state_path() -> Path:
    """`$ERP_PLUGINS_STATE` if set, else `state.db` in the user's data dir (the CLI's `--state` wins over both)."""
    env = os.environ.get(STATE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path(APP_NAME) / "state.db"


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
    `{"$secret": "<fernet token>"}` (see `_config.to_stored`). `state`/`reason` are the lifecycle state last
    reached and the (redacted) error reason. `put` stamps `updated_at`.
    """

    tenant: str
    plugin: str
    enabled: bool = False
    trusted: bool = False
    granted: list[str] = field(default_factory=list)
    priority: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    state: str = "inactive"
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


class StateTransaction(ABC):
    """The operations allowed inside `StateStore.transaction()`: all of them commit together or not at all."""

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
        """Remove a record; True if there was one."""

    @abstractmethod
    def add_audit(self, entry: AuditEntry) -> None:
        """Append to the audit trail."""

    @abstractmethod
    def get_setting(self, key: str) -> str | None:
        """A host-wide setting (e.g. the approved lock), or None."""

    @abstractmethod
    def set_setting(self, key: str, value: str) -> None:
        """Store a host-wide setting."""


class StateStore(ABC):
    """Where tenants' plugin records, host settings and the audit trail persist."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[StateTransaction]:
        """A write transaction, exclusive across processes; commits on normal exit, rolls back on an exception.

        Keep it short and never `await` inside it: other processes' writers wait (up to the busy timeout) while
        it is open, and the store refuses a second transaction from the same thread.
        """

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
    def set_runtime_state(self, tenant: str, plugin: str, state: str, reason: str | None = None) -> bool:
        """Record the lifecycle state a plugin reached (and why it failed); False if there is no such record."""

    @abstractmethod
    def get_setting(self, key: str) -> str | None:
        """A host-wide setting, or None."""

    @abstractmethod
    def set_setting(self, key: str, value: str) -> None:
        """Store a host-wide setting (its own transaction)."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; further use is an error."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- SQLite --------------------------------------------------------------------------------------------------

#: Ordered migrations: MIGRATIONS[i] brings the schema from version i to version i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: tenants' plugin records and the audit trail
    (
        """CREATE TABLE tenant_plugins (
            tenant TEXT NOT NULL,
            plugin TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            trusted INTEGER NOT NULL,
            granted TEXT NOT NULL,
            priority INTEGER NOT NULL,
            config TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (tenant, plugin)
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            user TEXT NOT NULL,
            tenant TEXT NOT NULL,
            plugin TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX audit_tenant ON audit (tenant, id)",
    ),
    # 2: lifecycle state last reached, and host-wide settings (the approved lock)
    (
        "ALTER TABLE tenant_plugins ADD COLUMN state TEXT NOT NULL DEFAULT 'inactive'",
        "ALTER TABLE tenant_plugins ADD COLUMN reason TEXT",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "tenant, plugin, enabled, trusted, granted, priority, config, state, reason, updated_at"


def _row_to_record(row: tuple[Any, ...]) -> TenantPlugin:
    tenant, plugin, enabled, trusted, granted, priority, config, state, reason, updated_at = row
    return TenantPlugin(
        tenant=tenant,
        plugin=plugin,
        enabled=bool(enabled),
        trusted=bool(trusted),
        granted=list(json.loads(granted)),
        priority=int(priority),
        config=dict(json.loads(config)),
        state=state,
        reason=reason,
        updated_at=float(updated_at),
    )


class _SQLiteTransaction(StateTransaction):
    """Operations on a connection that holds `BEGIN IMMEDIATE`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.open = True

    def _check(self) -> sqlite3.Connection:
        if not self.open:
            raise StateError("state transaction used after it ended; do the work inside the `with` block")
        return self._conn

    def get(self, tenant: str, plugin: str) -> TenantPlugin | None:
        return _get(self._check(), tenant, plugin)

    def list(self, tenant: str | None = None) -> list[TenantPlugin]:
        return _list(self._check(), tenant)

    def put(self, record: TenantPlugin) -> TenantPlugin:
        validate_tenant(record.tenant)
        if not record.plugin:
            raise ConfigError("plugin name must not be empty")
        record = replace(record, updated_at=time.time(), granted=list(record.granted), config=dict(record.config))
        self._check().execute(
            f"INSERT OR REPLACE INTO tenant_plugins ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (
                record.tenant,
                record.plugin,
                int(record.enabled),
                int(record.trusted),
                json.dumps(record.granted),
                int(record.priority),
                json.dumps(record.config, sort_keys=True),
                record.state,
                record.reason,
                record.updated_at,
            ),
        )
        return record

    def delete(self, tenant: str, plugin: str) -> bool:
        cur = self._check().execute("DELETE FROM tenant_plugins WHERE tenant = ? AND plugin = ?", (tenant, plugin))
        return cur.rowcount > 0

    def add_audit(self, entry: AuditEntry) -> None:
        self._check().execute(
            "INSERT INTO audit (time, user, tenant, plugin, action, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.time, entry.user, entry.tenant, entry.plugin, entry.action, json.dumps(entry.detail, default=str)),
        )

    def get_setting(self, key: str) -> str | None:
        row = self._check().execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        self._check().execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))


def _is_busy(exc: BaseException) -> bool:
    """Whether an sqlite3 error means another connection holds the lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    low = str(exc).lower()
    return "locked" in low or "busy" in low


def _get(conn: sqlite3.Connection, tenant: str, plugin: str) -> TenantPlugin | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM tenant_plugins WHERE tenant = ? AND plugin = ?",  # noqa: S608
        (tenant, plugin),
    ).fetchone()
    return None if row is None else _row_to_record(row)


def _list(conn: sqlite3.Connection, tenant: str | None) -> list[TenantPlugin]:
    if tenant is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM tenant_plugins ORDER BY tenant, priority, plugin")  # noqa: S608
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM tenant_plugins WHERE tenant = ? ORDER BY priority, plugin",  # noqa: S608
            (tenant,),
        )
    return [_row_to_record(r) for r in rows]


class SQLiteStateStore(StateStore):
    """The embedded store: one SQLite file (WAL, `BEGIN IMMEDIATE` writes), created 0600 with its parent dirs.

    One connection per store, usable from several threads (serialized by a lock); several processes may open
    the same file. Errors opening or using the file are StateErrors naming the path and the fix.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path).expanduser()
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._in_tx = False
        self._conn: sqlite3.Connection | None = None
        self._create_file()
        # SQLite does not call its busy handler where waiting could deadlock: two processes opening a fresh
        # file both switch it to WAL, and the one that holds a read lock while the other holds the write lock
        # gets "database is locked" at once. So the whole opening is retried, with backoff, up to the timeout.
        deadline = time.monotonic() + busy_timeout
        delay = _OPEN_RETRY_FIRST_S
        while True:
            try:
                self._conn = self._open()
                return
            except sqlite3.Error as exc:
                remaining = deadline - time.monotonic()
                if not _is_busy(exc) or remaining <= 0:
                    raise self._error(exc) from None
            time.sleep(min(delay * random.uniform(0.5, 1.5), remaining))  # noqa: S311 (jitter, not a secret)
            delay = min(delay * 2, _OPEN_RETRY_MAX_S)

    def _open(self) -> sqlite3.Connection:
        """A connection to the file, in WAL mode and migrated to this version's schema; closed again on error."""
        conn = sqlite3.connect(
            str(self.path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            self._check_is_ours(conn)
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise StateError(f"state file {self.path}: cannot switch to WAL mode; put it on a local file system")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def __repr__(self) -> str:
        return f"SQLiteStateStore({str(self.path)!r})"

    # -- opening ----------------------------------------------------------------------------------------------

    def _create_file(self) -> None:
        """Create the parent dirs (0700) and an empty file (0600) so SQLite never creates it world-readable."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.path.is_dir():
                raise StateError(f"state path {self.path} is a directory; pass --state with a file path")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        except StateError:
            raise
        except OSError as exc:
            raise StateError(
                f"cannot create state file {self.path}: {exc.strerror or exc}; "
                f"pass --state (or set {STATE_ENV}) with a writable path"
            ) from None

    def _error(self, exc: BaseException) -> StateError:
        """A one-line StateError for an sqlite3 error on this store's file."""
        text = str(exc)
        low = text.lower()
        if "not a database" in low or "malformed" in low or "corrupt" in low:
            return StateError(
                f"state file {self.path} is not a valid erp-plugins state database ({text}); "
                f"move it away to start afresh, or pass --state with another file"
            )
        if _is_busy(exc):
            return StateError(
                f"state file {self.path} stayed locked by another process for more than {self._busy_timeout:g} s "
                f"({text}); retry when the other erp-plugins command has finished"
            )
        if "readonly" in low or "read-only" in low or "unable to open" in low or "disk i/o" in low:
            return StateError(
                f"cannot write state file {self.path} ({text}); "
                f"make it and its folder writable, or pass --state (or set {STATE_ENV}) with another path"
            )
        return StateError(f"state file {self.path}: {text}")

    def _check_is_ours(self, conn: sqlite3.Connection) -> None:
        """Refuse an SQLite file that holds other tables but no schema_version (someone else's database)."""
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if names and "schema_version" not in names:
            raise StateError(
                f"state file {self.path} is an SQLite database of another program (no schema_version table); "
                f"pass --state with another file"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the migrations the file lacks, in order, in one exclusive transaction (re-checked under the lock)."""
        version = self._read_version(conn)
        if version == SCHEMA_VERSION:
            return
        self._check_version(version)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = self._read_version(conn)  # another process may have migrated meanwhile
            self._check_version(version)
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _read_version(conn: sqlite3.Connection) -> int:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
        if exists.fetchone() is None:
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state file {self.path} has schema version {version}, newer than the {SCHEMA_VERSION} this "
                f"erp-plugins-core knows; upgrade erp-plugins-core, or pass --state with another file"
            )

    # -- use ----------------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"state store {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StateTransaction]:
        with self._lock:
            if self._in_tx:
                raise StateError("nested state transaction; do all the work in the outer `with store.transaction()`")
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            self._in_tx = True
            tx = _SQLiteTransaction(conn)
            try:
                yield tx
            except BaseException:
                tx.open = False
                self._in_tx = False
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            tx.open = False
            self._in_tx = False
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._error(exc) from None

    def _read(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                return fn(self._connection(), *args)
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def get(self, tenant: str, plugin: str) -> TenantPlugin | None:
        return self._read(_get, tenant, plugin)

    def list(self, tenant: str | None = None) -> list[TenantPlugin]:
        return self._read(_list, tenant)

    def tenants(self) -> list[str]:
        return self._read(lambda c: [r[0] for r in c.execute("SELECT DISTINCT tenant FROM tenant_plugins ORDER BY 1")])

    def audit(self, tenant: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        def read(conn: sqlite3.Connection) -> list[AuditEntry]:
            where, params = ("WHERE tenant = ?", [tenant]) if tenant is not None else ("", [])
            sql = f"SELECT time, user, tenant, plugin, action, detail FROM audit {where} ORDER BY id DESC"  # noqa: S608
            if limit is not None:
                sql += " LIMIT ?"
                params.append(max(0, int(limit)))
            rows = conn.execute(sql, params).fetchall()
            return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]

        return self._read(read)

    def set_runtime_state(self, tenant: str, plugin: str, state: str, reason: str | None = None) -> bool:
        with self.transaction() as tx:
            cur = tx._check().execute(  # type: ignore[attr-defined]
                "UPDATE tenant_plugins SET state = ?, reason = ?, updated_at = ? WHERE tenant = ? AND plugin = ?",
                (state, reason, time.time(), tenant, plugin),
            )
            return cur.rowcount > 0

    def get_setting(self, key: str) -> str | None:
        return self._read(lambda c: _SQLiteTransaction(c).get_setting(key))

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as tx:
            tx.set_setting(key, value)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
