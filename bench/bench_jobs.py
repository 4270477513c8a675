"""Durable events on PostgreSQL: end-to-end events/s, emit latency, and the time to drain a backlog.

1. Events per second end to end with one worker: `host.emit` of N events while `host.run_jobs` delivers them
   to one trusted in-process `on_event` plugin, against procrastinate's own loop with an empty task
   (`task.defer_async()` of N jobs while `app.run_worker_async` runs them). Same process, same database
   server, concurrency 1 on both sides, medians over alternating rounds. Target: >= 0.8x.
2. `emit` latency (one tenant, one on_event plugin, no worker running) against a plain INSERT of the same
   row (id, tenant, event_type, data) on an autocommit connection. Medians over alternating rounds. Target:
   <= 1.5x. Also against procrastinate's own `defer_async` of one job with the same data and a lock (the
   floor of any delivery stored on procrastinate: its row, its indexes, its event trigger and NOTIFY).
3. 10,000 queued events (10 tenants) drained by two `erp-plugins worker` processes (--concurrency 4).
4. The same emit latency on the embedded SQLite state (the event row in the state file, synchronous=FULL)
   against a plain INSERT of the row into that file.
5. emit -> delivered latency, p50 / p99, on both backends: one event at a time, a worker (`run_jobs`, the
   same loop `erp-plugins worker` runs) delivering in the same process; the time from calling `emit` to the
   plugin's `on_event` starting. The relay's hop (the stored event fanned out into its deliveries) is part of it.

Needs PostgreSQL: --url postgresql://..., or the binaries (a throwaway cluster is started as the tests do, but
durable: fsync and synchronous_commit on, so every commit pays the disk's flush as it would in production).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pg import databases  # noqa: E402

PLUGIN = """
import time
from erp_plugins_core import PluginInterface
SEEN = [0]
AT = {}
class Plugin(PluginInterface):
    async def on_event(self, event_type, data):
        SEEN[0] += 1
        if "lat" in data:
            AT[data["lat"]] = time.perf_counter()
"""
MANIFEST = """name: sink
version: "1.0.0"
plugin_type: business_logic
api_version: "1.0"
security: {sandbox: false}
hooks: [{name: on_event, method: on_event}]
"""


def _load(path: Path, name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _site(root: Path) -> Path:
    tests_conftest = _load(ROOT / "erp_plugins_core" / "tests" / "conftest.py", "_bench_site")
    site = tests_conftest.SiteDir(root)
    site.install("erp-sink", plugins={"sink": (MANIFEST, PLUGIN)})
    sys.path.insert(0, str(root))
    return root


async def _host(url: str, tenants: list[str], *, deliver: bool = False):  # noqa: ANN202
    from erp_plugins_core import PluginHost
    from erp_plugins_core._state import open_store

    host = PluginHost(open_store(url), health_loop=False, deliver=deliver)
    await host.open()
    for t in tenants:
        await host.enable("sink", tenant=t, trust=True)
    return host


async def end_to_end(url_ours: str, url_ref: str, n: int, rounds: int) -> tuple[float, float]:
    """Median events/s of each side over `rounds` alternating rounds of `n` events (both workers stay up)."""
    import erp_sink.sink.plugin as sink
    import procrastinate

    host = await _host(url_ours, ["acme"])
    await host.emit("acme", "warm", {})  # opens the engine, creates its tables
    stop = asyncio.Event()
    sink.SEEN[0] = 0
    runner = asyncio.create_task(host.run_jobs(stop=stop, concurrency=1))
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url_ref))
    done = [0]

    @app.task(name="empty")
    async def empty(i: int) -> None:
        done[0] += 1

    await app.open_async()
    await app.schema_manager.apply_schema_async()
    worker = asyncio.create_task(app.run_worker_async(concurrency=1, install_signal_handlers=False))
    await empty.defer_async(i=-1)

    async def ours() -> float:
        target = sink.SEEN[0] + n
        start = time.perf_counter()
        for i in range(n):
            await host.emit("acme", "bench", {"n": i})
        while sink.SEEN[0] < target:  # noqa: ASYNC110 (the plugin counts; polling keeps it unchanged)
            await asyncio.sleep(0.001)
        return n / (time.perf_counter() - start)

    async def ref() -> float:
        target = done[0] + n
        start = time.perf_counter()
        for i in range(n):
            await empty.defer_async(i=i)
        while done[0] < target:  # noqa: ASYNC110 (the task counts; polling keeps it unchanged)
            await asyncio.sleep(0.001)
        return n / (time.perf_counter() - start)

    while sink.SEEN[0] < 1 or done[0] < 1:  # noqa: ASYNC110 (both workers up and warm)
        await asyncio.sleep(0.01)
    mine, theirs = [], []
    for r in range(rounds):
        if r % 2 == 0:
            mine.append(await ours())
            theirs.append(await ref())
        else:
            theirs.append(await ref())
            mine.append(await ours())
    stop.set()
    await runner
    await host.close()
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    await app.close_async()
    return statistics.median(mine), statistics.median(theirs)


async def emit_latency(url: str, rounds: int, per_round: int) -> tuple[float, float, float]:
    import procrastinate
    import psycopg
    from psycopg.types.json import Jsonb

    host = await _host(url, ["acme"])
    await host.emit("acme", "warm", {})
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await conn.execute("CREATE TABLE IF NOT EXISTS plain_events (id uuid PRIMARY KEY, tenant text, event_type text, "
                       "data jsonb, created_at timestamptz DEFAULT now())")
    data = {"invoice": "INV-1", "amount": 125.5, "lines": [1, 2, 3]}
    ours, ref, defer = [], [], []
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="deliver", queue="bench")
    async def deliver(**kwargs: object) -> None:
        return None

    await app.open_async()

    async def run_defer() -> None:
        for _ in range(per_round):
            t = time.perf_counter()
            await deliver.configure(lock="acme/sink").defer_async(work=str(uuid.uuid4()), event_type="invoice.created",
                                                                  data=data)
            defer.append(time.perf_counter() - t)

    async def run_ours() -> None:
        for _ in range(per_round):
            t = time.perf_counter()
            await host.emit("acme", "invoice.created", data)
            ours.append(time.perf_counter() - t)

    async def run_ref() -> None:
        for _ in range(per_round):
            t = time.perf_counter()
            await conn.execute("INSERT INTO plain_events (id, tenant, event_type, data) VALUES (%s, %s, %s, %s)",
                               (str(uuid.uuid4()), "acme", "invoice.created", Jsonb(data)))
            ref.append(time.perf_counter() - t)

    for r in range(rounds):
        for side in ((run_ours, run_ref, run_defer) if r % 2 == 0 else (run_defer, run_ref, run_ours)):
            await side()
    await conn.close()
    await app.close_async()
    await host.close()
    return statistics.median(ours), statistics.median(ref), statistics.median(defer)


async def emit_latency_sqlite(path: Path, rounds: int, per_round: int) -> tuple[float, float]:
    """The embedded engine: emit (outbox rows in the state file) against a plain INSERT into the same file."""
    import sqlite3

    host = await _host(str(path), ["acme"])
    await host.emit("acme", "warm", {})
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")  # as the state store and the outbox write
    conn.execute("CREATE TABLE IF NOT EXISTS plain_events (id TEXT PRIMARY KEY, tenant TEXT, event_type TEXT, "
                 "data TEXT, created_at REAL)")
    data = {"invoice": "INV-1", "amount": 125.5, "lines": [1, 2, 3]}
    ours, ref = [], []

    async def run_ours() -> None:
        for _ in range(per_round):
            t = time.perf_counter()
            await host.emit("acme", "invoice.created", data)
            ours.append(time.perf_counter() - t)

    def run_ref() -> None:
        for _ in range(per_round):
            t = time.perf_counter()
            conn.execute("INSERT INTO plain_events VALUES (?, ?, ?, ?, ?)",
                         (str(uuid.uuid4()), "acme", "invoice.created", json.dumps(data), time.time()))
            ref.append(time.perf_counter() - t)

    for r in range(rounds):
        if r % 2 == 0:
            await run_ours()
            run_ref()
        else:
            run_ref()
            await run_ours()
    conn.close()
    await host.close()
    return statistics.median(ours), statistics.median(ref)


async def drain(url: str, site: Path, n: int, tenants: int) -> float:
    names = [f"t{i}" for i in range(tenants)]
    host = await _host(url, names)
    for i in range(n):
        await host.emit(names[i % tenants], "bench", {"n": i})
    engine = await host._jobs().engine()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "erp_plugins_core._cli", "--state", url, "worker", "--concurrency", "4",
           "--log-level", "WARNING"]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env) for _ in range(2)]  # noqa: ASYNC220 (started once, not awaited)
    try:
        while True:
            counts = await engine.counts(kind="event")
            if counts["queued"] == counts["running"] == 0:
                break
            await asyncio.sleep(0.1)
        took = time.perf_counter() - start
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    await host.close()
    return took


async def delivered_latency(location: str, n: int) -> tuple[float, float]:
    """p50 and p99 seconds from calling `emit` to the plugin's `on_event` starting, one event at a time.

    PostgreSQL: a worker loop (`run_jobs`) in this process. SQLite: the open host's own background delivery
    (the contract's "open hosts also run them"; a worker in another process would add up to its poll interval).
    """
    import erp_sink.sink.plugin as sink

    sqlite = not location.startswith("postgresql://")
    host = await _host(location, ["acme"], deliver=sqlite)
    stop = asyncio.Event()
    runner = asyncio.create_task(host.run_jobs(stop=stop, concurrency=1) if not sqlite else stop.wait())
    lats = []
    for i in range(-5, n):  # five warm-up events
        key = f"{uuid.uuid4()}"
        t = time.perf_counter()
        await host.emit("acme", "lat", {"lat": key})
        while key not in sink.AT:  # noqa: ASYNC110 (the plugin stamps; polling keeps it unchanged)
            await asyncio.sleep(0.0002)
        if i >= 0:
            lats.append(sink.AT.pop(key) - t)
    stop.set()
    await runner
    await host.close()
    lats.sort()
    return statistics.median(lats), lats[min(len(lats) - 1, int(len(lats) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a PostgreSQL server URL (a database per measurement is created on it)")
    parser.add_argument("--events", type=int, default=300, help="events per end-to-end round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--drain", type=int, default=10000, help="queued events to drain (0: skip that part)")
    parser.add_argument("--latency-events", type=int, default=200, help="events for emit -> delivered p50/p99")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the events/s comparison")
    parser.add_argument("--latency-only", action="store_true", help="only emit -> delivered (implies --drain 0)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    os.environ.setdefault("ERP_PLUGINS_CACHE_DIR", str(tmp / "cache"))
    os.environ.setdefault("ERP_PLUGINS_SECRET_KEY", __import__("cryptography.fernet").fernet.Fernet.generate_key()
                          .decode())
    site = _site(tmp / "site")
    if args.latency_only:
        with databases(args.url) as create:
            pg = asyncio.run(delivered_latency(create(), args.latency_events))
        sq = asyncio.run(delivered_latency(str(tmp / "latency.db"), args.latency_events))
        print(f"emit -> delivered: PostgreSQL p50 {pg[0] * 1e3:.2f} ms / p99 {pg[1] * 1e3:.2f} ms; "
              f"SQLite p50 {sq[0] * 1e3:.2f} ms / p99 {sq[1] * 1e3:.2f} ms")
        return
    with databases(args.url) as create:
        ours_eps, ref_eps = (asyncio.run(end_to_end(create(), create(), args.events, args.rounds))
                             if not args.no_end_to_end else (float("nan"), 1.0))
        ours_lat, ref_lat, defer_lat = asyncio.run(emit_latency(create(), args.rounds, args.per_round))
        pg_p50, pg_p99 = asyncio.run(delivered_latency(create(), args.latency_events))
        drain_s = asyncio.run(drain(create(), site, args.drain, 10)) if args.drain else float("nan")
        sq_ours, sq_ref = asyncio.run(emit_latency_sqlite(tmp / "state.db", args.rounds, args.per_round))
        sq_p50, sq_p99 = asyncio.run(delivered_latency(str(tmp / "latency.db"), args.latency_events))
    result = {
        "events_per_s": {"ours": round(ours_eps, 1), "procrastinate_empty_task": round(ref_eps, 1),
                         "ratio": round(ours_eps / ref_eps, 3), "target": ">= 0.8"},
        "emit_to_delivered_ms": {"postgresql_p50": round(pg_p50 * 1e3, 2), "postgresql_p99": round(pg_p99 * 1e3, 2),
                                 "sqlite_p50": round(sq_p50 * 1e3, 2), "sqlite_p99": round(sq_p99 * 1e3, 2)},
        "emit_latency_ms": {"ours": round(ours_lat * 1e3, 3), "plain_insert": round(ref_lat * 1e3, 3),
                            "ratio": round(ours_lat / ref_lat, 3), "target": "<= 1.5",
                            "procrastinate_defer": round(defer_lat * 1e3, 3),
                            "ratio_to_defer": round(ours_lat / defer_lat, 3)},
        "emit_latency_sqlite_ms": {"ours": round(sq_ours * 1e3, 3), "plain_insert": round(sq_ref * 1e3, 3),
                                   "ratio": round(sq_ours / sq_ref, 3), "target": "<= 1.5"},
        "drain": {"events": args.drain, "tenants": 10, "workers": 2, "concurrency": 4, "seconds": round(drain_s, 2),
                  "events_per_s": round(args.drain / drain_s, 1)},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    e, lat, d, sq = result["events_per_s"], result["emit_latency_ms"], result["drain"], result["emit_latency_sqlite_ms"]
    print(f"end to end, 1 worker: {e['ours']} events/s vs procrastinate empty task {e['procrastinate_empty_task']}/s"
          f" -> {e['ratio']}x (target {e['target']})")
    print(f"emit latency: {lat['ours']} ms vs plain INSERT {lat['plain_insert']} ms -> {lat['ratio']}x "
          f"(target {lat['target']}); vs procrastinate's own defer of one job {lat['procrastinate_defer']} ms -> "
          f"{lat['ratio_to_defer']}x")
    print(f"emit latency, SQLite state: {sq['ours']} ms vs plain INSERT {sq['plain_insert']} ms -> {sq['ratio']}x "
          f"(target {sq['target']})")
    dl = result["emit_to_delivered_ms"]
    print(f"emit -> delivered, one worker in process: PostgreSQL p50 {dl['postgresql_p50']} ms / p99 "
          f"{dl['postgresql_p99']} ms; SQLite p50 {dl['sqlite_p50']} ms / p99 {dl['sqlite_p99']} ms")
    print(f"drain {d['events']} queued events ({d['tenants']} tenants), 2 workers x concurrency 4: {d['seconds']} s "
          f"({d['events_per_s']} events/s)")


if __name__ == "__main__":
    main()
