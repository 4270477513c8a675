"""The embedded state: one SQLite file (WAL, `BEGIN IMMEDIATE` writes), created 0600 with its parent dirs.

Every change runs inside one `BEGIN IMMEDIATE` transaction, so a read-check-write sequence is atomic even when
several processes (CLI commands, hosts) use the same file at once; WAL keeps readers from blocking writers, and a
process killed at any moment leaves the last committed state.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from .._errors import StateError
from ._base import ChangeWatch, StateTransaction
from ._location import describe_location, parse_location
from ._migrations import MIGRATIONS, SCHEMA_VERSION
from ._model import BUSY_TIMEOUT_S, STATE_ENV
from ._queries import Exec, SQLTransaction
from ._sqlstore import SQLStateStore

T = TypeVar("T")

#: Backoff between attempts to open a file another process holds locked (see SQLiteStateStore.__init__).
_OPEN_RETRY_FIRST_S = 0.005
_OPEN_RETRY_MAX_S = 0.2


def _is_busy(exc: BaseException) -> bool:
    """Whether an sqlite3 error means another connection holds the lock (SQLITE_BUSY or SQLITE_LOCKED)."""
    low = str(exc).lower()
    return "locked" in low or "busy" in low


class SQLiteWatch(ChangeWatch):
    """`PRAGMA data_version` on a connection of its own: it changes whenever any other connection commits.

    Its own connection (rather than the store's) means commits of this process's store count too (and runtime
    rows, heartbeats and audit lines: any commit at all, so a True is followed by a `changes_since` that may
    find nothing). One `maybe_changed()` costs about 6 µs here (bench/bench_state.py: 6.4 µs against 0.04 µs
    for an empty call; 5.6 µs of it is the pragma itself), cheap enough to ask before every call.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False
        )
        self._seen: int | None = None  # None: the first call says True (nothing was compared yet)

    def maybe_changed(self) -> bool:
        try:
            with self._lock:
                if self._conn is None:
                    return True
                version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
                changed = version != self._seen
                self._seen = version
                return changed
        except Exception:  # never raises: when unsure, say "maybe"
            return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class SQLiteStateStore(SQLStateStore):
    """The embedded store.

    One connection per store, usable from several threads (serialized by a lock); several processes may open
    the same file. Errors opening or using the file are StateErrors naming the path and the fix.
    """

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        if parse_location(path)[0] != "sqlite":  # refuses other URL-like text too: never a folder "postgresql:"
            raise StateError(f"{describe_location(path)} is not a file path; open it with open_store()")
        self.path = Path(path).expanduser()
        self.location = str(self.path)
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
        """Create the parent dirs (0700) and an empty file (0600) so SQLite never creates it world-readable.

        An existing file is never opened here: closing any descriptor of a file drops every POSIX lock this
        process holds on it, including those of another open connection, and another process could then
        take its connection for the last one and remove the WAL under it.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.path.is_dir():
                raise StateError(f"state path {self.path} is a directory; pass --state with a file path")
            if not self.path.exists():
                with contextlib.suppress(FileExistsError):  # another process made it meanwhile: leave it be
                    os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except StateError:
            raise
        except OSError as exc:
            raise StateError(
                f"cannot create state file {self.path}: {exc.strerror or exc}; "
                f"pass --state (or set {STATE_ENV}) with a writable path"
            ) from None

    def _error(self, exc: BaseException) -> StateError:
        """A one-line StateError for an sqlite3 error on this store's file."""
        text = " ".join(str(exc).split())
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
    def _begin(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` on the connection, committed on normal exit, rolled back on an exception."""
        with self._lock:
            if self._in_tx:
                raise StateError("nested state transaction; do all the work in the outer `with store.transaction()`")
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            self._in_tx = True
            try:
                yield conn
            except BaseException:
                self._in_tx = False
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            self._in_tx = False
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._error(exc) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StateTransaction]:
        with self._begin() as conn:
            tx = SQLTransaction(conn.execute)
            try:
                yield tx
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            finally:
                tx.open = False

    def atomic(self, fn: Callable[[StateTransaction], T]) -> T:
        """`fn(tx)` in one `BEGIN IMMEDIATE` transaction (which already excludes every other writer)."""
        with self.transaction() as tx:
            return fn(tx)

    def _read(self, fn: Callable[[Exec], T]) -> T:
        with self._lock:
            try:
                return fn(self._connection().execute)
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def _write(self, fn: Callable[[Exec], T]) -> T:
        with self._begin() as conn:
            try:
                return fn(conn.execute)
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def watch(self) -> ChangeWatch:
        self._connection()
        return SQLiteWatch(self.path)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
