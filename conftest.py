"""Fixtures for every test folder: a throwaway PostgreSQL cluster and state locations on both backends.

- `pg_cluster` (session): `initdb` + `pg_ctl` on a free loopback port, socket dir inside its own temp dir,
  `-A trust`, run as the `postgres` user when the tests run as root (PostgreSQL refuses root); stopped and
  removed at the end. Each xdist worker starts its own.
- `pg_url`: a fresh database on it for each test (CREATE DATABASE from a counter), as a postgresql:// URL.
- `state_location`: parametrized over "sqlite" (a file under tmp_path) and "postgresql" (a fresh `pg_url`).

Missing PostgreSQL binaries FAIL the tests that need them, naming the fix: CI must not skip them silently.
Only `ERP_PLUGINS_TEST_NO_POSTGRES=1` (for machines without PostgreSQL; default off) turns them into skips.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NO_POSTGRES_ENV = "ERP_PLUGINS_TEST_NO_POSTGRES"
PG_BIN_ENV = "ERP_PLUGINS_TEST_PG_BIN"


def _pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: $ERP_PLUGINS_TEST_PG_BIN, the PATH, or Debian's newest version."""
    given = os.environ.get(PG_BIN_ENV)
    if given:
        return Path(given)
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A running throwaway cluster: `url(db)`, `create_database()`, `stop()` and `start()` (same port)."""

    def __init__(self, bin_dir: Path, base: Path) -> None:
        self.bin = bin_dir
        self.base = base
        self.data = base / "data"
        self.sockets = base / "sock"
        self.log = base / "server.log"
        self.port = _free_port()
        self._counter = itertools.count(1)
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {proc.stderr.strip() or proc.stdout.strip()} {log}")

    def init(self) -> None:
        self.sockets.mkdir()
        if self._as:  # root: the postgres user must own the cluster's folders and reach them
            shutil.chown(self.base, "postgres")
            shutil.chown(self.sockets, "postgres")
        os.chmod(self.base, 0o711)  # noqa: S103 (others may only traverse it)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")

    def start(self, *, durable: bool = False) -> None:
        """Start (again) on the same port; `durable` keeps fsync on (benchmarks), tests run without it."""
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sockets} "
                   "-c max_connections=200")
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-w", "-D", str(self.data), "-m", mode, "stop")

    def url(self, dbname: str = "postgres", *, password: str | None = None, user: str = "postgres") -> str:
        who = user if password is None else f"{user}:{password}"
        return f"postgresql://{who}@127.0.0.1:{self.port}/{dbname}"

    def add_password_user(self, name: str, password: str) -> None:
        """A login role that must give `password` (scram) over TCP; every other role stays `trust`."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE \"{name}\" LOGIN SUPERUSER PASSWORD '{password}'")
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "reload")

    def create_database(self) -> str:
        """A new empty database's name."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for this test session (this xdist worker)."""
    if os.environ.get(NO_POSTGRES_ENV) == "1":
        pytest.skip(f"PostgreSQL tests turned off by {NO_POSTGRES_ENV}=1")
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.fail(
            "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql, or set "
            f"{PG_BIN_ENV} to their folder; only on a machine without PostgreSQL set {NO_POSTGRES_ENV}=1",
            pytrace=False,
        )
    base = Path(tempfile.mkdtemp(prefix="erp-pg-"))
    cluster = PgCluster(bin_dir, base)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except Exception:  # noqa: BLE001 - already stopped, or never started
            pass
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A postgresql:// URL of a fresh, empty database (trust auth, no password)."""
    return pg_cluster.url(pg_cluster.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state location on each backend: an SQLite file path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("pg_url"))
