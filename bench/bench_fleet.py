"""Many tenants on one host with a bounded worker fleet: memory and the cost of a start that evicts.

N tenants × 1 sandboxed plugin (the corpus's tiny `sbx_good`) in one process, each a lazy `SandboxRunner` of
one `WorkerFleet` with a cap of C live workers (idle stop off, so only the cap stops workers). Every tenant is
called once in turn, so past the first C every call must start a worker and evict the least recently used.

Printed:
- opening: the time to load, initialize and activate all N lazy runners (they only record; no process starts);
- memory: the peak PSS of the host plus all its descendants (`/proc/<pid>/smaps_rollup`, sampled between
  calls) against C × one worker's PSS (measured with a single worker alive, same run) + the host's own PSS
  (measured at the same sample), and the most worker processes seen (at most 3 × C: bwrap, the sandbox's
  PID 1, the Python worker);
- cold calls: p50/p90 of a call that must start a worker and evict one, against a call that starts a worker
  in a free slot, measured alternately in the same run (the free slot made, untimed, by closing the least
  recently used runner). The evicting call also waits for its victim's deactivate, cleanup and end.

Run as root: `python bench/bench_fleet.py [--tenants N] [--cap C]`. The default is 300 tenants (about a
minute here, on 2 shared cores); `--tenants 1000` is the full scenario and takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from erp_plugins_core._context import PluginContext
from erp_plugins_core._redact import Redactor
from erp_plugins_core._sandbox import SandboxRunner, WorkerFleet, sandbox_available

sys.dont_write_bytecode = True

from bench_sandbox import _Bridge, build_site, record  # noqa: E402


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree() -> tuple[int, int, int]:
    """(PSS of the host and its descendants, the host's own PSS, the number of descendants)."""
    me = os.getpid()
    kids = descendants(me)
    own = pss(me)
    return own + sum(pss(k) for k in kids), own, len(kids)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def record_lazily(runner: SandboxRunner) -> None:
    config = {"greeting": "hi"}
    ctx = PluginContext(tenant_id=runner.tenant, plugin="sbx_good", config=config, granted=frozenset(),
                        bridge=_Bridge(), redactor=Redactor())
    await runner.load()
    await runner.initialize(config, ctx)
    await runner.lifecycle("activate")


async def main(tenants: int, cap: int) -> None:
    reason = sandbox_available()
    if reason:
        raise SystemExit(f"cannot benchmark: {reason}")
    if os.geteuid() != 0:
        raise SystemExit("run as root: each tenant's worker runs as its own uid, and PSS is read from /proc")
    if tenants < 2 * cap + 10:
        raise SystemExit(f"--tenants must be at least 2 x --cap + 10 ({2 * cap + 10}) to measure evicting calls")
    work = Path(tempfile.mkdtemp(prefix="erp-bench-fleet-", dir="/tmp"))
    os.chmod(work, 0o755)
    fleet = WorkerFleet(max_workers=cap, idle_timeout=math.inf)
    runners: list[SandboxRunner] = []
    try:
        site = build_site(work)
        (work / "rt").mkdir(mode=0o755)
        rec = record(site)
        t = time.perf_counter()
        for i in range(tenants):
            runner = SandboxRunner(rec, f"t{i:04d}", runtime_dir=work / "rt", fleet=fleet, lazy=True)
            await record_lazily(runner)
            runners.append(runner)
        opened = time.perf_counter() - t
        _, _, kids0 = tree()
        print(f"{tenants} tenants x 1 sandboxed plugin, cap {cap} live workers: opened in {opened * 1e3:.0f} ms, "
              f"{kids0} processes started")

        fn = {r.tenant: r.hook_function("ai_request", "answer") for r in runners}
        recent: OrderedDict[str, SandboxRunner] = OrderedDict()  # tenants with a worker, least recent first

        async def call(runner: SandboxRunner) -> float:
            t = time.perf_counter()
            assert await fn[runner.tenant]("x", {}) == "hi x"
            took = time.perf_counter() - t
            recent[runner.tenant] = runner
            recent.move_to_end(runner.tenant)
            while len(recent) > cap:
                recent.popitem(last=False)
            return took

        # one worker alone: the PSS of the host's descendants then (bwrap, the sandbox's PID 1, the worker)
        first = await call(runners[0])
        total1, own1, _ = tree()
        one_worker = total1 - own1
        peak_total, peak_own, peak_kids = total1, own1, 0

        def sample() -> None:
            nonlocal peak_total, peak_own, peak_kids
            total, own, kids = tree()
            peak_kids = max(peak_kids, kids)
            if total > peak_total:
                peak_total, peak_own = total, own

        # fill the fleet
        for r in runners[1:cap]:
            await call(r)
        sample()

        # every other tenant once: each call evicts; alternately, one in a free slot made by closing the LRU
        free: list[float] = [first]
        evicting: list[float] = []
        for n, r in enumerate(runners[cap:]):
            if n % 2:
                _, lru = recent.popitem(last=False)
                await lru.close()
                await record_lazily(lru)  # dormant again, as a stopped worker's runner is
                free.append(await call(r))
            else:
                evicting.append(await call(r))
            if n % 25 == 0:
                sample()
            assert fleet.stats()["live"] <= cap
        sample()
        stats = fleet.stats()

        expected = cap * one_worker + peak_own
        print(f"memory: peak PSS of the host and its workers {peak_total / 2**20:.0f} MiB vs cap x one worker "
              f"({cap} x {one_worker / 2**20:.1f} MiB) + the host's own {peak_own / 2**20:.0f} MiB = "
              f"{expected / 2**20:.0f} MiB: ratio {peak_total / expected:.2f}x; most worker processes seen "
              f"{peak_kids} (3 per worker, cap {3 * cap})")
        f50, e50 = statistics.median(free), statistics.median(evicting)
        print(f"cold call, starting a worker in a free slot: p50 {f50 * 1e3:.1f} ms, p90 {pct(free, 0.9) * 1e3:.1f} ms "
              f"({len(free)} calls)")
        print(f"cold call, starting a worker and evicting the least recently used: p50 {e50 * 1e3:.1f} ms, "
              f"p90 {pct(evicting, 0.9) * 1e3:.1f} ms ({len(evicting)} calls): ratio {e50 / f50:.2f}x at p50")
        print(f"fleet: {stats}")
    finally:
        for r in runners:
            await r.close()
        await fleet.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=300, help="tenants, one sandboxed plugin each (default 300)")
    parser.add_argument("--cap", type=int, default=50, help="live workers at most (default 50)")
    args = parser.parse_args()
    asyncio.run(main(args.tenants, args.cap))
