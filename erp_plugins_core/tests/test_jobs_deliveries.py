"""A plugin's own delivery settings (manifest `deliveries: {ordered, max_attempts}`) on both engines, with real
`erp-plugins worker` processes: an unordered plugin's later event runs while an earlier one waits for its retry
(an ordered plugin's waits), a manifest attempt limit below the host's ends the delivery sooner, bad values are
refused naming the field, and an outbox of schema version 1 gains the new columns.

Two plugins share one source; each appends what it sees to its own record file, so the worker processes can be
checked from here.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from test_jobs import Env, _wait_job, run_env

from erp_plugins_core._catalog import ACCEPTED_FINDINGS, acceptance_key
from erp_plugins_core._errors import ManifestError
from erp_plugins_core._jobs import JobSettings, Outcome, Target, open_engine
from erp_plugins_core._manifest import load_manifest

RECORDER = """
import json, os
from erp_plugins_core import PluginInterface

class Plugin(PluginInterface):
    async def on_event(self, event_type, data):
        key = f"{event_type}:{data.get('n')}"
        with open(self.config["record"], "a") as f:
            f.write(json.dumps({"phase": "start", "key": key}) + "\\n")
        if data.get("flag") and os.path.exists(data["flag"]):
            raise RuntimeError("ledger is down")
        with open(self.config["record"], "a") as f:
            f.write(json.dumps({"phase": "done", "key": key}) + "\\n")
"""
MANIFEST = """
security: {sandbox: false}
permissions: [events.emit]
config_schema:
  type: object
  properties:
    record: {type: string}
hooks:
  - {name: on_event, method: on_event}
"""


class Recorders(Env):
    """Env with one record file per plugin."""

    def records(self, plugin: str) -> list[dict[str, Any]]:
        path = self.tmp / f"{plugin}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def recorders(request, site, manifest_text, secret_key, tmp_path, state_location, monkeypatch) -> Any:
    """Plugins `ordered` (default settings) and `custom` (`deliveries:` given as the parameter) in one distribution."""
    deliveries = request.param
    site.install("erp-recorders", plugins={
        "ordered": (manifest_text("ordered", extra=MANIFEST), RECORDER),
        "custom": (manifest_text("custom", extra=MANIFEST + f"deliveries: {deliveries}\n"), RECORDER),
    })
    # FAST sets ERP_PLUGINS_JOB_ATTEMPTS=3: the host setting
    yield from run_env(Recorders(state_location, tmp_path / "unused.jsonl", tmp_path), site, monkeypatch)


async def _enable(env: Recorders) -> None:
    async with env.host() as host:
        # the plugins write their record files directly: the administrator accepted that code-scan finding
        host.store.set_setting(ACCEPTED_FINDINGS, json.dumps(
            {p: acceptance_key(host.record(p)) for p in ("ordered", "custom")}))
        for plugin in ("ordered", "custom"):
            await host.enable(plugin, tenant="acme", config={"record": str(env.tmp / f"{plugin}.jsonl")}, trust=True)


def _delivery(job: dict[str, Any], plugin: str) -> dict[str, Any]:
    return next(r for r in job["results"] if r["plugin"] == plugin)


async def _wait_delivery(host: Any, work: str, plugin: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90  # generous: the CI machine is shared
    while True:
        delivery = _delivery(await host.job(work), plugin)
        if delivery["state"] == state or time.monotonic() > deadline:
            return delivery
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("recorders", ["{ordered: false}"], indirect=True)
async def test_an_unordered_plugins_later_events_run_while_an_earlier_one_waits_for_its_retry(
    recorders, monkeypatch,
) -> None:
    env = recorders
    # the first retry comes after 300-600 s, far beyond the test: event 0 waits for it throughout
    monkeypatch.setenv("ERP_PLUGINS_JOB_BACKOFF", "600")
    await _enable(env)
    flag = env.tmp / "down"
    flag.touch()
    async with env.host() as host:
        first = await host.emit("acme", "tick", {"n": 0, "flag": str(flag)})
        later = [await host.emit("acme", "tick", {"n": n}) for n in (1, 2, 3)]
        env.worker("--concurrency", "1")  # one at a time, so the record's order is the order of the runs
        for work in later:
            assert (await _wait_delivery(host, work, "custom", "succeeded"))["state"] == "succeeded", env.logs()
        waiting = _delivery(await host.job(first), "custom")
        assert waiting["state"] == "queued" and waiting["attempts"] == 1, waiting
        assert waiting["error"] == "RuntimeError: ledger is down"
        # the ordered plugin failed event 0 too; its later events wait behind that retry (the worker took the
        # deliveries in id order, so it passed over these before it ran custom's event 3)
        assert _delivery(await host.job(first), "ordered")["state"] == "queued"
        for work in later:
            held = _delivery(await host.job(work), "ordered")
            assert (held["state"], held["attempts"]) == ("queued", 0), held
    assert [(x["phase"], x["key"]) for x in env.records("custom")] == [
        ("start", "tick:0"), ("start", "tick:1"), ("done", "tick:1"), ("start", "tick:2"), ("done", "tick:2"),
        ("start", "tick:3"), ("done", "tick:3")]
    assert [(x["phase"], x["key"]) for x in env.records("ordered")] == [("start", "tick:0")]


@pytest.mark.parametrize("recorders", ["{ordered: false}"], indirect=True)
async def test_an_unordered_plugins_deliveries_run_at_once_on_a_cold_worker_without_a_failed_run(recorders) -> None:
    env = recorders
    await _enable(env)
    async with env.host() as host:
        works = [await host.emit("acme", "tick", {"n": n}) for n in range(8)]
        env.worker("--concurrency", "4")  # its first deliveries find the tenant's plugins not started yet
        jobs = [await _wait_job(host, w) for w in works]
    # a delivery that found the plugins still starting (in another delivery's task) waited for them: one run each
    assert [(_delivery(j, "custom")["state"], _delivery(j, "custom")["attempts"]) for j in jobs] == [
        ("succeeded", 1)] * 8, env.logs()
    assert sorted(x["key"] for x in env.records("custom") if x["phase"] == "done") == sorted(
        f"tick:{n}" for n in range(8))


@pytest.mark.parametrize("recorders", ["{max_attempts: 2}"], indirect=True)
async def test_a_manifest_attempt_limit_of_two_fails_after_two_runs_while_the_host_setting_is_three(
    recorders,
) -> None:
    env = recorders
    await _enable(env)
    flag = env.tmp / "down"
    flag.touch()
    async with env.host() as host:
        event = await host.emit("acme", "tick", {"n": 7, "flag": str(flag)})
        env.worker()  # concurrency 4: both plugins' first runs start the tenant's plugins at once
        job = await _wait_job(host, event)
        custom, ordered = _delivery(job, "custom"), _delivery(job, "ordered")
        assert job["state"] == "failed", env.logs()
        assert custom["state"] == "failed" and custom["attempts"] == 2
        assert ordered["state"] == "failed" and ordered["attempts"] == 3  # ERP_PLUGINS_JOB_ATTEMPTS
        # an administrator's retry gives it its limit's runs again
        flag.unlink()
        assert env.cli("retry", event).returncode == 0
        job = await _wait_job(host, event)
        assert job["state"] == "succeeded", env.logs()
    assert [x["phase"] for x in env.records("custom")] == ["start", "start", "start", "done"]
    assert [x["phase"] for x in env.records("ordered")] == ["start", "start", "start", "start", "done"]


@pytest.mark.parametrize("recorders", ["{max_attempts: 2}"], indirect=True)
async def test_a_queued_delivery_keeps_the_limit_it_was_stored_with_when_the_manifest_changes(
    recorders, site, manifest_text, tmp_path, monkeypatch,
) -> None:
    env = recorders
    await _enable(env)
    flag = env.tmp / "down"
    flag.touch()
    async with env.host() as host:
        event = await host.emit("acme", "tick", {"n": 1, "flag": str(flag)})  # stored with custom's limit 2
        # the worker's machine has the same version installed with a manifest saying 4 (and code that says so)
        other = type(site)(tmp_path / "site2")
        other_code = RECORDER.replace('{"phase": "start"', '{"site": 2, "phase": "start"')
        other.install("erp-recorders", plugins={
            "ordered": (manifest_text("ordered", extra=MANIFEST), other_code),
            "custom": (manifest_text("custom", extra=MANIFEST + "deliveries: {max_attempts: 4}\n"), other_code),
        })
        paths = [p for p in os.environ["PYTHONPATH"].split(os.pathsep) if p != str(site.root)]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(other.root), *paths]))
        env.worker()
        job = await _wait_job(host, event)
        assert (_delivery(job, "custom")["state"], _delivery(job, "custom")["attempts"]) == ("failed", 2), env.logs()
        assert (_delivery(job, "ordered")["state"], _delivery(job, "ordered")["attempts"]) == ("failed", 3)
    assert [x.get("site") for x in env.records("custom")] == [2, 2]  # the worker ran the other site's plugin


def test_a_plugin_with_a_bad_deliveries_value_is_refused_naming_file_and_field(site, manifest_text, tmp_path,
                                                                             ) -> None:
    site.install("erp-bad", plugins={"bad": (manifest_text("bad", extra=MANIFEST + "deliveries: {max_attempts: 0}\n"),
                                              RECORDER)})
    out = subprocess.run([sys.executable, "-m", "erp_plugins_core._cli", "--state", str(tmp_path / "s.db"),
                          "check", "bad"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(site.root)})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "bad: FAILED" in out.stdout, out.stdout
    error = next(line for line in out.stdout.splitlines() if "error:" in line)
    assert "erp_bad/bad/plugin.yaml" in error, error
    assert "deliveries.max_attempts: Input should be greater than or equal to 1" in error, error


@pytest.mark.parametrize(("value", "expected"), [
    ("{max_attempts: 0}", "deliveries.max_attempts: Input should be greater than or equal to 1"),
    ("{max_attempts: 101}", "deliveries.max_attempts: Input should be less than or equal to 100"),
    ('{max_attempts: "3"}', "deliveries.max_attempts: Input should be a valid integer, got str"),
    ("{max_attempts: true}", "deliveries.max_attempts: Input should be a valid integer, got bool"),
    ("{max_attempts: 2.5}", "deliveries.max_attempts: Input should be a valid integer, got float"),
    ("{ordered: nope}", "deliveries.ordered: Input should be a valid boolean, got str"),
    ("{retries: 3}", "deliveries.retries: unknown field; allowed here: ordered, max_attempts"),
    ("[ordered]", "deliveries: Input should be a valid dictionary"),
])
def test_bad_deliveries_values_name_the_file_and_the_field(manifest_text, value: str, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest_text("demo", extra=f"deliveries: {value}\n"), "pkg/demo/plugin.yaml")
    assert str(info.value).startswith(f"pkg/demo/plugin.yaml: {expected}"), str(info.value)


def test_deliveries_defaults_and_values(manifest_text) -> None:
    assert load_manifest(manifest_text("demo"), "m").deliveries.model_dump() == {"ordered": True, "max_attempts": None}
    given = load_manifest(manifest_text("demo", extra="deliveries: {ordered: false, max_attempts: 100}\n"), "m")
    assert given.deliveries.model_dump() == {"ordered": False, "max_attempts": 100}


_V1_DELIVERIES = """CREATE TABLE job_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, work TEXT NOT NULL REFERENCES job_works (id) ON DELETE CASCADE,
    lock TEXT NOT NULL, plugin TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    run_after REAL NOT NULL, lease_owner TEXT, lease_until REAL, result TEXT, error TEXT, error_kind TEXT,
    updated_at REAL NOT NULL)"""


async def test_an_outbox_of_schema_version_1_gains_the_columns_and_its_queued_delivery_stays_ordered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:  # what erp-plugins-core wrote before the manifest settings
        conn.execute("CREATE TABLE job_works (id TEXT PRIMARY KEY, kind TEXT NOT NULL, tenant TEXT NOT NULL, "
                     "hook TEXT NOT NULL, args TEXT NOT NULL, source TEXT, depth INTEGER NOT NULL DEFAULT 0, "
                     "idem_key TEXT, created_at REAL NOT NULL)")
        conn.execute(_V1_DELIVERIES)
        conn.execute("CREATE TABLE job_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO job_schema VALUES (1)")
        old = str(uuid.uuid4())
        conn.execute("INSERT INTO job_works VALUES (?, 'job', 'acme', 'send_email', '{}', NULL, 0, NULL, 1)", (old,))
        conn.execute("INSERT INTO job_deliveries (work, lock, plugin, state, run_after, updated_at) "
                     "VALUES (?, 'acme/ledger', 'ledger', 'queued', 0, 0)", (old,))
    engine = await open_engine(str(path), JobSettings(max_attempts=3, backoff_s=0.0, poll_s=0.02)).open()
    try:
        new = await engine.store_job("acme", "send_email", {}, [Target("ledger", max_attempts=1)],
                                     idempotency_key=None)
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT version FROM job_schema").fetchall() == [(3,)]  # brought to the newest
            rows = conn.execute("SELECT work, ordered, max_attempts FROM job_deliveries ORDER BY id").fetchall()
        assert rows == [(old, 1, None), (new, 1, 1)]
        runs: list[str] = []

        async def executor(unit: Any) -> Outcome:
            runs.append(unit.work)
            return Outcome(False, error="down", error_kind="test")

        stop = asyncio.Event()
        runner = asyncio.create_task(engine.run(executor, stop=stop))
        async with asyncio.timeout(60):
            while [(await engine.get(w)).deliveries[0].state for w in (old, new)] != ["failed", "failed"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        stop.set()
        await runner
        # the old row keeps the host's limit (3) and, ordered, runs out before the new one (limit 1) starts
        assert runs == [old, old, old, new]
    finally:
        await engine.close()
