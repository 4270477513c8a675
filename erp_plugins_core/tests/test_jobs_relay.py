"""The relay between `emit` (one stored row) and the deliveries, on both engines, with real processes: an event
stored by a process that died before any relay is listed as queued and delivered by a worker started later; a
relay killed in the middle of its transaction commits nothing and another worker's relay delivers the event once
(PostgreSQL); two workers relaying at once never relay one event twice; a job does not overtake an event stored
before it; and the caller's user_context reaches the hook in the worker process, also through an event a
handler emits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from test_jobs import LEDGER_MANIFEST, Env, _wait_job, run_env

from erp_plugins_core._catalog import ACCEPTED_FINDINGS, acceptance_key
from erp_plugins_core._errors import HookArgumentError

PLUGIN = """
import json
from erp_plugins_core import PluginInterface

class Plugin(PluginInterface):
    def _write(self, **rec):
        import os
        rec["pid"] = os.getpid()
        rec["tenant"] = self.context.tenant_id
        rec["plugin"] = self.context.plugin
        rec["user"] = dict(self.context.user_context)
        with open(self.config["record"], "a") as f:
            f.write(json.dumps(rec) + "\\n")

    async def on_event(self, event_type, data):
        self._write(key=f"{event_type}:{data.get('n')}")
        if event_type == "chain":  # no user_context given: the one this handler runs with goes on (to the other
            # plugin: an event never goes back to the plugin that emitted it)
            await self.context.emit_event("chained", {"n": data.get("n")})

    async def send_email(self, to, subject, body, attachments):
        self._write(key=f"mail:{subject}")
        return f"msg-{subject}"
"""
MANIFEST = LEDGER_MANIFEST  # the jobs tests' ledger: on_event and send_email, with its config key
#: A process that stores one event, prints its id and is killed at once (no relay runs in it: deliver=False).
EMIT_AND_DIE = """
import asyncio, os, signal, sys
from erp_plugins_core import PluginHost
from erp_plugins_core._state import open_store

async def main():
    host = PluginHost(open_store(sys.argv[1]), health_loop=False, deliver=False)
    await host.open()
    event_id = await host.emit("acme", "invoice.created", {"n": 1}, user_context={"user": "carol"})
    print(event_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.fixture
def env(site, manifest_text, secret_key, tmp_path, state_location, monkeypatch) -> Any:
    site.install("erp-relayed", plugins={"relayed": (manifest_text("relayed", extra=MANIFEST), PLUGIN),
                                         "other": (manifest_text("other", extra=MANIFEST), PLUGIN)})
    yield from run_env(Env(state_location, tmp_path / "record.jsonl", tmp_path), site, monkeypatch)


async def _enable(env: Env, *tenants: str, plugins: tuple[str, ...] = ("relayed",)) -> None:
    async with env.host() as host:
        # the plugins write their record file directly: the administrator accepted that code-scan finding
        host.store.set_setting(ACCEPTED_FINDINGS, json.dumps({p: acceptance_key(host.record(p))
                                                              for p in ("relayed", "other")}))
        for tenant in tenants:
            for plugin in plugins:
                await host.enable(plugin, tenant=tenant, config={"record": str(env.record)}, trust=True)


async def test_an_event_stored_by_a_process_killed_before_any_relay_is_queued_then_delivered_once(env) -> None:
    await _enable(env, "acme")
    died = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", textwrap.dedent(EMIT_AND_DIE), env.location],
                                   capture_output=True, text=True, timeout=60)
    assert died.returncode == -signal.SIGKILL, died.stderr
    event_id = died.stdout.strip()
    listed = env.cli("events", "--tenant", "acme", "--json")  # another process reads it back: stored, not relayed
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert [e["id"] for e in doc["events"]] == [event_id] and doc["backlog"]["queued"] == 1
    assert doc["events"][0]["state"] == "queued"
    assert [(r["plugin"], r["state"], r["attempts"], r["id"]) for r in doc["events"][0]["results"]] == [
        ("relayed", "queued", 0, None)]
    async with env.host() as host:
        env.worker()
        job = await _wait_job(host, event_id)
    assert job["state"] == "succeeded" and job["results"][0]["id"] is not None, env.logs()
    assert [(x["key"], x["user"]) for x in env.lines()] == [("invoice.created:1", {"user": "carol"})]


async def test_two_workers_relaying_at_once_relay_each_event_once_in_emit_order(env) -> None:
    await _enable(env, "acme", "globex")
    async with env.host() as host:
        ids = [await host.emit(t, "tick", {"n": n}) for n in range(10) for t in ("acme", "globex")]
        env.worker("--concurrency", "4")
        env.worker("--concurrency", "4")
        # more events while both relay: they wake on each one
        ids += [await host.emit(t, "tick", {"n": n}) for n in range(10, 30) for t in ("acme", "globex")]
        jobs = [await _wait_job(host, i) for i in ids]
    assert all(j["state"] == "succeeded" and len(j["results"]) == 1 for j in jobs), env.logs()
    assert len({j["results"][0]["id"] for j in jobs}) == len(ids)  # one delivery each, none shared
    lines = env.lines()
    assert len(lines) == len(ids)  # each event ran once
    for tenant in ("acme", "globex"):  # and each tenant's in emit order
        assert [x["key"] for x in lines if x["tenant"] == tenant] == [f"tick:{n}" for n in range(30)]


async def test_a_job_submitted_after_an_event_runs_after_it_for_the_same_plugin(env) -> None:
    await _enable(env, "acme")
    async with env.host() as host:
        works = [await host.emit("acme", "tick", {"n": 0}),
                 await host.submit("send_email", tenant="acme", to="a@b.c", subject="s", body="", attachments=[]),
                 await host.emit("acme", "tick", {"n": 1})]
        env.worker("--concurrency", "4")
        for work in works:
            assert (await _wait_job(host, work))["state"] == "succeeded", env.logs()
    # the job did not overtake the event stored before it (the submit relayed it first)
    assert [x["key"] for x in env.lines()] == ["tick:0", "mail:s", "tick:1"]


async def test_user_context_of_emit_and_submit_reaches_the_hook_in_the_worker(env) -> None:
    await _enable(env, "acme", plugins=("relayed", "other"))
    async with env.host() as host:
        alice = {"user": "alice", "roles": ["accountant"]}
        event_id = await host.emit("acme", "chain", {"n": 1}, user_context=alice)
        job_id = await host.submit("send_email", tenant="acme", to="a@b.c", subject="s1", body="", attachments=[],
                                   user_context={"user": "bob"})
        plain = await host.emit("acme", "plain", {"n": 2})
        env.worker()
        for work in (event_id, job_id, plain):
            assert (await _wait_job(host, work))["state"] == "succeeded", env.logs()
        deadline = time.monotonic() + 60
        while len(env.lines()) < 8 and time.monotonic() < deadline:  # noqa: ASYNC110 (the chained events)
            await asyncio.sleep(0.05)
        with pytest.raises(HookArgumentError, match="user_context must be a mapping"):
            await host.emit("acme", "x", {}, user_context="alice")  # type: ignore[arg-type]
        with pytest.raises(HookArgumentError, match="JSON values"):
            await host.submit("send_email", tenant="acme", to="a", subject="s", body="", attachments=[],
                              user_context={"when": object()})
    users = sorted((x["key"], x["plugin"], x["user"]) for x in env.lines())
    bob: dict[str, Any] = {"user": "bob"}
    assert users == sorted([(key, plugin, user) for plugin in ("relayed", "other") for key, user in (
        ("chain:1", alice), ("chained:1", alice), ("mail:s1", bob), ("plain:2", {}))]), env.logs()


@pytest.mark.parametrize("state_location", ["postgresql"], indirect=True)
async def test_a_relay_killed_in_the_middle_of_its_transaction_commits_nothing_and_another_relays_once(env) -> None:
    import psycopg

    await _enable(env, "acme")
    async with env.host() as host:
        event_id = await host.emit("acme", "invoice.created", {"n": 1})
        with psycopg.connect(env.location, autocommit=True) as admin, psycopg.connect(env.location) as blocker:
            # hold the stored event's row: the first relay takes the relay lock, then waits here mid-transaction
            blocker.execute("SELECT seq FROM erp_inbox FOR UPDATE").fetchall()
            first = env.worker()
            backend = _wait_for(lambda: admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT erp_relay_v1%%' "
                "AND wait_event_type = 'Lock'").fetchone())
            second = env.worker()  # its relay finds the relay lock taken and waits for its turn
            _wait_for(lambda: env.logs().count("event=worker_start") == 2)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
            admin.execute("SELECT pg_terminate_backend(%s)", (backend[0],))  # the dead process's session ends
            blocker.rollback()
        job = await _wait_job(host, event_id)
    assert job["state"] == "succeeded" and job["results"][0]["attempts"] == 1, env.logs()
    assert [x["pid"] for x in env.lines()] == [second.pid]  # delivered once, by the relay that survived
    with psycopg.connect(env.location) as conn:
        works = conn.execute("SELECT job_ids FROM erp_works WHERE id = %s", (event_id,)).fetchall()
        assert len(works) == 1 and len(works[0][0]) == 1
        assert conn.execute("SELECT count(*) FROM erp_inbox").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()[0] == 1


def _wait_for(probe: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")
