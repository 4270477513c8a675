"""Every process follows the shared state: changes made by the CLI or another host apply to the next call.

Real separate processes against one state, on SQLite and PostgreSQL (`state_location`): this test process
runs a PluginHost, `erp-plugins` runs as a subprocess, and a second host runs in `hostproc.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from erp_plugins_core import PluginHost

HERE = Path(__file__).parent

ECHO = """
import json, os
from erp_plugins_core import PluginInterface

def note(config, what):
    with open(config["journal"], "a") as f:
        f.write(json.dumps([os.getpid(), what, config["prefix"]]) + "\\n")

class Plugin(PluginInterface):
    async def initialize(self, config, context):
        await super().initialize(config, context)
        note(config, "initialize")
        return True
    async def deactivate(self):
        note(self.config, "deactivate")
        return True
    def answer(self, prompt, context):
        return f"{self.config['prefix']}:{prompt}"
    async def on_event(self, event_type, data):
        note(self.config, "event:" + event_type)
"""
ECHO_MANIFEST = """
security: {sandbox: false}
resources: {timeout: 5}
permissions: [ai.generate]
config_schema:
  type: object
  properties:
    prefix: {type: string, default: echo}
    journal: {type: string}
hooks:
  - {name: ai_request, method: answer}
  - {name: on_event, method: on_event}
"""


@pytest.fixture
def world(site, manifest_text, secret_key, tmp_path, state_location) -> dict[str, Any]:
    """Two trusted plugins installed, the environment child processes need, a journal file."""
    return make_world(site, manifest_text, secret_key, tmp_path, state_location)


def make_world(site: Any, manifest_text: Any, secret_key: str, tmp_path: Path, state_location: str) -> dict[str, Any]:
    site.install("erp-echo", plugins={"echo": (manifest_text("echo", extra=ECHO_MANIFEST), ECHO)})
    site.install("erp-other", plugins={"other": (manifest_text("other", extra=ECHO_MANIFEST), ECHO)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site.root), str(HERE), *sys.path[1:]]),
           "ERP_PLUGINS_STATE": state_location, "ERP_PLUGINS_CACHE_DIR": str(tmp_path / "cache"),
           "ERP_PLUGINS_SECRET_KEY": secret_key}
    world = {"location": state_location, "env": env, "journal": str(tmp_path / "journal.jsonl")}
    cli(world, "check", "--accept-findings", "echo", "other")  # they write a journal file: a scan finding
    return world


def cli(world: dict[str, Any], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "erp_plugins_core._cli", *args], env=world["env"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    return proc


async def acli(world: dict[str, Any], *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """`cli` while this process's event loop keeps running, as it does while another process changes the state."""
    return await asyncio.to_thread(cli, world, *args, code=code)


def journal(world: dict[str, Any]) -> list[list[Any]]:
    path = Path(world["journal"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class OtherHost:
    """A PluginHost in another process (hostproc.py), one JSON command per line."""

    def __init__(self, world: dict[str, Any], name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "hostproc.py"), world["location"], name],
                                     env=world["env"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.ask_raw() == "ready"

    def ask_raw(self) -> Any:
        line = self.proc.stdout.readline()
        assert line, "the other host died"
        return json.loads(line)

    def ask(self, *cmd: Any) -> Any:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self.ask_raw()
        assert "ok" in answer, answer
        return answer["ok"]

    async def aask(self, *cmd: Any) -> Any:
        """`ask` while this process's event loop keeps running."""
        return await asyncio.to_thread(self.ask, *cmd)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


async def eventually(check: Any, seconds: float = 20.0) -> None:
    """Wait for something a background task does (not a timing assertion: the bound is generous)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "did not happen"
        await asyncio.sleep(0.02)


async def sees(world: dict[str, Any], call: Any, expected: Any) -> None:
    """The next call after another process's change sees it.

    SQLite: the very next call (PRAGMA data_version is checked on the call path). PostgreSQL: LISTEN/NOTIFY
    brings it within the contract's second, asynchronously; calls are repeated until they see it, for at most
    10 s so that a loaded machine does not fail the test (the figures are in bench/bench_state.py).
    """
    got = await call()
    if world["location"].startswith("postgresql"):
        deadline = asyncio.get_running_loop().time() + 10
        while got != expected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
            got = await call()
    assert got == expected


async def answers(host: PluginHost, tenant: str = "acme") -> list[tuple[str, bool, Any]]:
    return [(r.plugin, r.success, r.result) for r in await host.call("ai_request", tenant=tenant, prompt="hi")]


async def test_cli_changes_apply_to_an_open_hosts_next_call(world) -> None:
    async with PluginHost(world["location"], health_loop=False) as host:
        await host.enable("echo", tenant="acme", config={"journal": world["journal"]}, trust=True)
        assert await answers(host) == [("echo", True, "echo:hi")]

        # config changed by another process: the next call runs a new instance with the new config
        await acli(world, "enable", "echo", "--tenant", "acme", "--trust", "--config", "prefix=v2",
            "--config", f"journal={world['journal']}")
        await sees(world, lambda: answers(host), [("echo", True, "v2:hi")])
        await eventually(lambda: ["deactivate", "echo"] in [e[1:] for e in journal(world) if e[0] == os.getpid()])

        # a grant revoked elsewhere is enforced from the next call
        await acli(world, "enable", "echo", "--tenant", "acme", "--trust", "--grant", "ai.generate",
            "--config", "prefix=v3", "--config", f"journal={world['journal']}")
        await sees(world, lambda: answers(host), [("echo", True, "v3:hi")])

        # disabled elsewhere: no new call reaches it, and this host deactivates its instance
        await acli(world, "disable", "echo", "--tenant", "acme")
        await sees(world, lambda: answers(host), [])
        assert await host.call("on_event", tenant="acme", event_type="x", data={}) == []

        # enabled elsewhere: this host starts it for the next call
        await acli(world, "enable", "other", "--tenant", "acme", "--trust", "--config", "prefix=o",
            "--config", f"journal={world['journal']}")
        await sees(world, lambda: answers(host), [("other", True, "o:hi")])


async def test_priority_changed_elsewhere_reorders_first_without_a_restart(world) -> None:
    async with PluginHost(world["location"], health_loop=False) as host:
        cfg = {"journal": world["journal"]}
        await host.enable("echo", tenant="acme", config={**cfg, "prefix": "e"}, trust=True, priority=1)
        await host.enable("other", tenant="acme", config={**cfg, "prefix": "o"}, trust=True, priority=2)
        assert await host.first("ai_request", tenant="acme", prompt="p") == "e:p"
        starts = len(journal(world))
        await acli(world, "enable", "other", "--tenant", "acme", "--trust", "--priority", "0", "--config", "prefix=o",
            "--config", f"journal={world['journal']}")
        await sees(world, lambda: host.first("ai_request", tenant="acme", prompt="p"), "o:p")
        # a new priority re-orders dispatch; no instance of this host is restarted for it
        restarted = [e for e in journal(world)[starts:] if e[1] == "initialize" and e[0] == os.getpid()]
        assert restarted == []


async def test_two_hosts_follow_each_other(world) -> None:
    other = OtherHost(world, "host-b")
    try:
        async with PluginHost(world["location"], health_loop=False, host_name="host-a") as host:
            await host.enable("echo", tenant="acme", config={"journal": world["journal"], "prefix": "a"},
                              trust=True)
            assert await other.aask("call", "ai_request", "acme", {"prompt": "x"}) == [["echo", True, "a:x", None]]
            await other.aask("enable", "echo", "acme", {"journal": world["journal"], "prefix": "b"}, None)
            await sees(world, lambda: answers(host), [("echo", True, "b:hi")])
            await other.aask("disable", "echo", "acme")
            await sees(world, lambda: answers(host), [])
            assert await other.aask("call", "ai_request", "acme", {"prompt": "x"}) == []
    finally:
        other.close()


async def test_each_host_records_its_own_runtime_state_and_gone_hosts_expire(world, monkeypatch) -> None:
    other = OtherHost(world, "host-b")
    try:
        async with PluginHost(world["location"], health_loop=False, host_name="host-a") as host:
            await host.enable("echo", tenant="acme", config={"journal": world["journal"]}, trust=True)
            await other.aask("call", "ai_request", "acme", {"prompt": "x"})  # host-b starts its own instance
            rows = {(r.host, r.plugin): r.state for r in await host._db(host.store.runtime, "acme")}
            assert rows == {("host-a", "echo"): "active", ("host-b", "echo"): "active"}
            [report] = await host.health("acme")
            assert report.to_json()["host"] == "host-a" and report.healthy
            health = json.loads((await acli(world, "health", "--tenant", "acme", "--json")).stdout)
            assert health[0]["healthy"] and health[0]["host"].rsplit(":", 1)[1].isdigit()
            assert health[0]["host"] not in ("host-a", "host-b")  # the CLI's own host, hostname:pid

            other.proc.send_signal(signal.SIGKILL)  # gone without saying so: its rows expire
            other.proc.wait(timeout=10)
            await host._db(host.store.heartbeat, "host-a", ttl=0.0001)
            rows = {(r.host, r.plugin) for r in await host._db(host.store.runtime, "acme")}
            assert ("host-b", "echo") not in rows
    finally:
        other.close()


async def test_a_call_made_while_enabling_does_not_wait_for_itself(world, site, manifest_text) -> None:
    """A plugin whose initialize emits an event reaches the host's call path from inside enable."""
    code = ECHO.replace('note(config, "initialize")', 'note(config, "initialize")\n'
                        '        await context.emit_event("started", {})')
    site.install("erp-emitter", plugins={"emitter": (manifest_text("emitter", extra=ECHO_MANIFEST.replace(
        "permissions: [ai.generate]", "permissions: [ai.generate, events.emit]")), code)})
    cli(world, "check", "--accept-findings", "emitter")
    async with PluginHost(world["location"], health_loop=False) as host:
        await host.enable("echo", tenant="acme", config={"journal": world["journal"]}, trust=True)
        await acli(world, "enable", "other", "--tenant", "acme", "--trust", "--config", f"journal={world['journal']}")
        await host.enable("emitter", tenant="acme", config={"journal": world["journal"]}, trust=True)
        assert sorted(p for p, ok, _ in await answers(host)) == ["echo", "emitter", "other"]



def _prune_whole_feed(location: str) -> None:
    """Do what pruning does to a host that fell behind: its changes are gone, the feed says so."""
    if location.startswith("postgresql"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as db:
            db.execute("DELETE FROM erp_plugins.changes")
            db.execute("UPDATE erp_plugins.changes_pruned SET through_seq = 1000000")
    else:
        import sqlite3

        with sqlite3.connect(location) as db:
            db.execute("DELETE FROM changes")
            db.execute("UPDATE changes_pruned SET through_seq = 1000000")


async def test_a_host_behind_a_pruned_feed_compares_everything(world) -> None:
    async with PluginHost(world["location"], health_loop=False) as host:
        await host.enable("echo", tenant="acme", config={"journal": world["journal"], "prefix": "a"}, trust=True)
        assert await answers(host) == [("echo", True, "a:hi")]
        await acli(world, "enable", "echo", "--tenant", "acme", "--trust", "--config", "prefix=b",
            "--config", f"journal={world['journal']}")
        await acli(world, "enable", "other", "--tenant", "acme", "--trust", "--config", "prefix=o",
            "--config", f"journal={world['journal']}")
        _prune_whole_feed(world["location"])
        async def both() -> list[Any]:
            return sorted(await answers(host))

        await sees(world, both, [("echo", True, "b:hi"), ("other", True, "o:hi")])


async def test_a_lost_database_leaves_active_instances_answering_and_the_host_recovers(
        pg_cluster, pg_url, site, manifest_text, secret_key, tmp_path, caplog) -> None:
    world = make_world(site, manifest_text, secret_key, tmp_path, pg_url)
    async with PluginHost(pg_url, health_loop=False) as host:
        await host.enable("echo", tenant="acme", config={"journal": world["journal"], "prefix": "a"}, trust=True)
        await asyncio.to_thread(pg_cluster.stop)
        try:
            for _ in range(3):  # the follower finds the database gone, says so once, and the calls go on
                assert await answers(host) == [("echo", True, "a:hi")]
                await asyncio.sleep(1.1)  # past the watch's fallback poll, so each call looks at the feed
        finally:
            await asyncio.to_thread(pg_cluster.start)
        assert "state store unreachable" in caplog.text and "password" not in caplog.text.lower()
        # back: a change made by another process now reaches this host by itself
        await acli(world, "enable", "echo", "--tenant", "acme", "--trust", "--config", "prefix=b",
            "--config", f"journal={world['journal']}")
        await sees(world, lambda: answers(host), [("echo", True, "b:hi")])
