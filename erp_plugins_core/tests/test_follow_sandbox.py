"""A sandboxed plugin changed by another process: the open host's worker stops, or restarts with the new config.

Real bwrap workers (as root, each with its own uid), the CLI as a subprocess, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sandboxkit import build_site, reachable_dir, uid_of
from test_follow import acli, eventually, sees

from erp_plugins_core import PluginHost
from erp_plugins_core._errors import ConfigError
from erp_plugins_core._sandbox import sandbox_available

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def fleet_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("follow-build"), ["sbx_fleet"])


@pytest.fixture
def world(fleet_site, secret_key, tmp_path, state_location, monkeypatch) -> dict[str, Any]:
    reason = sandbox_available()
    if reason is not None:
        pytest.fail(f"the sandbox cannot start here, so following a sandboxed plugin is untested: {reason}")
    with reachable_dir("erp-follow-data-") as data:
        monkeypatch.syspath_prepend(str(fleet_site))
        monkeypatch.setenv("ERP_PLUGINS_DATA_DIR", str(data))
        monkeypatch.setenv("ERP_PLUGINS_CACHE_DIR", str(tmp_path / "cache"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fleet_site), str(HERE), *sys.path[1:]]),
               "ERP_PLUGINS_STATE": state_location}
        yield {"location": state_location, "env": env}


async def greeting(host: PluginHost) -> list[Any]:
    return [(r.plugin, r.result.split()[0] if r.success else r.error)
            for r in await host.call("ai_request", tenant="acme", prompt="hi", context={})]


def alive(pids: tuple[int, ...]) -> bool:
    return any(uid_of(pid) is not None for pid in pids)


async def test_a_sandboxed_plugin_changed_elsewhere_restarts_or_stops_its_worker(world) -> None:
    async with PluginHost(world["location"], health_loop=False) as host:
        await host.enable("sbx_fleet", tenant="acme", config={"greeting": "v1"})
        assert await greeting(host) == [("sbx_fleet", "v1")]
        first = host._instances[("acme", "sbx_fleet")].runner.worker_pids
        assert first and alive(first)

        await acli(world, "enable", "sbx_fleet", "--tenant", "acme", "--config", "greeting=v2")
        await sees(world, lambda: greeting(host), [("sbx_fleet", "v2")])
        second = host._instances[("acme", "sbx_fleet")].runner.worker_pids
        assert second and set(second).isdisjoint(first)
        await eventually(lambda: not alive(first))  # the old worker is stopped, not left behind

        await acli(world, "disable", "sbx_fleet", "--tenant", "acme")
        await sees(world, lambda: greeting(host), [])
        await eventually(lambda: not alive(second))
        assert ("acme", "sbx_fleet") not in host._instances


async def test_opening_starts_no_worker_health_says_idle_and_warm_up_starts_them(world) -> None:
    await acli(world, "enable", "sbx_fleet", "--tenant", "acme", "--config", "greeting=w")
    async with PluginHost(world["location"], health_loop=False) as host:
        assert host._instances == {}  # opening started nothing
        [report] = await host.health("acme")  # the tenant's instance exists now, its worker does not
        runner = host._instances[("acme", "sbx_fleet")].runner
        assert report.healthy and report.detail.startswith("idle") and runner.worker_pids == ()
    async with PluginHost(world["location"], health_loop=False) as host:
        await host.warm_up()
        runner = host._instances[("acme", "sbx_fleet")].runner
        assert runner.worker_pids and alive(runner.worker_pids)
        [report] = await host.health("acme")
        assert report.healthy and not report.detail.startswith("idle")


async def test_a_host_asked_to_warm_up_opens_at_once_and_starts_the_workers_in_the_background(
        world, monkeypatch) -> None:
    await acli(world, "enable", "sbx_fleet", "--tenant", "acme", "--config", "greeting=w")
    monkeypatch.setenv("ERP_PLUGINS_WARM_UP", "1")
    async with PluginHost(world["location"], health_loop=False) as host:
        assert ("acme", "sbx_fleet") not in host._instances or not host._instances[
            ("acme", "sbx_fleet")].runner.worker_pids  # opening waited for no worker

        def running() -> bool:
            inst = host._instances.get(("acme", "sbx_fleet"))
            return inst is not None and bool(inst.runner.worker_pids) and alive(inst.runner.worker_pids)

        await eventually(running)  # started without any call
        assert await greeting(host) == [("sbx_fleet", "w")]
    monkeypatch.setenv("ERP_PLUGINS_WARM_UP", "later")
    with pytest.raises(ConfigError, match="ERP_PLUGINS_WARM_UP='later' is not understood"):
        PluginHost(world["location"])


def test_a_host_on_uvloop_runs_sandboxed_workers_as_their_own_uid(world) -> None:
    """ERP applications often run on uvloop, whose subprocesses take no user/group arguments."""
    import uvloop

    async def go() -> tuple[str, set[int | None]]:
        async with PluginHost(world["location"], health_loop=False) as host:
            await host.enable("sbx_fleet", tenant="acme", config={"greeting": "loop"})
            [result] = await host.call("ai_request", tenant="acme", prompt="hi", context={})
            pids = host._instances[("acme", "sbx_fleet")].runner.worker_pids
            return (result.result or result.error or ""), {uid_of(pid) for pid in pids}

    answer, uids = uvloop.run(go())
    assert answer.startswith("loop hi")
    assert uids and all(uid is not None and uid >= 1_500_000_000 for uid in uids)  # never root


async def test_a_plugin_disabled_elsewhere_has_its_worker_stopped_on_a_host_that_gets_no_call(world) -> None:
    async with PluginHost(world["location"], health_loop=False) as host:
        await host.enable("sbx_fleet", tenant="acme", config={"greeting": "idle"})
        pids = host._instances[("acme", "sbx_fleet")].runner.worker_pids
        assert pids and alive(pids)
        await acli(world, "disable", "sbx_fleet", "--tenant", "acme")
        await eventually(lambda: not alive(pids))  # no call was made: the host's own follower stopped it
        assert ("acme", "sbx_fleet") not in host._instances


async def test_tenants_named_at_open_start_no_worker_until_warm_up(world) -> None:
    await acli(world, "enable", "sbx_fleet", "--tenant", "acme", "--config", "greeting=named")
    async with PluginHost(world["location"], health_loop=False, tenants=["acme"]) as host:
        runner = host._instances[("acme", "sbx_fleet")].runner  # set up at open
        assert runner.worker_pids == ()
        await host.warm_up(["acme"])  # the tenant was started lazily at open: warm_up starts its worker
        assert runner.worker_pids and alive(runner.worker_pids)
        health = json.loads((await acli(world, "health", "--tenant", "acme", "--json")).stdout)
        assert health[0]["healthy"] and not health[0]["detail"].startswith("idle")  # the CLI checks for real
