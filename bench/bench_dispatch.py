"""Hook dispatch through a real PluginHost against raw pluggy, on the same plugin methods.

Ours: `await host.call("ai_request", tenant=T, prompt=..., context=...)` on a PluginHost whose tenant has 1 or
10 installed synthetic plugins enabled (trusted, in process: `security.sandbox: false`, `enable(trust=True)`).
That includes the tenant lookup, argument binding and type checks, the permission check, per-plugin timeout,
error isolation and one HookResult per plugin.

Reference: raw pluggy on instances of the same plugin classes: a PluginManager with the host's HookSpecs and
the classes' `@hookimpl(specname=...)` methods; `pm.hook.ai_request(prompt=..., context=...)` for plain
implementations, `await asyncio.gather(*pm.hook.ai_request(...))` for async ones. Target ≤ 1.5× for both.

`host.first` is reported too, against raw pluggy calling the one implementation it ends up using (no target).

All timing runs inside one event loop: per round, each side makes N calls in a tight loop (garbage collector
off, as timeit does); sides alternate their order; per-call medians over the rounds.

    python bench/bench_dispatch.py [--json] [--rounds N] [--round-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True

from _synthetic import make_site, report, row  # noqa: E402

PROMPT = "Summarise invoice 4711 for the customer."
CONTEXT: dict[str, Any] = {"locale": "de-DE"}


async def _time_loop(fn: Callable[[], Any], n: int, is_async: bool) -> float:
    """Seconds per call over `n` calls (awaiting each when `is_async`)."""
    gc.collect()
    gc.disable()
    try:
        if is_async:
            start = time.perf_counter()
            for _ in range(n):
                await fn()
            return (time.perf_counter() - start) / n
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n
    finally:
        gc.enable()


async def _compare(ours: Callable[[], Awaitable[Any]], ref: Callable[[], Any], ref_async: bool, rounds: int,
                   round_seconds: float) -> tuple[float, float, int]:
    """Median per-call seconds of ours and the reference, alternating which goes first each round."""
    probe = await _time_loop(ours, 200, True)
    n = int(min(20_000, max(1_000, round_seconds / max(probe, 1e-7))))
    for _ in range(3):  # warm both paths
        await ours()
        await ref() if ref_async else ref()
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        if r % 2 == 0:
            a.append(await _time_loop(ours, n, True))
            b.append(await _time_loop(ref, n, ref_async))
        else:
            b.append(await _time_loop(ref, n, ref_async))
            a.append(await _time_loop(ours, n, True))
    return statistics.median(a), statistics.median(b), n


def _pluggy_manager(modules: list[str]) -> Any:
    import pluggy

    from erp_plugins_core._hookspecs import PROJECT, HookSpecs

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HookSpecs)
    for mod in modules:
        pm.register(importlib.import_module(mod).Plugin())
    return pm


async def run(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from erp_plugins_core import PluginHost
    from erp_plugins_core._catalog import Catalog

    sync_names = make_site(tmp / "site", 10, prefix="bsync", sandbox=False)
    async_names = make_site(tmp / "site", 10, prefix="basync", sandbox=False, is_async=True)
    sys.path.insert(0, str(tmp / "site"))
    importlib.invalidate_caches()
    catalog = Catalog.load(use_cache=False)
    for name in sync_names + async_names:
        rec = catalog.get(name)
        if rec is None or rec.errors:
            raise SystemExit(f"synthetic plugin {name} is not valid: {rec.errors if rec else 'not found'}")

    cases = {
        "sync, 1 impl": ("s1", sync_names[:1], False),
        "sync, 10 impls": ("s10", sync_names, False),
        "async, 1 impl": ("a1", async_names[:1], True),
        "async, 10 impls": ("a10", async_names, True),
    }
    rows: list[dict[str, Any]] = []
    calls: dict[str, int] = {}
    async with PluginHost(tmp / "state.db", catalog=catalog, health_loop=False) as host:
        for tenant, names, _ in cases.values():
            for name in names:
                await host.enable(name, tenant=tenant, trust=True)

        for label, (tenant, names, is_async) in cases.items():
            pm = _pluggy_manager([f"erp_bench_{n}.plugin" for n in names])
            hook = pm.hook.ai_request

            def ours(tenant: str = tenant) -> Awaitable[Any]:
                return host.call("ai_request", tenant=tenant, prompt=PROMPT, context=CONTEXT)

            if is_async:
                def ref(hook: Any = hook) -> Awaitable[Any]:
                    return asyncio.gather(*hook(prompt=PROMPT, context=CONTEXT))
            else:
                def ref(hook: Any = hook) -> Any:
                    return hook(prompt=PROMPT, context=CONTEXT)

            got = await ours()
            want = await ref() if is_async else ref()
            if len(got) != len(names) or not all(r.success and r.result == PROMPT for r in got) or \
                    list(want) != [PROMPT] * len(names):
                raise SystemExit(f"{label}: results differ: ours {got!r}, pluggy {want!r}")
            o, p, n = await _compare(ours, ref, is_async, args.rounds, args.round_seconds)
            calls[label] = n
            reference = ("await asyncio.gather(*pm.hook.ai_request(...))" if is_async
                         else "pm.hook.ai_request(...)")
            rows.append(row(f"host.call, {label}", o, p, 1.5, reference))

        for label, (tenant, names, is_async) in cases.items():
            pm1 = _pluggy_manager([f"erp_bench_{names[0]}.plugin"])
            hook1 = pm1.hook.ai_request

            def ours_first(tenant: str = tenant) -> Awaitable[Any]:
                return host.first("ai_request", tenant=tenant, prompt=PROMPT, context=CONTEXT)

            if is_async:
                async def ref1(hook1: Any = hook1) -> Any:
                    return await hook1(prompt=PROMPT, context=CONTEXT)[0]
            else:
                def ref1(hook1: Any = hook1) -> Any:
                    return hook1(prompt=PROMPT, context=CONTEXT)[0]

            if await ours_first() != PROMPT:
                raise SystemExit(f"first, {label}: wrong result")
            o, p, n = await _compare(ours_first, ref1, is_async, args.rounds, args.round_seconds)
            calls[f"first, {label}"] = n
            reference = "await pm.hook.ai_request(...)[0], 1 impl" if is_async else "pm.hook.ai_request(...)[0], 1 impl"
            rows.append(row(f"host.first, {label}", o, p, None, reference))
    return rows, {"calls_per_round": calls, "rounds": args.rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per measurement (median)")
    parser.add_argument("--round-seconds", type=float, default=0.25,
                        help="about how long our side of one round takes (sets calls per round, 1k..20k)")
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    with tempfile.TemporaryDirectory(prefix="erp-bench-dispatch-") as tmp:
        os.environ["ERP_PLUGINS_CACHE_DIR"] = str(Path(tmp, "cache"))
        os.environ["ERP_PLUGINS_SECRET_KEY"] = Fernet.generate_key().decode()
        rows, extra = asyncio.run(run(args, Path(tmp)))
    report("bench_dispatch: median seconds per call", rows, args.json, extra)


if __name__ == "__main__":
    main()
