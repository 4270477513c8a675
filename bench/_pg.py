"""PostgreSQL for the benchmarks: fresh databases on the server `--pg-url` names, or in a throwaway cluster.

The throwaway cluster is the tests' own (`PgCluster` in the repository's conftest.py), started with fsync on,
as in production, so commits cost what they cost there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def databases(url: str | None) -> Iterator[Callable[[], str]]:
    """Yield `new() -> URL`, each call a fresh database: on `url`'s server, or in a throwaway cluster."""
    if url:
        import psycopg

        def new_on_server() -> str:
            name = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            return url.rsplit("/", 1)[0] + "/" + name

        yield new_on_server
        return
    spec = importlib.util.spec_from_file_location("_bench_conftest", ROOT / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    bin_dir = conftest._pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries not found: apt-get install -y postgresql, or pass a PostgreSQL URL")
    base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    cluster = conftest.PgCluster(bin_dir, base)
    cluster.init()
    cluster.start(durable=True)
    try:
        yield lambda: cluster.url(cluster.create_database())
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
