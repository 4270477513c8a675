"""The outbox's tables in the SQLite state file: their schema and its versions, and the one connection wrapper.

Version 1: job_works (one row per event or job) and job_deliveries (one row per target plugin).
Version 2: job_deliveries.ordered and .max_attempts (a plugin's manifest `deliveries`).
Version 3: job_inbox, where `emit` writes an event as one row holding its targets (keyed by its rowid alone: the
cheapest row SQLite can commit; it holds only events not yet relayed), which the relay, run by whoever
delivers, moves into job_works and delivery rows; and job_works.user_ctx: the caller's user_context, which the
hook runs with.
A state file of an older version gains the columns when an engine opens it; its rows keep working.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import StateError

__all__ = ["SCHEMA_VERSION", "Db", "migrate"]

SCHEMA_VERSION = 3
_TABLES = (
    """CREATE TABLE IF NOT EXISTS job_works (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        tenant TEXT NOT NULL,
        hook TEXT NOT NULL,
        args TEXT NOT NULL,
        source TEXT,
        depth INTEGER NOT NULL DEFAULT 0,
        idem_key TEXT,
        created_at REAL NOT NULL,
        user_ctx TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS job_inbox (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        args TEXT NOT NULL,
        source TEXT,
        depth INTEGER NOT NULL,
        targets TEXT NOT NULL,
        user_ctx TEXT,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS job_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        work TEXT NOT NULL REFERENCES job_works (id) ON DELETE CASCADE,
        lock TEXT NOT NULL,
        plugin TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        run_after REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        result TEXT,
        error TEXT,
        error_kind TEXT,
        updated_at REAL NOT NULL,
        ordered INTEGER NOT NULL DEFAULT 1,
        max_attempts INTEGER
    )""",
    "CREATE TABLE IF NOT EXISTS job_schema (version INTEGER NOT NULL)",
)
#: Columns added after version 1, for a state file whose tables were created without them.
_ADDED_COLUMNS = {
    ("job_deliveries", "ordered"): "ALTER TABLE job_deliveries ADD COLUMN ordered INTEGER NOT NULL DEFAULT 1",
    ("job_deliveries", "max_attempts"): "ALTER TABLE job_deliveries ADD COLUMN max_attempts INTEGER",
    ("job_works", "user_ctx"): "ALTER TABLE job_works ADD COLUMN user_ctx TEXT",
}
_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS job_works_idem ON job_works (tenant, idem_key) WHERE idem_key IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS job_works_list ON job_works (kind, tenant, created_at)",
    "CREATE INDEX IF NOT EXISTS job_deliveries_due ON job_deliveries (state, run_after)",
    "CREATE INDEX IF NOT EXISTS job_deliveries_lock ON job_deliveries (lock, id)",
    "CREATE INDEX IF NOT EXISTS job_deliveries_work ON job_deliveries (work)",
)


class Db:
    """One connection to the state file, serialized by a lock (used from the loop or from a worker thread)."""

    def __init__(self, path: Path, *, wait_s: float = 30.0) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            self.conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA busy_timeout = 30000")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")  # opening may wait; use as asked
        except sqlite3.Error as exc:
            raise self.error(exc) from None

    def error(self, exc: BaseException) -> StateError:
        return StateError(f"job outbox in state file {self.path}: {exc}; check that the file is writable and "
                          "not held by a stuck process")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An exclusive write transaction (BEGIN IMMEDIATE): commits on exit, rolls back on an exception."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self.error(exc) from None
            try:
                yield self.conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise self.error(exc) from None

    def insert(self, sql: str, params: Any) -> None:
        """One statement as its own transaction (autocommit): a single-row write needs no BEGIN/COMMIT of ours."""
        with self.lock:
            try:
                self.conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise self.error(exc) from None

    def try_insert(self, sql: str, params: Any) -> bool:
        """As `insert` on a connection opened with wait_s=0: False, with nothing written, if another connection
        holds the write lock (the caller then writes where it may wait), instead of waiting for it."""
        with self.lock:
            try:
                self.conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):  # also extended
                    return False
                raise self.error(exc) from None
            except sqlite3.Error as exc:
                raise self.error(exc) from None
        return True

    def read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self.error(exc) from None

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def migrate(db: Db) -> None:
    """Create the tables, or bring older ones to SCHEMA_VERSION; refuse a newer version than this code knows."""
    with db.write() as conn:
        for statement in _TABLES:
            conn.execute(statement)
        have = {(t, r[1]) for t in ("job_works", "job_deliveries") for r in conn.execute(f"PRAGMA table_info({t})")}
        for key, statement in _ADDED_COLUMNS.items():
            if key not in have:
                conn.execute(statement)
        for statement in _INDEXES:
            conn.execute(statement)
        row = conn.execute("SELECT MAX(version) FROM job_schema").fetchone()
        version = row[0] if row and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise StateError(f"job outbox in {db.path} has schema version {version}, newer than the "
                             f"{SCHEMA_VERSION} this erp-plugins-core knows; upgrade erp-plugins-core")
        if version < SCHEMA_VERSION:
            conn.execute("DELETE FROM job_schema")
            conn.execute("INSERT INTO job_schema (version) VALUES (?)", (SCHEMA_VERSION,))
