"""What following the shared state costs a host: the per-call freshness check, and PostgreSQL against SQLite.

- `host.call` on a host that follows its state (the check before each call: a clock read, and at most once a
  millisecond `PRAGMA data_version` on SQLite or a flag set by LISTEN/NOTIFY on PostgreSQL) against the same
  call on a second host over the same state whose follower is switched off. Target ≤ 1.05×.
- `host.call` on the warm path with a PostgreSQL state against an SQLite state (no target: the warm path does
  not touch the database, so this should be ≈ 1×).
- `host.enable` of a trusted plugin (validation, start, the atomic check-and-write with its audit line and
  this host's runtime row) with a PostgreSQL state against an SQLite state (no target).

Both hosts run in one event loop; rounds alternate which side goes first; medians. A throwaway PostgreSQL
cluster is started for the run unless `--pg-url` names a database.

    python bench/bench_follow.py [--json] [--rounds N] [--round-seconds S] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _pg import databases  # noqa: E402
from _synthetic import make_site, report, row  # noqa: E402
from bench_dispatch import CONTEXT, PROMPT, _compare  # noqa: E402


async def _enable_pair(hosts: dict[str, Any], names: list[str], rounds: int) -> dict[str, float]:
    """Median seconds of one `enable` per backend, alternating the backends, each time on a fresh tenant."""
    times: dict[str, list[float]] = {k: [] for k in hosts}
    for r in range(rounds):
        order = list(hosts) if r % 2 == 0 else list(reversed(hosts))
        for key in order:
            start = time.perf_counter()
            await hosts[key].enable(names[0], tenant=f"en{r}", trust=True)
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


async def run(args: argparse.Namespace, tmp: Path, pg_url: str) -> list[dict[str, Any]]:
    from erp_plugins_core import PluginHost
    from erp_plugins_core._catalog import Catalog

    names = make_site(tmp / "site", 10, prefix="bfollow", sandbox=False)
    sys.path.insert(0, str(tmp / "site"))
    importlib.invalidate_caches()
    catalog = Catalog.load(use_cache=False)
    locations = {"sqlite": str(tmp / "state.db"), "postgresql": pg_url}
    rows: list[dict[str, Any]] = []
    following: dict[str, Any] = {}
    for backend, location in locations.items():
        following[backend] = await PluginHost(location, catalog=catalog, health_loop=False).open()
        for name in names:
            await following[backend].enable(name, tenant="t10", trust=True)
        await following[backend].enable(names[0], tenant="t1", trust=True)
    try:
        for backend, location in locations.items():
            still = await PluginHost(location, catalog=catalog, health_loop=False).open()
            await still._follower.close()  # the same host, minus the check before each call
            still._follower = None
            try:
                for tenant, label in (("t1", "1 impl"), ("t10", "10 impls")):
                    host = following[backend]

                    def ours(host: Any = host, tenant: str = tenant) -> Awaitable[Any]:
                        return host.call("ai_request", tenant=tenant, prompt=PROMPT, context=CONTEXT)

                    def ref(tenant: str = tenant) -> Awaitable[Any]:
                        return still.call("ai_request", tenant=tenant, prompt=PROMPT, context=CONTEXT)

                    if [r.result for r in await ours()] != [r.result for r in await ref()]:
                        raise SystemExit(f"{backend} {label}: the two hosts answer differently")
                    o, p, _ = await _compare(ours, ref, True, args.rounds, args.round_seconds)
                    rows.append(row(f"call, following vs not, {backend}, {label}", o, p, 1.05,
                                    "the same call on a host with its follower off"))
            finally:
                await still.close()
        for tenant, label in (("t1", "1 impl"), ("t10", "10 impls")):
            pg, lite = following["postgresql"], following["sqlite"]

            def on_pg(tenant: str = tenant) -> Awaitable[Any]:
                return pg.call("ai_request", tenant=tenant, prompt=PROMPT, context=CONTEXT)

            def on_sqlite(tenant: str = tenant) -> Awaitable[Any]:
                return lite.call("ai_request", tenant=tenant, prompt=PROMPT, context=CONTEXT)

            o, p, _ = await _compare(on_pg, on_sqlite, True, args.rounds, args.round_seconds)
            rows.append(row(f"call (warm), PostgreSQL vs SQLite, {label}", o, p, None, "the same call, SQLite state"))
        medians = await _enable_pair(following, names, args.rounds)
        rows.append(row("enable, PostgreSQL vs SQLite", medians["postgresql"], medians["sqlite"], None,
                        "the same enable, SQLite state"))
    finally:
        for host in following.values():
            await host.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per measurement (median)")
    parser.add_argument("--round-seconds", type=float, default=0.25, help="about how long one side of a round takes")
    parser.add_argument("--pg-url", help="a PostgreSQL server to make a database on instead of a throwaway cluster")
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    with tempfile.TemporaryDirectory(prefix="erp-bench-follow-") as tmp:
        os.environ["ERP_PLUGINS_CACHE_DIR"] = str(Path(tmp, "cache"))
        os.environ["ERP_PLUGINS_SECRET_KEY"] = Fernet.generate_key().decode()
        with databases(args.pg_url) as new_database:
            rows = asyncio.run(run(args, Path(tmp), new_database()))
    report("bench_follow: median seconds per call or enable", rows, args.json)


if __name__ == "__main__":
    main()
