"""Durable events and background jobs on both engines (SQLite outbox, procrastinate on PostgreSQL), with real
`erp-plugins worker` processes: kill -9 mid-delivery, retries, the failed list and `retry`, order per tenant and
plugin, two workers, disabling and revoking while jobs wait, idempotency keys, a clean SIGTERM shutdown.

The sample plugin is trusted (in process) and appends what it sees to a file, so separate processes can be
checked: one `start` line when a run begins, one `done` line when it ends well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from erp_plugins_core import PluginHost
from erp_plugins_core._catalog import ACCEPTED_FINDINGS, acceptance_key
from erp_plugins_core._errors import AllPluginsFailed, ConfigError, HookArgumentError, UnknownHookError
from erp_plugins_core._jobs import JobNotFound, JobSettings, backoff_delay
from erp_plugins_core._state import open_store

LEDGER = """
import asyncio, json, os
from erp_plugins_core import PluginInterface

class Plugin(PluginInterface):
    def _write(self, **rec):
        rec["pid"] = os.getpid()
        with open(self.config["record"], "a") as f:
            f.write(json.dumps(rec) + "\\n")

    def _starts(self, key):
        try:
            lines = open(self.config["record"]).read().splitlines()
        except FileNotFoundError:
            return 0
        return sum(1 for line in lines if json.loads(line)["phase"] == "start" and json.loads(line)["key"] == key)

    async def _run(self, key, data):
        self._write(phase="start", key=key, tenant=self.context.tenant_id)
        starts = self._starts(key)
        if data.get("sleep_first") and starts == 1:
            await asyncio.sleep(data["sleep_first"])
        if data.get("sleep"):
            await asyncio.sleep(data["sleep"])
        if data.get("mode") == "fail_twice" and starts <= 2:
            raise RuntimeError(f"transient failure {starts}")
        if data.get("flag") and os.path.exists(data["flag"]):
            raise RuntimeError("ledger is down")
        self._write(phase="done", key=key, tenant=self.context.tenant_id)

    async def on_event(self, event_type, data):
        await self._run(f"{event_type}:{data.get('n')}", data)

    async def send_email(self, to, subject, body, attachments):
        await self._run(f"mail:{subject}", json.loads(body or "{}"))
        return f"msg-{subject}"
"""
LEDGER_MANIFEST = """
security: {sandbox: false}
resources: {timeout: 60}
permissions: [email.send, events.emit]
config_schema:
  type: object
  properties:
    record: {type: string}
hooks:
  - {name: on_event, method: on_event}
  - {name: send_email, method: send_email}
"""
FAST = {"ERP_PLUGINS_JOB_BACKOFF": "0.05", "ERP_PLUGINS_JOB_LEASE": "2", "ERP_PLUGINS_JOB_POLL": "0.1",
        "ERP_PLUGINS_JOB_ATTEMPTS": "3"}


class Env:
    """The test's state, record file and worker processes."""

    def __init__(self, location: str, record: Path, tmp: Path) -> None:
        self.location, self.record, self.tmp = location, record, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    @contextlib.asynccontextmanager
    async def host(self) -> AsyncIterator[PluginHost]:
        """A host that leaves delivery to the worker processes; its store is closed with it (a second store
        opened on the same SQLite file in one process while the first is open drops the process's locks)."""
        store = open_store(self.location)
        try:
            async with PluginHost(store, health_loop=False, deliver=False) as host:
                yield host
        finally:
            store.close()

    def lines(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "erp_plugins_core._cli", "--state", self.location, *args],
                              capture_output=True, text=True, timeout=60)

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "erp_plugins_core._cli", "--state", self.location, "worker", *args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("worker*.log")))

    def wait_lines(self, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()
            if predicate(lines):
                return lines
            time.sleep(0.05)
        raise AssertionError(f"record never matched; record={self.lines()}\nworker logs:\n{self.logs()}")


def run_env(e: Env, site: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """Yield `e` with the site and the FAST settings in the environment its workers inherit; kill them after."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site.root), os.environ.get("PYTHONPATH", "")]))
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    yield e
    for proc in e.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def env(site, manifest_text, secret_key, tmp_path, state_location, monkeypatch) -> Any:
    site.install("erp-ledger", plugins={"ledger": (manifest_text("ledger", extra=LEDGER_MANIFEST), LEDGER)})
    yield from run_env(Env(state_location, tmp_path / "record.jsonl", tmp_path), site, monkeypatch)


async def _enable(env: Env, *tenants: str, grant: list[str] | None = None) -> None:
    async with env.host() as host:
        # the plugin writes its record file directly: the administrator accepted that code-scan finding
        host.store.set_setting(ACCEPTED_FINDINGS, json.dumps({"ledger": acceptance_key(host.record("ledger"))}))
        for tenant in tenants:
            await host.enable("ledger", tenant=tenant, config={"record": str(env.record)}, grant=grant, trust=True)


async def _wait_job(host: PluginHost, job_id: str, states: tuple[str, ...] = ("succeeded", "failed"),
                    ) -> dict[str, Any]:
    deadline = time.monotonic() + 90  # generous: the CI machine is shared
    while True:
        job = await host.job(job_id)
        if job["state"] in states or time.monotonic() > deadline:
            return job
        await asyncio.sleep(0.05)


# --- real worker processes, both engines -----------------------------------------------------------------------


async def test_kill9_in_the_middle_of_a_delivery_then_it_is_delivered_after_restart(env, monkeypatch) -> None:
    # a longer lease than FAST's 2 s: on a loaded machine a live worker's renewal could come late, and its claim
    # taken over, which counts an attempt this test does not mean to make
    monkeypatch.setenv("ERP_PLUGINS_JOB_LEASE", "6")
    await _enable(env, "acme")
    async with env.host() as host:
        event_id = await host.emit("acme", "invoice.created", {"n": 1, "sleep_first": 60})
        first = env.worker()
        env.wait_lines(lambda lines: any(x["phase"] == "start" for x in lines))
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert (await host.job(event_id))["state"] == "running"  # the dead worker's claim, not yet expired
        second = env.worker()
        job = await _wait_job(host, event_id)
    assert job["state"] == "succeeded", env.logs()
    starts = [x for x in env.lines() if x["phase"] == "start"]
    done = [x for x in env.lines() if x["phase"] == "done"]
    assert [x["pid"] for x in starts] == [first.pid, second.pid] and [x["pid"] for x in done] == [second.pid]
    assert job["results"][0]["attempts"] == 2


async def test_a_plugin_that_fails_twice_then_succeeds(env) -> None:
    await _enable(env, "acme")
    async with env.host() as host:
        event_id = await host.emit("acme", "invoice.created", {"n": 1, "mode": "fail_twice"})
        env.worker()
        job = await _wait_job(host, event_id)
    assert job["state"] == "succeeded", env.logs()
    assert job["results"][0]["attempts"] == 3 and job["error"] is None
    assert [x["phase"] for x in env.lines()] == ["start", "start", "start", "done"]


async def test_always_failing_delivery_is_listed_as_failed_and_retry_runs_it_again(env) -> None:
    await _enable(env, "acme")
    flag = env.tmp / "down"
    flag.touch()
    async with env.host() as host:
        event_id = await host.emit("acme", "invoice.created", {"n": 7, "flag": str(flag)})
        env.worker()
        job = await _wait_job(host, event_id)
        assert job["state"] == "failed" and job["results"][0]["attempts"] == 3, env.logs()  # ERP_PLUGINS_JOB_ATTEMPTS
        assert job["error"] == "ledger: RuntimeError: ledger is down"
        listed = env.cli("events", "--tenant", "acme", "--failed", "--json")
        assert listed.returncode == 0, listed.stderr
        doc = json.loads(listed.stdout)
        assert [e["id"] for e in doc["events"]] == [event_id] and doc["backlog"]["failed"] == 1
        assert doc["events"][0]["results"][0]["error"] == "RuntimeError: ledger is down"
        human = env.cli("events", "--tenant", "acme")
        assert "failed 1" in human.stdout and "ledger is down" in human.stdout
        flag.unlink()
        retried = env.cli("retry", event_id)
        assert retried.returncode == 0 and "queued 1 failed delivery" in retried.stdout, retried.stderr
        job = await _wait_job(host, event_id)
        assert job["state"] == "succeeded" and job["results"][0]["attempts"] == 4  # one per run, the retry's too
        again = env.cli("retry", event_id)
        assert again.returncode == 1 and "nothing to retry" in again.stderr
    assert [x["phase"] for x in env.lines()] == ["start"] * 4 + ["done"]


async def test_each_plugin_sees_a_tenants_events_in_emit_order_across_retries_and_two_workers(env) -> None:
    await _enable(env, "acme", "globex")
    async with env.host() as host:
        ids = []
        for n in range(12):
            for tenant in ("acme", "globex"):
                data = {"n": n, "mode": "fail_twice"} if (n == 3 and tenant == "acme") else {"n": n}
                ids.append(await host.emit(tenant, "tick", data))
        env.worker("--concurrency", "4")
        env.worker("--concurrency", "4")
        for event_id in ids:
            assert (await _wait_job(host, event_id))["state"] == "succeeded", env.logs()
    for tenant in ("acme", "globex"):
        mine = [x for x in env.lines() if x["tenant"] == tenant]
        done = [int(x["key"].split(":")[1]) for x in mine if x["phase"] == "done"]
        assert done == list(range(12))
        # one run at a time per tenant and plugin: every start follows the previous event's done
        open_key = None
        for x in mine:
            if x["phase"] == "start":
                assert open_key in (None, x["key"]), f"{x['key']} started while {open_key} ran"
                open_key = x["key"]
            else:
                open_key = None


async def test_two_workers_never_run_the_same_job_at_once(env) -> None:
    tenants = [f"t{i}" for i in range(6)]
    await _enable(env, *tenants)
    async with env.host() as host:
        env.worker("--concurrency", "6")
        env.worker("--concurrency", "6")
        deadline = time.monotonic() + 30
        while env.logs().count("event=worker_start") < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        ids = [await host.submit("send_email", tenant=t, to="a@b.c", subject=f"{t}-{i}", body='{"sleep": 0.2}',
                                 attachments=[]) for i in range(5) for t in tenants]
        jobs = [await _wait_job(host, i) for i in ids]
    assert all(j["state"] == "succeeded" for j in jobs), env.logs()
    assert {j["results"][0]["result"] for j in jobs} == {f"msg-{t}-{i}" for i in range(5) for t in tenants}
    starts = [x["key"] for x in env.lines() if x["phase"] == "start"]
    assert sorted(starts) == sorted(set(starts)) and len(starts) == 30  # each job ran exactly once
    assert len({x["pid"] for x in env.lines()}) == 2  # and both workers took some


async def test_jobs_queued_for_a_plugin_disabled_before_they_run_fail_with_that_reason(env) -> None:
    await _enable(env, "acme")
    async with env.host() as host:
        ids = [await host.submit("send_email", tenant="acme", to="a@b.c", subject=f"s{i}", body="{}",
                                 attachments=[]) for i in range(3)]
        await host.disable("ledger", tenant="acme")
        env.worker()
        jobs = [await _wait_job(host, i) for i in ids]
    for job in jobs:
        assert job["state"] == "failed" and job["results"][0]["attempts"] == 1, env.logs()
        assert "was disabled for tenant 'acme' after the job was stored; not run" in job["error"]
    assert env.lines() == []
    listed = env.cli("jobs", "--state", "failed", "--json")
    assert {j["id"] for j in json.loads(listed.stdout)["jobs"]} == set(ids)


async def test_a_permission_revoked_before_the_job_runs_fails_it_and_retry_after_granting_runs_it(env) -> None:
    await _enable(env, "acme")
    async with env.host() as host:
        job_id = await host.submit("send_email", tenant="acme", to="a@b.c", subject="s", body="{}", attachments=[])
        with host.store.transaction() as tx:  # the administrator takes email.send back
            row = tx.get("acme", "ledger")
            row.granted = ["events.emit"]
            tx.put(row)
        env.worker()
        job = await _wait_job(host, job_id)
        assert job["state"] == "failed" and "lacks permission 'email.send'" in job["error"], env.logs()
        assert env.lines() == []
        with host.store.transaction() as tx:
            row = tx.get("acme", "ledger")
            row.granted = ["email.send", "events.emit"]
            tx.put(row)
        assert env.cli("retry", job_id).returncode == 0
        job = await _wait_job(host, job_id)
    assert job["state"] == "succeeded" and job["results"][0]["result"] == "msg-s"


async def test_sigterm_lets_the_running_delivery_finish_and_loses_nothing(env) -> None:
    await _enable(env, "acme")
    async with env.host() as host:
        first = await host.emit("acme", "tick", {"n": 0, "sleep": 1.5})
        second = await host.emit("acme", "tick", {"n": 1})
        worker = env.worker()
        env.wait_lines(lambda lines: any(x["phase"] == "start" for x in lines))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, env.logs()
        assert (await host.job(first))["state"] == "succeeded"  # finished before the worker exited
        assert (await host.job(second))["state"] == "queued"  # not taken after the signal, still there
        assert "event=worker_stop" in env.logs()
        env.worker()
        assert (await _wait_job(host, second))["state"] == "succeeded"
    assert [x["key"] for x in env.lines()] == ["tick:0", "tick:0", "tick:1", "tick:1"]


async def test_the_same_idempotency_key_gives_the_same_job(env) -> None:
    await _enable(env, "acme", "globex")
    async with env.host() as host:
        kw = {"to": "a@b.c", "subject": "once", "body": "{}", "attachments": []}
        a = await host.submit("send_email", tenant="acme", idempotency_key="inv-42", **kw)
        assert await host.submit("send_email", tenant="acme", idempotency_key="inv-42", **kw) == a
        assert await host.submit("send_email", tenant="globex", idempotency_key="inv-42", **kw) != a
        assert await host.submit("send_email", tenant="acme", **kw) != a
        job = await host.job(a)
        assert job["state"] == "queued" and job["idempotency_key"] == "inv-42" and job["hook"] == "send_email"


# --- refused up front ----------------------------------------------------------------------------------------


async def test_submit_checks_hook_and_arguments_up_front(env) -> None:
    await _enable(env, "acme")
    async with env.host() as host:
        with pytest.raises(HookArgumentError):
            await host.submit("send_email", tenant="acme", to="a@b.c")
        with pytest.raises(UnknownHookError):
            await host.submit("no_such_hook", tenant="acme")
        with pytest.raises(UnknownHookError, match="streaming"):
            await host.submit("ai_stream", tenant="acme", prompt="x", context={})
        with pytest.raises(AllPluginsFailed, match="no plugin enabled for tenant 'globex' implements send_email"):
            await host.submit("send_email", tenant="globex", to="a", subject="s", body="b", attachments=[])
        with pytest.raises(JobNotFound):
            await host.job("00000000-0000-0000-0000-000000000000")
        assert (await (await host._jobs().engine()).counts(kind="job")) == dict.fromkeys(
            ("queued", "running", "succeeded", "failed"), 0)


def test_cli_refuses_bad_input_with_one_line(env) -> None:
    unknown = env.cli("retry", "nope")
    assert unknown.returncode in (1, 2) and unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
    bad_state = env.cli("jobs", "--state", "done")
    assert bad_state.returncode == 2 and "Traceback" not in bad_state.stderr
    no_tenant = env.cli("events")
    assert no_tenant.returncode == 2


# --- settings ----------------------------------------------------------------------------------------------------


def test_settings_from_the_environment_and_their_errors(monkeypatch) -> None:
    monkeypatch.setenv("ERP_PLUGINS_JOB_ATTEMPTS", "7")
    monkeypatch.setenv("ERP_PLUGINS_JOB_RETENTION_DAYS", "1")
    s = JobSettings.from_env()
    assert s.max_attempts == 7 and s.retention_s == 86400
    monkeypatch.setenv("ERP_PLUGINS_JOB_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="ERP_PLUGINS_JOB_ATTEMPTS='many' is not a whole number"):
        JobSettings.from_env()
    monkeypatch.setenv("ERP_PLUGINS_JOB_ATTEMPTS", "0")
    with pytest.raises(ConfigError, match="too small"):
        JobSettings.from_env()


def test_backoff_doubles_is_capped_and_jittered() -> None:
    s = JobSettings(backoff_s=1.0, backoff_max_s=10.0)
    delays = [backoff_delay(s, 3) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len({round(d, 6) for d in delays}) > 100
    assert all(5.0 <= backoff_delay(s, 20) <= 10.0 for _ in range(50))


async def test_finished_work_past_the_retention_is_purged_and_unfinished_work_is_kept(env) -> None:
    from erp_plugins_core._jobs import Outcome, open_engine

    await _enable(env, "acme")
    engine = await open_engine(env.location, JobSettings(retention_s=0.0, poll_s=0.05)).open()
    try:
        ran: list[str] = []

        async def executor(unit: Any) -> Outcome:
            ran.append(unit.work)
            return Outcome(True, result={"ok": True})

        finished = await engine.store_job("acme", "send_email", {"to": "a"}, ["ledger"], idempotency_key=None)
        stop = asyncio.Event()
        runner = asyncio.create_task(engine.run(executor, stop=stop))
        async with asyncio.timeout(30):
            while (await engine.get(finished)).deliveries[0].state != "succeeded":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        stop.set()
        await runner
        waiting = await engine.store_job("acme", "send_email", {"to": "b"}, ["ledger"], idempotency_key=None)
        assert (await engine.get(finished)).deliveries[0].result == {"ok": True}
        assert await engine.purge() == 1
        with pytest.raises(JobNotFound):
            await engine.get(finished)
        assert (await engine.get(waiting)).deliveries[0].state == "queued" and ran == [finished]
    finally:
        await engine.close()


async def test_a_worker_started_before_the_plugin_was_enabled_delivers_to_it(env) -> None:
    env.worker()
    env.wait_lines(lambda lines: "event=worker_start" in env.logs())
    await _enable(env, "acme")
    async with env.host() as host:
        event_id = await host.emit("acme", "tick", {"n": 0})
        job = await _wait_job(host, event_id)
    assert job["state"] == "succeeded", env.logs()
    assert [x["phase"] for x in env.lines()] == ["start", "done"]


def test_an_unreachable_postgresql_state_is_one_line_without_the_password() -> None:
    for command in (["jobs"], ["events", "--tenant", "acme"], ["retry", "0f9c1d2e-0000-0000-0000-000000000000"]):
        out = subprocess.run([sys.executable, "-m", "erp_plugins_core._cli", "--state",
                              "postgresql://erp:s3cr3t-pw@127.0.0.1:1/erp", *command],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert "127.0.0.1" in out.stderr and "s3cr3t-pw" not in out.stderr + out.stdout
