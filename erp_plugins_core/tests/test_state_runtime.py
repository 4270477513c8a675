"""Per-host runtime rows (and their expiry), the migration of the old single state, and API tokens, on both
backends."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from erp_plugins_core._errors import ConfigError, StateError
from erp_plugins_core._state import (
    MIGRATIONS,
    PG_MIGRATIONS,
    SCHEMA_VERSION,
    RuntimeState,
    TenantPlugin,
    TokenRecord,
    open_store,
)


def _enable(store, *plugins: str, tenant: str = "acme") -> None:
    with store.transaction() as tx:
        for p in plugins:
            tx.put(TenantPlugin(tenant, p, enabled=True))


# --- runtime rows -------------------------------------------------------------------------------------------


def test_each_host_keeps_its_own_runtime_row(state_location: str) -> None:
    with open_store(state_location) as store:
        _enable(store, "p1", "p2")
        _enable(store, "p1", tenant="globex")
        assert store.set_runtime_state("acme", "p1", "active", host="web-1") is True
        assert store.set_runtime_state("acme", "p1", "error", "boom", host="web-2") is True
        assert store.set_runtime_state("globex", "p1", "active", host="web-1") is True
        assert store.set_runtime_state("acme", "nope", "active", host="web-1") is False
        rows = store.runtime("acme")
        assert [(r.host, r.plugin, r.state, r.reason) for r in rows] == [
            ("web-1", "p1", "active", None), ("web-2", "p1", "error", "boom")]
        assert all(isinstance(r, RuntimeState) and r.tenant == "acme" and r.updated_at > 0 for r in rows)
        assert [(r.tenant, r.host) for r in store.runtime()] == [
            ("acme", "web-1"), ("acme", "web-2"), ("globex", "web-1")]
        # the record's state is the most recent row of any host; a record without rows is inactive
        rec = store.get("acme", "p1")
        assert rec is not None and (rec.state, rec.reason) == ("error", "boom")
        store.set_runtime_state("acme", "p1", "active", host="web-1")
        assert (store.get("acme", "p1").state, store.get("acme", "p1").reason) == ("active", None)  # type: ignore[union-attr]
        assert store.get("acme", "p2").state == "inactive"  # type: ignore[union-attr]
        assert [r.state for r in store.list("acme")] == ["active", "inactive"]
        # a host writing again replaces its own row only
        store.set_runtime_state("acme", "p1", "inactive", host="web-2")
        assert [(r.host, r.state) for r in store.runtime("acme")] == [("web-1", "active"), ("web-2", "inactive")]


def test_the_default_host_is_hostname_and_pid(state_location: str) -> None:
    with open_store(state_location) as store:
        _enable(store, "p1")
        store.set_runtime_state("acme", "p1", "active")
        assert [r.host for r in store.runtime()] == [f"{socket.gethostname()}:{os.getpid()}"]


def test_heartbeat_expires_silent_hosts_and_forget_host_removes_one(state_location: str) -> None:
    with open_store(state_location) as store:
        _enable(store, "p1", "p2")
        store.set_runtime_state("acme", "p1", "active", host="old")
        store.set_runtime_state("acme", "p2", "active", host="gone")
        time.sleep(0.3)
        store.set_runtime_state("acme", "p1", "error", "x", host="live")
        store.heartbeat("live", ttl=0.2)  # "old" and "gone" have been silent for longer
        assert [(r.host, r.plugin) for r in store.runtime()] == [("live", "p1")]
        assert store.get("acme", "p2").state == "inactive"  # type: ignore[union-attr]
        store.heartbeat("other", ttl=60)
        assert [r.host for r in store.runtime()] == ["live"]  # "live" is recent enough for a 60 s ttl
        store.forget_host("live")
        assert store.runtime() == []
        assert store.get("acme", "p1").state == "inactive"  # type: ignore[union-attr]
        # a host that only heartbeats (no instance yet) is not expired by its own heartbeat
        store.heartbeat("quiet", ttl=0.1)
        store.set_runtime_state("acme", "p1", "active", host="quiet")
        time.sleep(0.2)
        store.heartbeat("quiet", ttl=0.1)
        assert [r.host for r in store.runtime()] == ["quiet"]


def test_deleting_a_record_deletes_its_runtime_rows(state_location: str) -> None:
    with open_store(state_location) as store:
        _enable(store, "p1")
        store.set_runtime_state("acme", "p1", "active", host="h")
        with store.transaction() as tx:
            tx.delete("acme", "p1")
        assert store.runtime() == []
        _enable(store, "p1")
        assert store.get("acme", "p1").state == "inactive"  # type: ignore[union-attr]


def test_put_writes_policy_only_each_host_records_its_own_state(state_location: str) -> None:
    """`state` on a record put is not stored for anyone: runtime rows come from set_runtime_state per host."""
    with open_store(state_location) as store:
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p1", enabled=True, state="active"))
        assert store.runtime() == []
        assert store.get("acme", "p1").state == "inactive"
        store.set_runtime_state("acme", "p1", "error", "e", host="other")
        with store.transaction() as tx:
            rec = tx.get("acme", "p1")
            assert rec is not None and rec.state == "error"
            rec.priority = 3
            rec.state = "active"
            tx.put(rec)
        assert [(r.host, r.state) for r in store.runtime()] == [("other", "error")]


def test_a_disabled_record_reads_inactive_whatever_hosts_recorded(state_location: str) -> None:
    with open_store(state_location) as store:
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p1", enabled=True))
        store.set_runtime_state("acme", "p1", "active", host="gone-cli")
        assert store.get("acme", "p1").state == "active"
        with store.transaction() as tx:
            rec = tx.get("acme", "p1")
            rec.enabled = False
            tx.put(rec)
        assert store.get("acme", "p1").state == "inactive" and store.list("acme")[0].state == "inactive"


def test_runtime_writes_inside_a_transaction_are_refused(state_location: str) -> None:
    with open_store(state_location) as store:
        _enable(store, "p1")
        with store.transaction(), pytest.raises(StateError, match="nested"):
            store.set_runtime_state("acme", "p1", "active", host="h")


# --- migration of the single state (schema 2) ------------------------------------------------------------------


def _v2_rows(ex) -> None:
    ex("INSERT INTO tenant_plugins (tenant, plugin, enabled, trusted, granted, priority, config, updated_at, state, "
       "reason) VALUES ('acme', 'p1', TRUE, FALSE, '[]', 0, '{}', 100.0, 'error', 'boom')")
    ex("INSERT INTO tenant_plugins (tenant, plugin, enabled, trusted, granted, priority, config, updated_at, state, "
       "reason) VALUES ('acme', 'p2', TRUE, FALSE, '[]', 0, '{}', 200.0, 'inactive', NULL)")


def _check_migrated(location: str) -> None:
    with open_store(location) as store:
        assert [(r.host, r.plugin, r.state, r.reason) for r in store.runtime()] == [
            ("migrated", "p1", "error", "boom")]
        assert store.get("acme", "p1").state == "error"  # type: ignore[union-attr]
        assert store.get("acme", "p2").state == "inactive"  # type: ignore[union-attr]
        store.heartbeat("a-live-host", ttl=60)  # the "migrated" host is long silent: it expires like a gone host
        assert store.runtime() == []
        assert store.get("acme", "p1").enabled is True  # type: ignore[union-attr]


def test_sqlite_schema_2_state_becomes_a_migrated_runtime_row(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0] + MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (2)")
    _v2_rows(conn.execute)
    conn.commit()
    conn.close()
    _check_migrated(str(path))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert "state" not in {r[1] for r in conn.execute("PRAGMA table_info(tenant_plugins)")}
    conn.close()


def test_postgres_schema_2_state_becomes_a_migrated_runtime_row(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA erp_plugins")
        conn.execute("SET search_path TO erp_plugins")
        for statement in PG_MIGRATIONS[0] + PG_MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (2)")
        _v2_rows(conn.execute)
    _check_migrated(pg_url)


# --- tokens ---------------------------------------------------------------------------------------------------


def _tok(token_id: str, tenant: str | None, created: float, **kw) -> TokenRecord:
    return TokenRecord(token_id, tenant, kw.pop("scope", "call"), hashlib.sha256(token_id.encode()).hexdigest(),
                       created, **kw)


def test_tokens_round_trip(state_location: str) -> None:
    with open_store(state_location) as store:
        a = _tok("tok_a", "acme", 10.0, expires=99.5, label="ci")
        b = _tok("tok_b", None, 5.0, scope="admin")
        c = _tok("tok_c", "globex", 20.0)
        for rec in (a, b, c):
            store.add_token(rec)
        assert store.get_token("tok_a") == a
        assert store.get_token("tok_b") == b and store.get_token("tok_b").tenant is None  # type: ignore[union-attr]
        assert store.get_token("tok_zz") is None
        assert [t.id for t in store.list_tokens()] == ["tok_b", "tok_a", "tok_c"]  # by creation
        assert [t.id for t in store.list_tokens("acme")] == ["tok_a"]
        assert store.revoke_token("tok_a") is True and store.get_token("tok_a").revoked is True  # type: ignore[union-attr]
        assert store.revoke_token("tok_nope") is False
        store.touch_token("tok_c", 1234.5)
        assert store.get_token("tok_c").last_used == 1234.5  # type: ignore[union-attr]
        store.touch_token("tok_nope", 1.0)  # unknown: nothing to touch, no error
        with pytest.raises(StateError, match="exists already"):
            store.add_token(_tok("tok_a", "acme", 30.0))
        assert store.get_token("tok_a").created == 10.0  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [
    {"scope": "root"}, {"digest": "abc"}, {"digest": "Z" * 64}, {"tenant": "bad tenant"}, {"id": ""},
])
def test_malformed_tokens_are_refused(state_location: str, bad: dict) -> None:
    fields = {"id": "tok_x", "tenant": "acme", "scope": "call", "digest": "0" * 64, "created": 1.0, **bad}
    with open_store(state_location) as store:
        with pytest.raises(ConfigError):
            store.add_token(TokenRecord(**fields))
        assert store.list_tokens() == [] and store.changes_since(0) == []


def test_the_token_secret_is_never_stored(state_location: str, tmp_path: Path) -> None:
    secret = "s3cret-token-part-" + "x" * 20
    with open_store(state_location) as store:
        store.add_token(TokenRecord("tok_q", "acme", "call", hashlib.sha256(secret.encode()).hexdigest(), 1.0))
    if state_location.startswith("postgresql:"):
        dump = subprocess.run([sys.executable, "-c", (
            "import sys, psycopg; c = psycopg.connect(sys.argv[1]); "
            "print(c.execute('SELECT * FROM erp_plugins.tokens').fetchall())"), state_location],
            capture_output=True, text=True, timeout=30).stdout
        assert "tok_q" in dump and secret not in dump
    else:
        raw = b"".join(p.read_bytes() for p in Path(state_location).parent.glob("state.db*"))
        assert b"tok_q" in raw and secret.encode() not in raw


@pytest.mark.parametrize("host", ["", "   ", "a\nb", "x" * 201])
def test_bad_host_names_are_refused(state_location: str, host: str) -> None:
    with open_store(state_location) as store:
        _enable(store, "p1")
        with pytest.raises(ConfigError, match="invalid host name"):
            store.set_runtime_state("acme", "p1", "active", host=host)
        with pytest.raises(ConfigError, match="invalid host name"):
            store.heartbeat(host)
        with pytest.raises(ConfigError, match="invalid host name"):
            store.forget_host(host)
        assert store.runtime() == []
