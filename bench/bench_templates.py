"""Worker templates (issue 18): a sandboxed `openai_provider` worker forked from its template, against one
started afresh, measured side by side in one run through one `PluginHost` per side.

Both hosts run in this process against the OpenAI fake (`tests/servers/openai_fake.py`, its own process on
127.0.0.1), each with `openai_provider` enabled for its own N tenants (`--tenants`, default 8). The template
side runs with ERP_PLUGINS_SANDBOX_TEMPLATES=1, the fresh side with =0 (read when a worker starts; the sides
take turns, the variable set before each side's turn). A throwaway host first builds the plugin's runtime site,
which both sides then share. Printed:

- first start: enabling a tenant on a new host, which starts its worker (template side: holder, template
  importing the SDK, fork; fresh side: a worker importing the SDK), median of `--first-rounds` per side taken
  in turns, ratio target ≤ 1.1× (template start against a worker's cold start);
- cold call of a reaped worker (the worker stopped as the fleet stops an idle one, then a call), median over
  `--rounds` per side, against a warm call of the same side: extra target ≤ 50 ms on the template side;
- PSS per additional tenant worker (all N tenants' workers running, against one, divided by N-1; the
  template's own processes counted on its side): target ≤ 8 MB on the template side.

Run as root (each tenant's worker runs as its own uid; PSS is read from /proc):
`python bench/bench_templates.py [--tenants N] [--rounds R] [--json]`. About a minute here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True

from _sdk_calls import API_KEY, OPENAI_MODEL, PROMPT, TIMEOUT  # noqa: E402
from bench_ai_providers import FakeProcess  # noqa: E402
from bench_fleet import descendants, pss  # noqa: E402

from erp_plugins_core import PluginHost  # noqa: E402
from erp_plugins_core._sandbox import sandbox_available  # noqa: E402
from erp_plugins_core._sandbox._template import template_uid  # noqa: E402
from erp_plugins_core._sandbox._template_pool import ENV  # noqa: E402

KEY_ENV = "BENCH_OPENAI_KEY"
PLUGIN = "openai_provider"
SIDES = {"template": "1", "fresh": "0"}
_perf = time.perf_counter


def uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Side:
    """One host with the plugin enabled for its own tenants, and the processes that belong to it."""

    def __init__(self, name: str, host: PluginHost, tenants: list[str]) -> None:
        self.name, self.host, self.tenants = name, host, tenants
        self.uids: set[int] = set()

    def runner(self, tenant: str) -> Any:
        return self.host._instances[(tenant, PLUGIN)].runner

    async def call(self, tenant: str) -> float:
        os.environ[ENV] = SIDES[self.name]
        start = _perf()
        answer = await self.host.first("ai_request", tenant=tenant, prompt=PROMPT, context={})
        took = _perf() - start
        if not isinstance(answer, str) or not answer:
            raise SystemExit(f"{self.name}: unexpected answer {answer!r}")
        self.check_kind(tenant)
        self.uids.add(self.runner(tenant).uid)
        return took

    def check_kind(self, tenant: str) -> None:
        """A side measuring the other side's kind of worker gives no result: stop, saying so."""
        forked = type(self.runner(tenant)._worker.proc).__name__ == "ForkedProcess"
        if forked != (self.name == "template"):
            raise SystemExit(f"{self.name}: the worker of {tenant} was {'' if forked else 'not '}forked from a "
                             "template; the log above says why")

    async def reap(self, tenant: str) -> None:
        """Stop the tenant's worker as the fleet stops an idle one (deactivate, cleanup, end)."""
        runner = self.runner(tenant)
        if runner._worker is not None and not await runner._retire(runner._worker, "benchmark"):
            raise SystemExit(f"{self.name}: the worker of {tenant} could not be stopped")

    def pss(self) -> int:
        """PSS of every process of this side: its tenants' workers and (template side) the template's own."""
        uids = set(self.uids)
        if self.name == "template":
            uids.add(template_uid(PLUGIN))
        return sum(pss(pid) for pid in descendants(os.getpid()) if uid_of(pid) in uids)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    reason = sandbox_available()
    if reason:
        raise SystemExit(f"cannot benchmark: {reason}")
    if os.geteuid() != 0:
        raise SystemExit("run as root: templates need the per-tenant uids, and PSS is read from /proc")
    work = Path(tempfile.mkdtemp(prefix="erp-bench-templates-"))
    os.environ[KEY_ENV] = API_KEY
    result: dict[str, Any] = {"tenants": args.tenants, "rounds": args.rounds}
    with FakeProcess("openai_fake.py") as fake:
        config = {"api_key": f"env:{KEY_ENV}", "base_url": fake.url, "model": OPENAI_MODEL, "max_retries": 0,
                  "timeout": TIMEOUT}
        os.environ[ENV] = "0"  # a throwaway host builds the runtime site both sides use (not timed)
        async with PluginHost(work / "warm-up.db", health_loop=False) as warm_up:
            await warm_up.enable(PLUGIN, tenant="warm-up", config=config)
        async with PluginHost(work / "template.db", health_loop=False) as a, \
                PluginHost(work / "fresh.db", health_loop=False) as b:
            sides = [Side("template", a, [f"tpl-{i}" for i in range(args.tenants)]),
                     Side("fresh", b, [f"fresh-{i}" for i in range(args.tenants)])]
            for side in sides:
                os.environ[ENV] = SIDES[side.name]
                await side.host.enable(PLUGIN, tenant=side.tenants[0], config=config)
                await side.call(side.tenants[0])
            for side in sides:
                result[f"{side.name}_pss_one"] = side.pss()
            for i in range(1, args.tenants):
                for side in sides:
                    os.environ[ENV] = SIDES[side.name]
                    await side.host.enable(PLUGIN, tenant=side.tenants[i], config=config)
                    await side.call(side.tenants[i])
            await asyncio.sleep(0.5)
            for side in sides:
                result[f"{side.name}_pss_all"] = side.pss()
                result[f"{side.name}_pss_per_tenant"] = (
                    (result[f"{side.name}_pss_all"] - result[f"{side.name}_pss_one"]) / (args.tenants - 1))
            warm: dict[str, list[float]] = {s.name: [] for s in sides}
            cold: dict[str, list[float]] = {s.name: [] for s in sides}
            for r in range(args.rounds):
                for side in sides if r % 2 == 0 else reversed(sides):
                    tenant = side.tenants[r % args.tenants]
                    for _ in range(3):
                        warm[side.name].append(await side.call(tenant))
                    await side.reap(tenant)
                    cold[side.name].append(await side.call(tenant))
            for side in sides:
                result[f"{side.name}_warm_s"] = statistics.median(warm[side.name])
                result[f"{side.name}_cold_s"] = statistics.median(cold[side.name])
        firsts: dict[str, list[float]] = {name: [] for name in SIDES}
        for r in range(args.first_rounds):  # a new host each time: its first enable starts the template
            for name in SIDES if r % 2 == 0 else reversed(list(SIDES)):
                os.environ[ENV] = SIDES[name]
                async with PluginHost(work / f"first-{name}-{r}.db", health_loop=False) as host:
                    start = _perf()
                    await host.enable(PLUGIN, tenant=f"first-{r}", config=config)
                    firsts[name].append(_perf() - start)
                    Side(name, host, [f"first-{r}"]).check_kind(f"first-{r}")
        for name in SIDES:
            result[f"{name}_first_start_s"] = statistics.median(firsts[name])
    result["first_start_ratio"] = result["template_first_start_s"] / result["fresh_first_start_s"]
    return result


def report(r: dict[str, Any]) -> None:
    mb = 1024 * 1024
    print(f"openai_provider, sandboxed, {r['tenants']} tenants per side, {r['rounds']} cold-call rounds")
    print(f"first start (enabling a tenant on a new host): template {r['template_first_start_s'] * 1e3:.0f} ms, "
          f"fresh {r['fresh_first_start_s'] * 1e3:.0f} ms -> {r['first_start_ratio']:.2f}x (target <= 1.1x)")
    for side in ("template", "fresh"):
        extra = (r[f"{side}_cold_s"] - r[f"{side}_warm_s"]) * 1e3
        target = " (target <= 50 ms)" if side == "template" else ""
        print(f"{side}: warm call {r[f'{side}_warm_s'] * 1e3:.1f} ms, cold call of a reaped worker "
              f"{r[f'{side}_cold_s'] * 1e3:.1f} ms -> +{extra:.1f} ms{target}")
    for side in ("template", "fresh"):
        target = " (target <= 8 MB)" if side == "template" else ""
        print(f"{side}: PSS one tenant {r[f'{side}_pss_one'] / mb:.1f} MB, all {r[f'{side}_pss_all'] / mb:.1f} MB "
              f"-> {r[f'{side}_pss_per_tenant'] / mb:.1f} MB per additional tenant worker{target}")
    cold_ratio = r["fresh_cold_s"] / r["template_cold_s"]
    print(f"cold call, fresh against forked: {cold_ratio:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--first-rounds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("erp_plugins.sandbox").setLevel(logging.INFO)  # why a template could not be used
    if options.tenants < 2:
        raise SystemExit("--tenants must be at least 2")
    out = asyncio.run(main(options))
    print(json.dumps(out, indent=2)) if options.json else report(out)
