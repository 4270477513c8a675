# ruff: noqa: ASYNC240 - tests read /proc and small files inline
"""The worker fleet: idle stops, the cap on live workers (least recently used evicted), waiting for a slot,
lazy starts and health checks that start nothing, with real bubblewrap workers of the corpus's sbx_fleet
plugin (it writes each lifecycle step to its /data, so the tests see what each worker ran).

Processes are counted on the host by the workers' own uids (each (plugin, tenant) runs as its own), so
"live workers" here means real processes, not the fleet's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from pathlib import Path

import pytest
from sandboxkit import build_site, processes_of, reachable_dir, record

from erp_plugins_core._context import PluginContext
from erp_plugins_core._errors import HookTimeout, PluginError, SandboxError
from erp_plugins_core._redact import Redactor
from erp_plugins_core._sandbox import (
    IDLE_HEALTH,
    SandboxRunner,
    WorkerFleet,
    sandbox_available,
)

pytestmark = pytest.mark.sandbox
#: Only to wait for events (a worker stopped, a call waiting); never asserted as a duration.
PATIENCE = 20.0


@pytest.fixture(scope="module")
def fleet_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("fleet-build"), ["sbx_fleet"])


@pytest.fixture(scope="module")
def runtime_dir() -> Path:
    with reachable_dir("erp-fleet-runtime-") as path:
        yield path


@pytest.fixture
def data_root() -> Path:
    with reachable_dir("erp-fleet-data-") as path:
        yield path


@pytest.fixture(autouse=True)
def require_sandbox() -> None:
    reason = sandbox_available()
    if reason is not None:
        pytest.fail(f"the sandbox cannot start here, so the fleet is untested: {reason}")
    if os.geteuid() != 0:
        pytest.skip("workers are counted by their own uids, which the host gives them only as root")


@pytest.fixture
async def fleets():
    made: list[WorkerFleet] = []

    def make(**kw) -> WorkerFleet:
        made.append(WorkerFleet(**kw))
        return made[-1]

    yield make
    for fleet in made:
        await fleet.close()


@pytest.fixture
async def runners(fleet_site: Path, runtime_dir: Path, data_root: Path):
    """`await make(tenant, fleet, ...)`: a runner loaded, initialized and activated (or only recorded if lazy)."""
    made: list[SandboxRunner] = []

    async def make(tenant: str, fleet: WorkerFleet | None, *, plugin: str = "sbx_fleet", lazy: bool = False,
                   config: dict | None = None) -> SandboxRunner:
        runner = SandboxRunner(record(fleet_site, plugin, "sbx_fleet"), tenant, runtime_dir=runtime_dir,
                               data_root=data_root, fleet=fleet, lazy=lazy)
        made.append(runner)
        config = {"greeting": f"hello {tenant}"} if config is None else config
        await runner.load()
        context = PluginContext(tenant_id=tenant, plugin=plugin, config=config, granted=frozenset(), bridge=None,
                                redactor=Redactor())
        assert await runner.initialize(config, context) is True
        assert await runner.lifecycle("activate") is True
        runner.steps = data_root / plugin / tenant / "steps.log"  # type: ignore[attr-defined]
        return runner

    yield make
    for runner in made:
        await runner.close()


async def ask(runner: SandboxRunner, prompt: str) -> str:
    return await runner.hook_function("ai_request", "answer")(prompt, {})


def hook_running(runner: SandboxRunner) -> bool:
    """Whether a hook call (not a start's load, initialize or activate) is in the runner's worker now."""
    w = runner._worker
    return w is not None and any(call.what == "hook ai_request" for call in w.calls.values())


def steps(runner: SandboxRunner) -> list[str]:
    path: Path = runner.steps  # type: ignore[attr-defined]
    return path.read_text().splitlines() if path.exists() else []


async def until(condition, what: str) -> None:
    """Wait (generously) for `condition()` to hold; fail naming `what` if it never does."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        await asyncio.sleep(0.02)


class Sampler:
    """Counts, in a thread, how many of the given workers have live processes at once (the most seen)."""

    def __init__(self, uids: set[int]) -> None:
        self.uids = uids
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(set(processes_of(self.uids).values())))
            self.samples += 1
            self._stop.wait(0.005)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- idle stop ----------------------------------------------------------------------------------------------


async def test_an_idle_worker_is_stopped_and_the_next_call_restarts_it_with_its_config(runners, fleets,
                                                                                     caplog) -> None:
    fleet = fleets(max_workers=8, idle_timeout=0.5)
    runner = await runners("acme", fleet)
    first = await ask(runner, "boot")
    assert runner.worker_pids and processes_of({runner.uid})
    group = runner._worker.cgroup  # None where the host cannot make memory cgroups
    with caplog.at_level(logging.INFO, logger="erp_plugins.sandbox"):
        await until(lambda: runner.idle, "the idle worker to be stopped")
        await until(lambda: not processes_of({runner.uid}), "the stopped worker's processes to end")
        if group is not None:
            await until(lambda: not group.path.exists(), "its memory cgroup to be removed")
        await until(lambda: fleet.stats()["idle_stops"] == 1, "the fleet to count the idle stop")
    assert runner.worker_pids == ()
    assert steps(runner) == ["initialize hello acme", "activate", "deactivate", "cleanup"]  # stopped gracefully
    assert fleet.stats()["live"] == 0
    assert runner.failed is None and not runner._crashes  # not a crash
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("worker stopped (idle for 0.5 s)" in r.getMessage() for r in caplog.records)

    assert await ask(runner, "config") == "hello acme"  # a new worker, initialized again with the config
    assert await ask(runner, "boot") != first
    assert steps(runner)[4:] == ["initialize hello acme", "activate"]
    assert fleet.stats()["live"] == 1


async def test_health_checks_start_no_worker_and_keep_none_alive(runners, fleets) -> None:
    fleet = fleets(max_workers=8, idle_timeout=1.0)
    runner = await runners("acme", fleet)
    await ask(runner, "boot")
    reports = []
    while not runner.idle:  # health checks of the live worker do not count as use: it is stopped all the same
        reports.append(await runner.health_check())
        assert len(reports) < PATIENCE / 0.1, "health checks kept the idle worker alive"
        await asyncio.sleep(0.1)
    assert reports and all(r == {"healthy": True, "detail": "ok"} for r in reports)
    await until(lambda: not processes_of({runner.uid}), "the stopped worker's processes to end")
    for _ in range(3):
        assert await runner.health_check() == IDLE_HEALTH
    assert not processes_of({runner.uid}) and runner.worker_pids == ()
    await until(lambda: fleet.stats()["live"] == 0, "the stopped worker's slot to be freed")
    assert not processes_of({runner.uid}) and runner.idle


async def test_a_deactivate_that_hangs_does_not_hold_the_stop_and_is_no_crash(runners, fleets) -> None:
    fleet = fleets(max_workers=8, idle_timeout=0.3)
    runner = await runners("hang", fleet, config={"greeting": "hi", "hang_deactivate": True})
    await ask(runner, "boot")
    await until(lambda: runner.idle and not processes_of({runner.uid}), "the hanging worker to be stopped")
    assert steps(runner)[-1] == "deactivate"  # cut at its bound; cleanup never ran in that worker
    assert runner.failed is None and not runner._crashes
    assert await ask(runner, "config") == "hi"


async def test_idle_timeout_off_keeps_workers(runners, fleets) -> None:
    fleet = fleets(max_workers=8, idle_timeout=math.inf)
    runner = await runners("acme", fleet)
    pids = runner.worker_pids
    await asyncio.sleep(1.0)  # nothing to wait for: no reaper runs at all
    assert fleet._reaper is None and runner.worker_pids == pids
    assert fleet.stats()["idle_timeout"] is None


# --- the cap --------------------------------------------------------------------------------------------------


async def test_the_cap_evicts_the_least_recently_used_and_every_call_succeeds(runners, fleets) -> None:
    fleet = fleets(max_workers=2, idle_timeout=math.inf)
    a, b, c = [await runners(t, fleet, lazy=True) for t in ("a", "b", "c")]
    uids = {a.uid, b.uid, c.uid}
    assert len(uids) == 3
    with Sampler(uids) as sampler:
        assert (await ask(a, "x")).startswith("hello a x")
        assert (await ask(b, "x")).startswith("hello b x")
        a_pids = a.worker_pids
        assert (await ask(a, "x")).startswith("hello a x")  # b is now the least recently used
        assert (await ask(c, "x")).startswith("hello c x")
        await until(lambda: b.idle, "b to be evicted")
        assert a.worker_pids == a_pids and c.worker_pids  # a kept its worker
        assert steps(b)[-2:] == ["deactivate", "cleanup"]
        assert (await ask(b, "config")) == "hello b"  # evicts a, now the least recently used
        assert a.idle and not c.idle
        for _ in range(3):  # each call for the least recently used tenant: every call evicts one, all succeed
            for runner, tenant in ((a, "a"), (c, "c"), (b, "b")):
                assert await ask(runner, "config") == f"hello {tenant}"
    assert sampler.samples > 10 and 1 <= sampler.most <= 2, sampler.most
    stats = fleet.stats()
    assert stats["live"] <= 2 and stats["evictions"] >= 11 and stats["waiting"] == 0


async def test_with_every_worker_busy_a_call_waits_for_a_slot(runners, fleets) -> None:
    fleet = fleets(max_workers=2, idle_timeout=math.inf)
    a, b, c = [await runners(t, fleet, lazy=True) for t in ("a", "b", "c")]
    with Sampler({a.uid, b.uid, c.uid}) as sampler:
        slow = [asyncio.create_task(ask(r, "sleep:5")) for r in (a, b)]
        await until(lambda: all(hook_running(r) for r in (a, b)), "a and b to be busy")
        third = asyncio.create_task(ask(c, "config"))
        await until(lambda: fleet.stats()["waiting"] == 1, "c to wait for a slot")
        assert not third.done() and c.worker_pids == ()
        assert (a.in_flight(), b.in_flight(), c.in_flight()) == (1, 1, 1)  # a start waiting counts, for the host
        assert await third == "hello c"
        assert await asyncio.gather(*slow) == ["slept", "slept"]
        assert (a.in_flight(), b.in_flight(), c.in_flight()) == (0, 0, 0)
    assert sampler.most <= 2
    assert fleet.stats()["evictions"] == 1 and fleet.stats()["waiting"] == 0


async def test_a_stream_in_progress_keeps_its_worker(runners, fleets) -> None:
    fleet = fleets(max_workers=1, idle_timeout=math.inf)
    a, b = [await runners(t, fleet, lazy=True) for t in ("a", "b")]
    stream = a.hook_function("ai_stream", "stream")("s", {"n": 3, "gap": 0.5})
    assert await stream.__anext__() == "s-0"
    call = asyncio.create_task(ask(b, "config"))
    await until(lambda: fleet.stats()["waiting"] == 1, "b to wait for the only slot")
    assert [chunk async for chunk in stream] == ["s-1", "s-2"]  # the stream is not cut to make room
    assert await call == "hello b"
    assert a.idle and fleet.stats()["evictions"] == 1


async def test_waiting_past_its_own_timeout_names_the_slot_and_the_cap(runners, fleets) -> None:
    fleet = fleets(max_workers=2, idle_timeout=math.inf)
    a, b = [await runners(t, fleet, lazy=True) for t in ("a", "b")]
    quick = await runners("q", fleet, plugin="sbx_fleet_quick", lazy=True)  # resources.timeout: 2 s
    assert await ask(quick, "config") == "hello q"  # its runtime site is built: the wait below is for a slot only
    slow = [asyncio.create_task(ask(r, "sleep:6")) for r in (a, b)]
    await until(lambda: all(hook_running(r) for r in (a, b)), "a and b to be busy")
    with pytest.raises(HookTimeout, match=r"hook ai_request timed out after 2 s waiting for a worker slot: all 2 "
                                          r"sandbox workers of the cap are busy \(raise ERP_PLUGINS_MAX_WORKERS, "
                                          r"now 2, or PluginHost\(max_workers=\.\.\.\)\)"):
        await ask(quick, "x")
    assert quick.worker_pids == () and not processes_of({quick.uid})
    assert await asyncio.gather(*slow) == ["slept", "slept"]  # the busy calls were not disturbed
    assert fleet.stats()["waiting"] == 0
    assert (await ask(quick, "config")) == "hello q"  # with a slot to take (by eviction), it starts again


async def test_an_eager_load_takes_a_slot_too(runners, fleets) -> None:
    fleet = fleets(max_workers=2, idle_timeout=math.inf)
    a = await runners("a", fleet)
    b = await runners("b", fleet)
    c = await runners("c", fleet)  # its load evicted a, the least recently used
    assert a.idle and not b.idle and not c.idle and not processes_of({a.uid})
    assert fleet.stats()["live"] == 2 and fleet.stats()["evictions"] == 1
    assert await ask(a, "config") == "hello a"


async def test_a_runner_closed_while_its_call_waits_for_a_slot_starts_nothing(runners, fleets) -> None:
    fleet = fleets(max_workers=1, idle_timeout=math.inf)
    busy = await runners("busy", fleet, lazy=True)
    waiting = await runners("waiting", fleet, lazy=True)
    slow = asyncio.create_task(ask(busy, "sleep:3"))
    await until(lambda: hook_running(busy), "the only worker to be busy")
    call = asyncio.create_task(ask(waiting, "x"))
    await until(lambda: fleet.stats()["waiting"] == 1, "the call to wait for a slot")
    await waiting.close()
    with pytest.raises(SandboxError, match="for tenant 'waiting' was stopped by the host"):
        await call
    assert await slow == "slept"
    await until(lambda: fleet.stats()["live"] == 0, "the slot it was given to be freed")
    assert not processes_of({waiting.uid}) and waiting.worker_pids == ()


# --- lazy starts --------------------------------------------------------------------------------------------


async def test_a_lazy_runner_starts_nothing_until_its_first_call(runners, fleets) -> None:
    fleet = fleets(max_workers=4, idle_timeout=60)
    runner = await runners("lazy", fleet, lazy=True)
    assert runner.idle and runner.worker_pids == () and not processes_of({runner.uid})
    assert steps(runner) == [] and fleet.stats()["live"] == 0
    assert await runner.health_check() == IDLE_HEALTH
    assert not processes_of({runner.uid})
    assert await ask(runner, "config") == "hello lazy"
    assert not runner.idle and len(processes_of({runner.uid})) >= 3  # bwrap, the sandbox's PID 1, the worker
    assert steps(runner) == ["initialize hello lazy", "activate"]
    assert fleet.stats()["live"] == 1


async def test_a_lazy_runner_without_a_fleet_starts_on_its_first_call(runners) -> None:
    runner = await runners("alone", None, lazy=True)
    assert runner.worker_pids == () and not processes_of({runner.uid})
    assert await ask(runner, "config") == "hello alone"
    assert runner.worker_pids


async def test_a_failed_replay_is_the_calls_start_failure(runners, fleets) -> None:
    fleet = fleets(max_workers=4, idle_timeout=60)
    runner = await runners("bad", fleet, lazy=True, config={"greeting": "x", "fail_initialize": True})
    with pytest.raises(SandboxError, match=r"plugin 'sbx_fleet' for tenant 'bad': its worker could not be started: "
                                           r"RuntimeError: initialize refused by config"):
        await ask(runner, "x")
    await until(lambda: not processes_of({runner.uid}), "the worker that failed to start to end")
    await until(lambda: fleet.stats()["live"] == 0, "its slot to be freed")
    assert not runner.idle  # broken, not idle: its health check tries (and reports the failure)
    with pytest.raises(PluginError, match="initialize refused by config"):
        await runner.health_check()


async def test_close_stops_the_worker_and_frees_its_slot(runners, fleets) -> None:
    fleet = fleets(max_workers=4, idle_timeout=60)
    runner = await runners("closing", fleet)
    assert processes_of({runner.uid}) and fleet.stats()["live"] == 1
    await runner.close()
    assert not processes_of({runner.uid}) and fleet.stats()["live"] == 0


# --- settings -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5", " "])
def test_a_bad_max_workers_setting_is_refused(monkeypatch, value: str) -> None:
    monkeypatch.setenv("ERP_PLUGINS_MAX_WORKERS", value)
    if not value.strip():  # blank is unset: the cap derived from memory (fixed here: free memory moves meanwhile)
        from erp_plugins_core._sandbox import _fleet

        monkeypatch.setattr(_fleet, "derived_max_workers", lambda: 123)
        assert WorkerFleet(idle_timeout=1).cap == 123
        return
    with pytest.raises(SandboxError, match=rf"^ERP_PLUGINS_MAX_WORKERS='{value}' is not a number of workers; set "
                                           r"it to a whole number of at least 1, or unset it"):
        WorkerFleet()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", "0.0"])
def test_a_bad_idle_setting_is_refused(monkeypatch, value: str) -> None:
    monkeypatch.setenv("ERP_PLUGINS_WORKER_IDLE", value)
    with pytest.raises(SandboxError, match=rf"^ERP_PLUGINS_WORKER_IDLE='{value}' is not an idle time; set it to a "
                                           r"number of seconds greater than 0, or to off"):
        WorkerFleet(max_workers=4)


def test_settings_from_the_environment_and_arguments(monkeypatch) -> None:
    monkeypatch.setenv("ERP_PLUGINS_MAX_WORKERS", "7")
    monkeypatch.setenv("ERP_PLUGINS_WORKER_IDLE", "1.5")
    assert (WorkerFleet().cap, WorkerFleet().idle_timeout) == (7, 1.5)
    assert (WorkerFleet(max_workers=3, idle_timeout=9).cap, WorkerFleet(max_workers=3, idle_timeout=9).idle_timeout) \
        == (3, 9.0)  # arguments win
    monkeypatch.setenv("ERP_PLUGINS_WORKER_IDLE", "OFF")
    assert WorkerFleet().stats()["idle_timeout"] is None
    monkeypatch.delenv("ERP_PLUGINS_MAX_WORKERS")
    monkeypatch.delenv("ERP_PLUGINS_WORKER_IDLE")
    fleet = WorkerFleet()
    assert 4 <= fleet.cap <= 512 and fleet.idle_timeout == 600.0
    for bad in ({"max_workers": 0}, {"max_workers": 2.5}, {"max_workers": True}, {"idle_timeout": 0},
                {"idle_timeout": -1.0}, {"idle_timeout": math.nan}):
        with pytest.raises(ValueError, match="must be"):
            WorkerFleet(**bad)


async def test_close_ends_the_reaper(fleets, runners) -> None:
    fleet = fleets(max_workers=4, idle_timeout=30)
    await runners("acme", fleet)
    reaper = fleet._reaper
    assert reaper is not None and not reaper.done()
    await fleet.close()
    assert reaper.done()
