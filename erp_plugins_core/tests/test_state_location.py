"""Where the state lives: open_store's parsing and refusals, safe display, missing driver, unreachable
databases and schemas newer than the code, on both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from erp_plugins_core._errors import StateError
from erp_plugins_core._state import (
    SCHEMA_VERSION,
    PostgresStateStore,
    SQLiteStateStore,
    TenantPlugin,
    describe_location,
    open_store,
    parse_location,
)


def test_paths_open_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for given in (tmp_path / "a.db", str(tmp_path / "b.db"), "relative.db", "sub/dir/c.db", "C:state.db"):
        with open_store(given) as store:
            assert isinstance(store, SQLiteStateStore) and store.backend == "sqlite"
            assert store.location == str(Path(os.fspath(given)).expanduser())
    assert (tmp_path / "relative.db").exists() and (tmp_path / "sub" / "dir" / "c.db").exists()


def test_none_uses_the_environment_then_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERP_PLUGINS_STATE", str(tmp_path / "env.db"))
    with open_store() as store:
        assert store.location == str(tmp_path / "env.db")
    monkeypatch.delenv("ERP_PLUGINS_STATE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with open_store(None) as store:
        assert store.location == str(tmp_path / "data" / "erp-plugins" / "state.db")


def test_the_environment_may_hold_a_url(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERP_PLUGINS_STATE", pg_url)
    with open_store() as store:
        assert isinstance(store, PostgresStateStore) and store.backend == "postgresql"
        assert store.location == pg_url


@pytest.mark.parametrize("url", [
    "postgresql://u:pw@127.0.0.1:5432/erp",
    "postgres://u:pw@db.example:6543/erp?sslmode=require",
    "postgresql:///erp?host=/run/postgresql",
])
def test_postgresql_urls_are_recognised(url: str) -> None:
    assert parse_location(url) == ("postgresql", url)


@pytest.mark.parametrize("given", [
    "sqlite:///x.db", "sqlite:x.db", "mysql://root@localhost/erp", "http://example.com/state", "https://x/y",
    "postgresql:/x", "postgresql:x", "postgres:", "POSTGRESQL://u@h/db", "file:///tmp/x.db", "redis://h:6379",
    "s3://bucket/key", "whatever+ssh://host/x",
])
def test_url_like_things_are_refused(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StateError) as info:
        open_store(given)
    message = str(info.value)
    assert "unsupported state location" in message and "postgresql://" in message and "file path" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no folder named "postgresql:" (or anything) was created


def test_a_refused_url_is_named_without_its_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StateError) as info:
        open_store("mysql://admin:hunter2-secret@db:3306/erp?password=other-secret")
    assert "mysql://admin@db:3306/erp" in str(info.value)
    assert "hunter2" not in str(info.value) and "other-secret" not in str(info.value)


@pytest.mark.parametrize("given", ["host=localhost dbname=erp", "dbname=erp user=x", "  port=5432"])
def test_libpq_key_value_strings_are_refused(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StateError, match="key=value.*postgresql://"):
        open_store(given)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given", ["", "   "])
def test_an_empty_location_is_refused(given: str) -> None:
    with pytest.raises(StateError, match="empty"):
        open_store(given)


def test_describe_location_removes_passwords(tmp_path: Path) -> None:
    assert describe_location("postgresql://erp:s3cret@db:5432/erp") == "postgresql://erp@db:5432/erp"
    assert describe_location("postgresql://erp@db/erp?password=s3cret&sslmode=require") == (
        "postgresql://erp@db/erp?sslmode=require")
    assert describe_location("postgresql://:s3cret@db/erp") == "postgresql://db/erp"
    assert describe_location(tmp_path / "x.db") == str(tmp_path / "x.db")
    assert "s3cret" not in describe_location("mysql://a:s3cret@h/x")


def test_the_store_repr_and_location_hold_no_password(pg_cluster, pg_url: str) -> None:
    # trust authentication ignores the password, so the store opens and we can look at everything it shows
    url = pg_url.replace("postgres@", "postgres:pw-not-to-show@")
    with open_store(url) as store:
        assert "pw-not-to-show" not in repr(store) + store.location
        assert store.location == pg_url


def test_without_the_driver_the_error_names_the_extra(pg_url: str) -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["psycopg"] = None   # as if the extra were not installed
        from erp_plugins_core._errors import StateError
        from erp_plugins_core._state import open_store
        try:
            open_store(sys.argv[1])
        except StateError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code, pg_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'erp-plugins-core[postgres]'" in out.stdout and out.stdout.count("\n") == 1


def test_importing_the_package_does_not_import_the_driver() -> None:
    code = "import sys, erp_plugins_core._state; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_an_unreachable_database_is_one_line_naming_host_port_and_database(pg_cluster) -> None:
    with __import__("socket").socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://erp:do-not-print-me@127.0.0.1:{port}/erpdb"
    with pytest.raises(StateError) as info:
        open_store(url, busy_timeout=2)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "erpdb" in message and "unreachable" in message
    assert "do-not-print-me" not in message and "\n" not in message


def test_a_missing_database_is_a_clear_error(pg_cluster) -> None:
    with pytest.raises(StateError) as info:
        open_store(pg_cluster.url("no_such_db"), busy_timeout=2)
    assert "no_such_db" in str(info.value) and "does not exist" in str(info.value)


def test_postgres_tables_live_in_their_own_schema_beside_other_tables(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")  # someone else's table in the same database
        conn.execute("CREATE TABLE audit (x TEXT)")  # even one with one of our names
    with open_store(pg_url) as store, store.transaction() as tx:
        tx.put(TenantPlugin("acme", "p"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ours = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'erp_plugins'")}
        assert {"tenant_plugins", "audit", "settings", "schema_version", "runtime", "hosts", "changes",
                "tokens"} <= ours
        assert conn.execute("SELECT count(*) FROM public.audit").fetchone() == (0,)


def test_newer_postgres_schema_is_refused(pg_url: str) -> None:
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE erp_plugins.schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION}") \
            as info:
        open_store(pg_url)
    assert "upgrade erp-plugins-core" in str(info.value) and "\n" not in str(info.value)


def test_two_stores_opening_a_fresh_database_at_once_migrate_once(pg_url: str, tmp_path: Path) -> None:
    """The migration runs under an advisory lock: racing openers neither fail nor apply it twice."""
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from erp_plugins_core._state import open_store, TenantPlugin
        while not Path(sys.argv[2]).exists():
            time.sleep(0.002)
        with open_store(sys.argv[1]) as store, store.transaction() as tx:
            tx.put(TenantPlugin("acme", sys.argv[3]))
        print("ok")
    """)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url, str(go), f"p{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == "ok", err
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM erp_plugins.schema_version").fetchall() == [(SCHEMA_VERSION,)]
    with open_store(pg_url) as store:
        assert [r.plugin for r in store.list("acme")] == ["p0", "p1", "p2"]


def test_the_sqlite_store_itself_refuses_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for given in ("postgresql://u:pw@h/db", "postgresql:/x", "sqlite:///x.db"):
        with pytest.raises(StateError) as info:
            SQLiteStateStore(given)
        assert "pw" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_the_password_comes_from_the_url_pgpassword_or_a_pgpass_file(
    pg_cluster, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, password = f"pw_{os.getpid()}", "Corr3ct-horse-battery"
    pg_cluster.add_password_user(user, password)
    db = pg_url.rsplit("/", 1)[1]
    bare = pg_cluster.url(db, user=user)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))
    with pytest.raises(StateError) as info:  # no password anywhere: libpq's own reason, one line
        open_store(bare, busy_timeout=2)
    assert "password" in str(info.value) and db in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StateError) as info:  # a wrong one in the URL is never shown
        open_store(pg_cluster.url(db, user=user, password="Wr0ng-secret-value"), busy_timeout=2)
    assert "Wr0ng-secret-value" not in str(info.value) and "authentication failed" in str(info.value)
    with open_store(pg_cluster.url(db, user=user, password=password)) as store:
        store.set_setting("from", "url")
    monkeypatch.setenv("PGPASSWORD", password)
    with open_store(bare) as store:
        assert store.get_setting("from") == "url" and password not in repr(store) + store.location
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_cluster.port}:{db}:{user}:{password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with open_store(bare) as store:
        assert store.get_setting("from") == "url"
