"""Opening a `PluginHost` over 1,000 tenants with the sandboxed `openai_provider` enabled (issue 18): target ≤ 1 s,
and no worker started by the open.

A state on each backend (SQLite file; a fresh PostgreSQL database, `--pg-url` or a throwaway cluster) gets the
plugin enabled for one tenant through a host (the real row, config and secret reference), then the same row
for `--tenants` - 1 more tenants written in one transaction. Each round then times a new host's
`async with` entry (open the store, discover, follow the change feed), counts the processes it left running
besides the OpenAI fake, and closes it. Medians over `--rounds`.

Run as root (sandboxed workers): `python bench/bench_host_open.py [--tenants N] [--rounds R] [--pg-url URL] [--json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True

from _pg import databases  # noqa: E402
from _sdk_calls import API_KEY, OPENAI_MODEL, TIMEOUT  # noqa: E402
from bench_ai_providers import FakeProcess  # noqa: E402
from bench_fleet import descendants  # noqa: E402

from erp_plugins_core import PluginHost  # noqa: E402

PLUGIN = "openai_provider"
KEY_ENV = "BENCH_OPENAI_KEY"


async def fill(location: str, config: dict[str, object], tenants: int) -> None:
    """The plugin enabled for `tenants` tenants: the first through a host, the others as copies of its row."""
    async with PluginHost(location, health_loop=False) as host:
        await host.enable(PLUGIN, tenant="tenant0", config=config)
        store = host._require_store()
        row = store.get("tenant0", PLUGIN)
        assert row is not None
        with store.transaction() as tx:
            for i in range(1, tenants):
                tx.put(dataclasses.replace(row, tenant=f"tenant{i}"))
        if len(store.tenants()) != tenants:
            raise SystemExit(f"the state holds {len(store.tenants())} tenants, not {tenants}")


async def time_opens(location: str, rounds: int, fake_pid: int) -> tuple[float, int]:
    """Median seconds to open a host on `location`, and the most processes any open left running."""
    took, most = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        host = PluginHost(location, health_loop=False)
        await host.__aenter__()
        took.append(time.perf_counter() - start)
        most = max(most, len([p for p in descendants(os.getpid()) if p != fake_pid]))
        await host.__aexit__(None, None, None)
    return statistics.median(took), most


async def main(args: argparse.Namespace) -> None:
    os.environ[KEY_ENV] = API_KEY
    result: dict[str, object] = {"tenants": args.tenants, "rounds": args.rounds}
    work = Path(tempfile.mkdtemp(prefix="erp-bench-open-"))
    with FakeProcess("openai_fake.py") as fake, databases(args.pg_url) as new_database:
        config = {"api_key": f"env:{KEY_ENV}", "base_url": fake.url, "model": OPENAI_MODEL, "max_retries": 0,
                  "timeout": TIMEOUT}
        for name, location in (("SQLite", str(work / "state.db")), ("PostgreSQL", new_database())):
            await fill(location, config, args.tenants)
            seconds, processes = await time_opens(location, args.rounds, fake.proc.pid)
            result[name.lower()] = {"open_s": seconds, "processes": processes}
            if not args.json:
                print(f"{name}: opening a host over {args.tenants} tenants with sandboxed {PLUGIN}: "
                      f"{seconds * 1e3:.1f} ms (target <= 1000 ms), {processes} worker processes started")
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg-url", default=None, help="a PostgreSQL server to make the database on")
    parser.add_argument("--json", action="store_true")
    asyncio.run(main(parser.parse_args()))
