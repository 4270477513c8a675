"""The state store on both backends (SQLite files, a real PostgreSQL): transactions, migrations, several
processes, SIGKILL, bad files. SQLite-file specifics (WAL, modes, locks on open) stay SQLite-only."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from erp_plugins_core._errors import ConfigError, StateError
from erp_plugins_core._state import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditEntry,
    SQLiteStateStore,
    StateStore,
    TenantPlugin,
    default_state_path,
    open_store,
    os_user,
    validate_tenant,
)


def _run_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- basics ---------------------------------------------------------------------------------------------------


def test_put_get_list_delete_round_trip(state_location: str) -> None:
    with open_store(state_location) as store:
        assert isinstance(store, StateStore)
        with store.transaction() as tx:
            stored = tx.put(
                TenantPlugin("acme", "openai_provider", enabled=True, trusted=True, granted=["ai.generate"],
                             priority=5, config={"model": "gpt-4o", "api_key": "env:OPENAI_API_KEY"}, state="active")
            )
            tx.put(TenantPlugin("acme", "local_llm_provider", enabled=True, priority=1))
            tx.put(TenantPlugin("globex", "openai_provider"))
        assert stored.updated_at > 0
        got = store.get("acme", "openai_provider")
        assert got == dataclasses.replace(stored, state="inactive")  # a host records its state per host, not put
        assert got.granted == ["ai.generate"] and got.config["api_key"] == "env:OPENAI_API_KEY"
        assert [r.plugin for r in store.list("acme")] == ["local_llm_provider", "openai_provider"]  # priority order
        assert [(r.tenant, r.plugin) for r in store.list()] == [
            ("acme", "local_llm_provider"), ("acme", "openai_provider"), ("globex", "openai_provider")]
        assert store.tenants() == ["acme", "globex"]
        assert store.get("globex", "local_llm_provider") is None
        with store.transaction() as tx:
            assert tx.delete("acme", "openai_provider") is True
            assert tx.delete("acme", "openai_provider") is False
        assert store.get("acme", "openai_provider") is None


def test_state_survives_reopen_and_runtime_state(state_location: str) -> None:
    with open_store(state_location) as store, store.transaction() as tx:
        tx.put(TenantPlugin("acme", "p1", enabled=True))
    with open_store(state_location) as store:
        assert store.set_runtime_state("acme", "p1", "error", "boom: ***") is True
        assert store.set_runtime_state("acme", "missing", "error", "x") is False
    with open_store(state_location) as store:
        rec = store.get("acme", "p1")
        assert rec is not None and rec.enabled and rec.state == "error" and rec.reason == "boom: ***"


def test_exception_rolls_back_everything(state_location: str) -> None:
    with open_store(state_location) as store:
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p1"))
            tx.add_audit(AuditEntry.now("acme", "p1", "enable"))
            tx.set_setting("lock", "{}")
            raise RuntimeError("abort")
        assert store.list() == [] and store.audit() == [] and store.get_setting("lock") is None
        # the store is usable afterwards, and a handle used after its block is refused
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p1"))
        with pytest.raises(StateError, match="after it ended"):
            tx.get("acme", "p1")
        assert store.get("acme", "p1") is not None


def test_nested_transaction_is_refused(state_location: str) -> None:
    with open_store(state_location) as store, store.transaction():
        with pytest.raises(StateError, match="nested"), store.transaction():
            pass


def test_audit_order_filter_and_limit(state_location: str) -> None:
    with open_store(state_location) as store:
        for i in range(5):
            with store.transaction() as tx:
                tx.add_audit(AuditEntry.now("acme" if i % 2 == 0 else "globex", "p", f"a{i}", {"n": i}))
        assert [e.action for e in store.audit()] == ["a0", "a1", "a2", "a3", "a4"]
        assert [e.action for e in store.audit("acme")] == ["a0", "a2", "a4"]
        assert [e.action for e in store.audit(limit=2)] == ["a3", "a4"]
        assert [e.action for e in store.audit("globex", limit=1)] == ["a3"]
        entry = store.audit()[0]
        assert entry.user == os_user() and entry.user and entry.detail == {"n": 0} and entry.time > 0


def test_settings(state_location: str) -> None:
    with open_store(state_location) as store:
        assert store.get_setting("lock") is None
        store.set_setting("lock", json.dumps({"a": 1}))
        store.set_setting("lock", json.dumps({"a": 2}))
        assert json.loads(store.get_setting("lock") or "") == {"a": 2}
        with store.transaction() as tx:
            assert tx.get_setting("lock") == '{"a": 2}'


def test_closed_store_is_an_error(state_location: str) -> None:
    store = open_store(state_location)
    store.close()
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.list()


@pytest.mark.parametrize("name", ["acme", "a", "Tenant_1.prod-eu", "9" * 64])
def test_valid_tenant_names(name: str) -> None:
    assert validate_tenant(name) == name


@pytest.mark.parametrize("name", ["", "-acme", ".x", "a b", "a/b", "ä", "x" * 65, "../etc"])
def test_invalid_tenant_names(state_location: str, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid tenant name"):
        validate_tenant(name)
    with open_store(state_location) as store, pytest.raises(ConfigError), store.transaction() as tx:
        tx.put(TenantPlugin(name, "p"))


def test_default_state_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ERP_PLUGINS_STATE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_state_path() == tmp_path / "data" / "erp-plugins" / "state.db"
    monkeypatch.setenv("ERP_PLUGINS_STATE", str(tmp_path / "elsewhere.db"))
    assert default_state_path() == tmp_path / "elsewhere.db"


# --- files ----------------------------------------------------------------------------------------------------


def test_file_created_0600_with_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    with SQLiteStateStore(path) as store, store.transaction() as tx:
        tx.put(TenantPlugin("acme", "p"))
        wal = Path(f"{path}-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SQLiteStateStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.close()


def test_corrupt_file_is_a_clear_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite at all " * 200)
    with pytest.raises(StateError) as info:
        SQLiteStateStore(path)
    message = str(info.value)
    assert str(path) in message and "not a valid erp-plugins state database" in message and "--state" in message
    assert "\n" not in message


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="another program"):
        SQLiteStateStore(path)


def test_unwritable_path_is_a_clear_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "state.db"  # a folder that cannot exist: its parent is a file (works even as root)
    with pytest.raises(StateError) as info:
        SQLiteStateStore(path)
    assert str(path) in str(info.value) and "--state" in str(info.value)
    with pytest.raises(StateError, match="is a directory"):
        SQLiteStateStore(tmp_path)


def test_newer_sqlite_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SQLiteStateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}, newer") as info:
        SQLiteStateStore(path)
    assert str(path) in str(info.value)


def test_migration_from_version_1(tmp_path: Path) -> None:
    """A v1 file written by hand (exactly the first migration) is brought to the current schema, data kept."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute(
        "INSERT INTO tenant_plugins VALUES ('acme', 'p1', 1, 0, '[\"ai.generate\"]', 3, '{\"model\": \"m\"}', 12.5)"
    )
    conn.execute("INSERT INTO audit (time, user, tenant, plugin, action, detail) VALUES (1.0, 'root', 'acme', "
                 "'p1', 'enable', '{}')")
    conn.commit()
    conn.close()

    with SQLiteStateStore(path) as store:
        rec = store.get("acme", "p1")
        assert rec == TenantPlugin("acme", "p1", enabled=True, trusted=False, granted=["ai.generate"], priority=3,
                                   config={"model": "m"}, state="inactive", reason=None, updated_at=12.5)
        assert [e.action for e in store.audit()] == ["enable"]
        store.set_setting("lock", "{}")  # table added by migration 2
        assert store.set_runtime_state("acme", "p1", "active") is True
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


# --- several processes ------------------------------------------------------------------------------------------

_WORKER = """
import sys, time
from pathlib import Path
from erp_plugins_core._state import open_store, TenantPlugin, AuditEntry
path, me, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
store = open_store(path)   # both processes may create the file (or migrate the database) at the same moment
for i in range(50):
    with store.transaction() as tx:   # read-modify-write of a row the other process also changes
        rec = tx.get("acme", "shared") or TenantPlugin("acme", "shared", config={"count": 0, "by": []})
        time.sleep(0.002)   # widen the window between read and write: a lost update would show
        rec.config["count"] += 1
        rec.config["by"].append(me)
        tx.put(rec)
        tx.add_audit(AuditEntry.now("acme", "shared", "bump", {"by": me}))
    with store.transaction() as tx:   # and a row of its own
        own = tx.get("acme", me) or TenantPlugin("acme", me)
        own.priority += 1
        tx.put(own)
    store.set_runtime_state("acme", "shared", "active", me)
store.close()
print("done")
"""


def test_two_processes_change_the_same_tenant_without_lost_updates(state_location: str, tmp_path: Path) -> None:
    path = str(tmp_path / "shared" / "state.db") if not state_location.startswith("postgresql:") else state_location
    go = tmp_path / "go"
    children = [_run_child(_WORKER, path, name, str(go)) for name in ("p_one", "p_two")]
    time.sleep(0.3)  # let both interpreters start, then release them together
    go.touch()
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.strip() == "done"
        assert "locked" not in err and err == ""
    with open_store(path) as store:
        shared = store.get("acme", "shared")
        assert shared is not None and shared.config["count"] == 100
        assert sorted(set(shared.config["by"])) == ["p_one", "p_two"] and len(shared.config["by"]) == 100
        assert store.get("acme", "p_one").priority == 50  # type: ignore[union-attr]
        assert store.get("acme", "p_two").priority == 50  # type: ignore[union-attr]
        assert len(store.audit("acme")) == 100


_KILLED = """
import sys, time
from erp_plugins_core._state import open_store, TenantPlugin, AuditEntry
store = open_store(sys.argv[1])
with store.transaction() as tx:
    tx.put(TenantPlugin("acme", "committed", enabled=True, state="active"))
with store.transaction() as tx:
    rec = tx.get("acme", "committed")
    rec.enabled = False
    tx.put(rec)
    tx.put(TenantPlugin("acme", "half_enabled", enabled=True, config={"x": "y" * 100000}))
    tx.add_audit(AuditEntry.now("acme", "half_enabled", "enable"))
    tx.set_setting("lock", "partial")
    print("written", flush=True)
    time.sleep(60)
"""


def test_sigkill_in_the_middle_of_a_transaction_leaves_a_consistent_store(state_location: str) -> None:
    path = state_location
    child = _run_child(_KILLED, path)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "written", child.stderr.read() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL
    started = time.monotonic()
    with open_store(path, busy_timeout=5) as store:
        committed = store.get("acme", "committed")
        assert committed is not None and committed.enabled is True
        assert store.get("acme", "half_enabled") is None
        assert store.audit() == []
        assert store.get_setting("lock") is None
        with store.transaction() as tx:  # the dead process's lock is gone: writing works at once
            tx.put(TenantPlugin("acme", "half_enabled", enabled=True))
        assert store.get("acme", "half_enabled") is not None
    assert time.monotonic() - started < 3
    if not path.startswith("postgresql:"):
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()


def test_a_waiting_writer_proceeds_when_the_other_commits(state_location: str) -> None:
    """busy_timeout: a writer blocked by another process's transaction waits instead of failing 'locked'."""
    path = state_location
    open_store(path).close()
    holder = _run_child(
        """
        import sys, time
        from erp_plugins_core._state import open_store, TenantPlugin
        store = open_store(sys.argv[1])
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "first"))
            print("holding", flush=True)
            time.sleep(1.0)
        print("committed", flush=True)
        """,
        path,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    with open_store(path) as store:
        started = time.monotonic()
        with store.transaction() as tx:
            assert tx.get("acme", "first") is not None  # we got the lock only after the holder committed
            tx.put(TenantPlugin("acme", "second"))
        assert time.monotonic() - started > 0.3
    out, err = holder.communicate(timeout=10)
    assert holder.returncode == 0, err
    with open_store(path) as store:
        assert [r.plugin for r in store.list("acme")] == ["first", "second"]


def test_lock_held_too_long_is_a_clear_state_error(state_location: str) -> None:
    path = state_location
    open_store(path).close()
    holder = _run_child(
        """
        import sys, time
        from erp_plugins_core._state import open_store
        store = open_store(sys.argv[1])
        with store.transaction():
            print("holding", flush=True)
            time.sleep(30)
        """,
        path,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with open_store(path, busy_timeout=0.2) as store:
            with pytest.raises(StateError, match="locked by another (process|writer)") as info, store.transaction():
                pass
            where = store.location if store.backend == "sqlite" else store.location.rsplit("/", 1)[1]
            assert where in str(info.value) and "\n" not in str(info.value)
            assert store.list() == []  # reads are not blocked by the writer (WAL)
    finally:
        holder.kill()
        holder.communicate()


def test_opening_a_fresh_file_while_another_connection_writes_to_it_waits(tmp_path: Path) -> None:
    """Two processes creating one state file at once: SQLite answers 'locked' at once, without its busy handler,
    to the one that reads while the other holds the write lock (a possible deadlock); the store retries."""
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the write lock on a fresh rollback-journal file, as the other opener has it
    released = threading.Timer(0.3, other.execute, ("COMMIT",))
    released.start()
    started = time.monotonic()
    try:
        with SQLiteStateStore(path, busy_timeout=10) as store:
            assert time.monotonic() - started >= 0.25  # it waited for the other connection instead of failing
            store.set_setting("k", "v")
            assert store.get_setting("k") == "v"
    finally:
        released.join()
        other.close()


def test_opening_a_file_locked_past_the_timeout_is_a_clear_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StateError, match="locked by another process for more than 0.3 s") as info:
            SQLiteStateStore(path, busy_timeout=0.3)
        assert time.monotonic() - started >= 0.3  # retried until the timeout, not given up at the first 'locked'
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    finally:
        other.close()


def test_opening_an_existing_file_again_never_opens_it_outside_sqlite(tmp_path: Path, monkeypatch) -> None:
    """Closing any descriptor of a file drops this process's POSIX locks on it, those of open connections too."""
    path = tmp_path / "state.db"
    first = open_store(str(path))
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    try:
        open_store(str(path)).close()
    finally:
        first.close()
    assert str(path) not in opened
