"""The state store: SQLite against PostgreSQL, side by side in one run.

- Change propagation: this process commits a setting (`store.set_setting`), a follower in another process
  notices (its `watch().maybe_changed()` polled every 0.5 ms, then `changes_since`). Latency from the start
  of the commit to the follower holding the change, p50 and p99 per backend (PostgreSQL: LISTEN/NOTIFY).
- `maybe_changed()` per call when nothing changed (SQLite: `PRAGMA data_version`; PostgreSQL: a flag the
  LISTEN task sets), against an empty Python function call.
- An enable-like transaction (`put` + `add_audit` in one `transaction()`), and reads (`get`, `list(tenant)`
  of 20 records): PostgreSQL against SQLite.

A throwaway PostgreSQL cluster is started for the run (fsync on, as SQLite's `synchronous = FULL`), unless
`--pg-url` names a database to use (its `erp_plugins` schema is created there). Alternating order per round,
medians. No targets: the numbers are for the reader.

    python bench/bench_state.py [--json] [--rounds N] [--changes N] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _pg import databases  # noqa: E402
from _synthetic import report, row  # noqa: E402

from erp_plugins_core._state import AuditEntry, TenantPlugin, open_store  # noqa: E402

FOLLOWER = """
import asyncio, json, sys, time
from erp_plugins_core._state import open_store
async def main():
    store = open_store(sys.argv[1])
    watch = store.watch()
    task = asyncio.create_task(watch.run())
    while store.backend == "postgresql" and not watch.connected:
        await asyncio.sleep(0.005)
    seq = store.change_seq()
    print("ready", flush=True)
    seen = {}
    want = int(sys.argv[2])
    while len(seen) < want:
        if watch.maybe_changed():
            for change in store.changes_since(seq):
                seq = change.seq
                if change.kind == "setting:bench":
                    seen[change.seq] = time.time()
        await asyncio.sleep(0.0005)
    print(json.dumps(seen), flush=True)
    watch.close()
    await task
    store.close()
asyncio.run(main())
"""


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def propagation(location: str, changes: int) -> list[float]:
    """Seconds from the start of each commit to the follower process holding the change."""
    follower = subprocess.Popen([sys.executable, "-c", textwrap.dedent(FOLLOWER), location, str(changes)],
                                stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    if follower.stdout.readline().strip() != "ready":
        raise SystemExit("the follower did not start")
    started: dict[int, float] = {}
    with open_store(location) as store:
        for i in range(changes):
            t0 = time.time()
            store.set_setting("bench", str(i))
            started[store.change_seq()] = t0  # only this process writes: the latest seq is ours
            time.sleep(0.02)
    out, _ = follower.communicate(timeout=120)
    seen = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    return [seen[seq] - t0 for seq, t0 in started.items()]


def per_call(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def watch_cost(location: str, n: int) -> float:
    async def go() -> float:
        with open_store(location) as store:
            watch = store.watch()
            task = asyncio.create_task(watch.run())
            await asyncio.sleep(0.3)
            watch.maybe_changed()
            cost = per_call(watch.maybe_changed, n)
            watch.close()
            await task
            return cost

    return asyncio.run(go())


def _empty() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--changes", type=int, default=100, help="changes per backend for propagation")
    parser.add_argument("--pg-url", help="a PostgreSQL server to make a database on instead of a throwaway cluster")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        pg = stack.enter_context(databases(args.pg_url))()
        locations = {"sqlite": str(tmp / "state.db"), "postgresql": pg}
        for loc in locations.values():
            with open_store(loc) as store, store.transaction() as tx:
                for i in range(20):
                    tx.put(TenantPlugin("acme", f"p{i:02d}", enabled=True, config={"model": "m", "n": i}))

        rows: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        lat = {name: propagation(loc, args.changes) for name, loc in locations.items()}
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            rows.append(row(f"change propagation {label} (pg vs sqlite)", _pct(lat["postgresql"], q),
                            _pct(lat["sqlite"], q), None, "SQLite: PRAGMA data_version polled every 0.5 ms"))
        extra["propagation_ms"] = {name: {"p50": round(_pct(v, 0.5) * 1e3, 2), "p99": round(_pct(v, 0.99) * 1e3, 2),
                                          "max": round(max(v) * 1e3, 2), "n": len(v)} for name, v in lat.items()}

        n = 50_000
        empty = statistics.median(per_call(_empty, n) for _ in range(args.rounds))
        for name, loc in locations.items():
            cost = statistics.median(watch_cost(loc, n) for _ in range(max(1, args.rounds // 2)))
            rows.append(row(f"maybe_changed() per call, {name}", cost, empty, None, "an empty Python function call"))

        stores = {name: open_store(loc) for name, loc in locations.items()}
        try:
            def enable(store: Any) -> None:
                with store.transaction() as tx:
                    rec = tx.get("acme", "p00")
                    rec.enabled = not rec.enabled
                    tx.put(rec)
                    tx.add_audit(AuditEntry.now("acme", "p00", "enable" if rec.enabled else "disable"))

            samples: dict[str, dict[str, list[float]]] = {k: {"enable": [], "get": [], "list": []} for k in stores}
            for r in range(args.rounds):
                order = list(stores) if r % 2 == 0 else list(reversed(stores))
                for name in order:
                    s = stores[name]
                    samples[name]["enable"].append(per_call(lambda s=s: enable(s), 30))
                    samples[name]["get"].append(per_call(lambda s=s: s.get("acme", "p05"), 300))
                    samples[name]["list"].append(per_call(lambda s=s: s.list("acme"), 300))
            for op, what in (("enable", "enable-like transaction (get+put+audit)"), ("get", "get(tenant, plugin)"),
                             ("list", "list(tenant), 20 records")):
                rows.append(row(f"{what} pg vs sqlite", statistics.median(samples["postgresql"][op]),
                                statistics.median(samples["sqlite"][op]), None, "SQLite, synchronous=FULL, WAL"))
        finally:
            for s in stores.values():
                s.close()
        report("state store: PostgreSQL against SQLite", rows, args.json, extra)


if __name__ == "__main__":
    main()
