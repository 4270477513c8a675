"""The fleet's state: PostgreSQL through psycopg 3 and a small `psycopg_pool.ConnectionPool` (1..4 connections).

Our tables live in their own schema, `erp_plugins` (set as each pooled connection's `search_path`), so the
database may hold other applications' tables; `erp_plugins.schema_version` holds the version, migrated with the
same numbered history as SQLite under `pg_advisory_xact_lock`, so hosts starting together do not race.

Writers: `transaction()` takes a session advisory lock before it begins (READ COMMITTED: like SQLite's
`BEGIN IMMEDIATE`, its reads see the latest commit and no other policy writer can commit under it, and it never
fails to serialize); `atomic()` runs at SERIALIZABLE without that lock and is retried on serialization failures
and deadlocks. Every transaction that records a change first takes the same lock (as a transaction lock), then
updates the one `change_clock` row: so changes commit in `seq` order (a follower that saw seq N has seen every
change before it), and an `atomic()` whose snapshot predates another writer's commit fails on that row and is
retried rather than acting on stale reads, whichever way the other writer ran. It also runs `pg_notify`, so
`PostgresWatch` hears of the change on commit.

psycopg is imported only when a store is opened; without it the error says which extra to install.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, TypeVar

from .._errors import StateError
from ._base import ChangeWatch, StateTransaction
from ._location import describe_location
from ._migrations import PG_MIGRATIONS, SCHEMA_VERSION
from ._model import BUSY_TIMEOUT_S, STATE_ENV
from ._pgwatch import PostgresWatch
from ._queries import Exec, SQLTransaction
from ._sqlstore import SQLStateStore

T = TypeVar("T")

SCHEMA = "erp_plugins"
CHANNEL = "erp_plugins_changes"
#: Advisory lock keys (one bigint each): the writers' lock and the migration lock.
WRITE_LOCK = int.from_bytes(b"erpstate", "big")
MIGRATE_LOCK = int.from_bytes(b"erpmigr8", "big")
#: Reads wait this long for a pooled connection (the host keeps serving from memory meanwhile) ...
READ_TIMEOUT_S = 5.0
#: ... and only this long once the database was found unreachable, until a read succeeds again.
DOWN_READ_TIMEOUT_S = 0.5
_RETRY_FIRST_S = 0.02
_RETRY_MAX_S = 1.0


def _driver() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise StateError(
            "a postgresql:// state needs the PostgreSQL driver: pip install 'erp-plugins-core[postgres]'"
        ) from None
    return psycopg


@lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """Our shared SQL with psycopg's placeholders (no statement holds a literal `?` or `%`)."""
    return sql.replace("?", "%s")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _PgTransaction(SQLTransaction):
    """A transaction on one pooled connection; takes the writers' lock before its first change, and notifies."""

    def __init__(self, conn: Any, *, locked: bool) -> None:
        super().__init__(lambda sql, params=(): conn.execute(_pg(sql), params))
        self._conn = conn
        self._locked = locked
        self._ticked = False

    def _before_change(self) -> None:
        if not self._locked:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            self._locked = True
        if not self._ticked:  # SERIALIZABLE: fails (40001, retried) if a writer committed after our snapshot
            self._conn.execute("UPDATE change_clock SET n = n + 1")
            self._ticked = True

    def _after_change(self, seq: int) -> None:
        self._conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq)))


class PostgresStateStore(SQLStateStore):
    """The state in a PostgreSQL database given by a libpq URL (see the module docstring)."""

    backend = "postgresql"

    def __init__(self, url: str, *, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        psycopg = _driver()
        from psycopg.conninfo import conninfo_to_dict

        self.location = describe_location(url)
        self._url = url
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._pool: Any = None
        self._down = False  # the last read found the database unreachable: fail the next ones fast
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StateError(f"invalid PostgreSQL state URL {self.location!r}: {self._scrub(_one_line(exc))}") from None
        self._where = self._target(params)
        self._password = str(params.get("password") or "")
        self._kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = max(2, int(min(busy_timeout, 10)))
        self._migrate()
        from psycopg_pool import ConnectionPool, PoolTimeout

        self._pool = ConnectionPool(
            url, min_size=1, max_size=4, open=False, name="erp-plugins-state", timeout=busy_timeout,
            kwargs={"autocommit": True, **self._kwargs}, configure=self._configure,
            # a slot that cannot reconnect within 5 s is given up: the next request then tries at once, so the
            # store works again as soon as the database is back (the pool's own backoff doubles without bound)
            reconnect_timeout=5.0, num_workers=2,
        )
        try:
            self._pool.open(wait=True, timeout=max(1.0, min(busy_timeout, 30.0)))
        except PoolTimeout as exc:
            self._pool.close()
            raise self._unreachable(exc) from None

    def __repr__(self) -> str:
        return f"PostgresStateStore({self.location!r})"

    # -- messages ---------------------------------------------------------------------------------------------

    @staticmethod
    def _target(params: dict[str, Any]) -> str:
        """"database D at host:port" from the URL's parameters (libpq's defaults where it names none)."""
        import os

        host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
        port = params.get("port") or os.environ.get("PGPORT") or "5432"
        db = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "(the user's name)"
        return f"database {db} at {host}:{port}"

    def _scrub(self, text: str) -> str:
        password = getattr(self, "_password", "")
        return text.replace(password, "***") if password else text

    def _unreachable(self, exc: BaseException) -> StateError:
        return StateError(
            f"PostgreSQL state {self._where} is unreachable ({self._scrub(_one_line(exc))}); check that the "
            f"server runs and that --state / {STATE_ENV} names the right host, port, database and user"
        )

    def _error(self, exc: BaseException) -> StateError:
        """A one-line StateError for a psycopg error (never with the password)."""
        import psycopg

        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return StateError(
                f"PostgreSQL state {self._where} stayed locked by another writer for more than "
                f"{self._busy_timeout:g} s; retry when the other erp-plugins command has finished"
            )
        if isinstance(exc, psycopg.errors.TransactionRollback):
            return StateError(
                f"PostgreSQL state {self._where}: a concurrent change conflicted with this one "
                f"({self._scrub(_one_line(exc))}); retry it"
            )
        if isinstance(exc, psycopg.OperationalError):
            return self._unreachable(exc)
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return StateError(
                f"PostgreSQL state {self._where}: permission denied ({self._scrub(_one_line(exc))}); the user "
                f"needs to create and use the schema {SCHEMA}"
            )
        return StateError(f"PostgreSQL state {self._where}: {self._scrub(_one_line(exc))}")

    # -- opening ----------------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self._url, autocommit=True, **self._kwargs)
        except psycopg.Error as exc:
            raise self._unreachable(exc) from None

    def _configure(self, conn: Any) -> None:
        conn.execute(f"SET search_path TO {SCHEMA}")
        conn.execute(f"SET lock_timeout = {max(1, int(self._busy_timeout * 1000))}")

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION under the migration lock; refuse a newer schema."""
        import psycopg

        with self._connect() as conn:
            try:
                if self._read_version(conn) == SCHEMA_VERSION:
                    return
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                    conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
                    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                    version = self._read_version(conn)  # another host may have migrated meanwhile
                    for number in range(version, SCHEMA_VERSION):
                        for statement in PG_MIGRATIONS[number]:
                            conn.execute(statement)
                    conn.execute("DELETE FROM schema_version")
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            except psycopg.Error as exc:
                raise self._error(exc) from None

    def _read_version(self, conn: Any) -> int:
        row = conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_version'", (SCHEMA,)
        ).fetchone()
        if row is None:
            return 0
        got = conn.execute(f"SELECT MAX(version) FROM {SCHEMA}.schema_version").fetchone()  # noqa: S608 (a constant)
        version = int(got[0]) if got and got[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise StateError(
                f"PostgreSQL state {self._where} has schema version {version}, newer than the {SCHEMA_VERSION} "
                f"this erp-plugins-core knows; upgrade erp-plugins-core on this machine, or pass --state with "
                f"another database"
            )
        return version

    # -- connections ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _conn(self, timeout: float) -> Iterator[Any]:
        """A pooled connection; StateError when the store is closed or no connection comes within `timeout`."""
        if self._pool is None or self._pool.closed:
            raise StateError(f"state store {self.location} is closed")
        with self._pool.connection(timeout=timeout) as conn:
            yield conn

    @staticmethod
    def _ex(conn: Any) -> Exec:
        return lambda sql, params=(): conn.execute(_pg(sql), params)

    def _no_nesting(self) -> None:
        if getattr(self._local, "in_tx", False):
            raise StateError("nested state transaction; do all the work in the outer `with store.transaction()`")

    def _read(self, fn: Callable[[Exec], T]) -> T:
        """`fn` on a pooled connection in autocommit; a connection found dead (a restarted server) is retried."""
        import psycopg

        for _attempt in range(6):  # the pool's 4 connections may all be dead after a restart
            conn = None
            try:
                with self._conn(min(self._busy_timeout, DOWN_READ_TIMEOUT_S if self._down else READ_TIMEOUT_S)) \
                        as conn:
                    result = fn(self._ex(conn))
                self._down = False
                return result
            except psycopg.OperationalError as exc:
                if conn is not None and conn.closed:
                    continue  # a stale connection: the pool drops it; try the next one
                self._down = not isinstance(exc, psycopg.errors.LockNotAvailable)
                raise self._error(exc) from None
            except psycopg.Error as exc:
                raise self._error(exc) from None
        raise StateError(f"PostgreSQL state {self._where} keeps dropping connections; check the server's log")

    def _write(self, fn: Callable[[Exec], T]) -> T:
        """`fn` in a short READ COMMITTED transaction (runtime rows, heartbeats, token use), retried like `atomic`."""
        self._no_nesting()
        return self._retrying(lambda tx: fn(tx._check()), isolation="READ COMMITTED")

    # -- transactions -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StateTransaction]:
        """Exclusive among writers: the session advisory lock is taken (waiting up to the busy timeout) before
        BEGIN (READ COMMITTED), so every read inside sees the latest commit; nothing to retry, none is done."""
        import psycopg

        self._no_nesting()
        try:
            with self._conn(self._busy_timeout) as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
                try:
                    with self._begun(conn, "READ COMMITTED", locked=True) as tx:
                        yield tx
                finally:
                    if not conn.closed:
                        try:
                            conn.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))
                        except psycopg.Error:
                            conn.close()  # never hand the pool a connection that may still hold the lock
        except psycopg.Error as exc:
            raise self._error(exc) from None

    @contextlib.contextmanager
    def _begun(self, conn: Any, isolation: str, *, locked: bool) -> Iterator[_PgTransaction]:
        """A transaction at `isolation` on `conn`: committed when the block ends, rolled back if it raises."""
        import psycopg

        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        tx = _PgTransaction(conn, locked=locked)
        self._local.in_tx = True
        try:
            yield tx
            tx.open = False
            conn.execute("COMMIT")
        except BaseException:
            tx.open = False
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            raise
        finally:
            self._local.in_tx = False

    def atomic(self, fn: Callable[[StateTransaction], T]) -> T:
        """`fn(tx)` at SERIALIZABLE, retried with jittered backoff on conflicts, deadlocks and while the
        database is unreachable, up to the busy timeout; then a one-line StateError."""
        self._no_nesting()
        return self._retrying(fn, isolation="SERIALIZABLE")

    def _retrying(self, fn: Callable[[_PgTransaction], T], *, isolation: str) -> T:
        import psycopg

        deadline = time.monotonic() + self._busy_timeout
        delay = _RETRY_FIRST_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                with self._conn(max(0.1, remaining)) as conn, self._begun(conn, isolation, locked=False) as tx:
                    return fn(tx)
            except (psycopg.errors.TransactionRollback, psycopg.OperationalError) as exc:
                if isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise self._error(exc) from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._error(exc) from None
                time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))  # noqa: S311 (jitter)
                delay = min(delay * 2, _RETRY_MAX_S)
            except psycopg.Error as exc:
                raise self._error(exc) from None

    # -- the rest ---------------------------------------------------------------------------------------------

    def watch(self) -> ChangeWatch:
        """A watch with its own LISTEN connection; run `await watch.run()` as a task to hear notifications."""
        if self._pool is None or self._pool.closed:
            raise StateError(f"state store {self.location} is closed")
        return PostgresWatch(self._url, CHANNEL, self._where, dict(self._kwargs))

    def close(self) -> None:
        if self._pool is not None and not self._pool.closed:
            self._pool.close()
