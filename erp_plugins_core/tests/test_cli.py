"""The `erp-plugins` command line, run as a real subprocess against sample plugins in a site directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_host import BROKEN, BROKEN_MANIFEST, ECHO, ECHO_MANIFEST

SECRET = "sk-cli-planted-secret-5678"


@pytest.fixture
def cli(site, manifest_text, secret_key, tmp_path):
    site.install("erp-echo", plugins={"echo": (manifest_text("echo", extra=ECHO_MANIFEST), ECHO)})
    site.install("erp-broken", plugins={"broken": (manifest_text("broken", extra=BROKEN_MANIFEST), BROKEN)})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site.root), *sys.path[1:]]),
        "ERP_PLUGINS_STATE": str(tmp_path / "cli.db"),
        "ERP_PLUGINS_CACHE_DIR": str(tmp_path / "cache"),
        "ECHO_KEY": SECRET,
    }

    def run(*args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "erp_plugins_core._cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
        if code is not None:
            assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    run.state = tmp_path / "cli.db"  # type: ignore[attr-defined]
    return run


def test_list_json_shape_and_tenant_state(cli) -> None:
    rows = json.loads(cli("list", "--json").stdout)
    echo = next(r for r in rows if r["name"] == "echo")
    assert echo["version"] == "1.0.0" and echo["distribution"] == "erp-echo"
    assert echo["plugin_type"] == "business_logic" and echo["api_version"] == "1.0"
    assert echo["hooks"] == ["ai_request", "ai_stream"] and echo["permissions"] == ["ai.generate", "events.emit"]
    assert echo["valid"] is True and echo["errors"] == []
    cli("enable", "echo", "--tenant", "acme", "--config", "api_key=env:ECHO_KEY", "--trust", "--grant", "ai.generate")
    rows = json.loads(cli("list", "--tenant", "acme", "--json").stdout)
    tenant = next(r for r in rows if r["name"] == "echo")["tenant"]
    assert tenant["enabled"] and tenant["state"] == "active" and tenant["trusted"]
    assert tenant["granted"] == ["ai.generate"]


def test_admin_flow_enable_call_health_config_disable_audit(cli) -> None:
    out = cli("enable", "echo", "--tenant", "acme", "--config", f"api_key={SECRET}", "--config", "prefix=hey",
              "--trust").stdout
    assert "enabled echo for tenant acme" in out
    results = json.loads(cli("call", "ai_request", "--tenant", "acme", "--arg", "prompt=hello", "--json").stdout)
    assert results == [{"plugin": "echo", "success": True, "result": "hey:hello:acme", "error": None,
                        "duration_s": results[0]["duration_s"], "error_kind": None, "usage": {"prompt_tokens": 1}}]
    human = cli("call", "ai_request", "--tenant", "acme", "--args-json", '{"prompt": "a b", "context": {"k": 1}}')
    assert "echo: ok" in human.stdout and "hey:a b:acme" in human.stdout
    health = json.loads(cli("health", "--tenant", "acme", "--json").stdout)
    assert health[0]["plugin"] == "echo" and health[0]["healthy"] is True and "***" in health[0]["detail"]
    shown = json.loads(cli("config", "show", "echo", "--tenant", "acme", "--json").stdout)
    assert shown == {"plugin": "echo", "tenant": "acme", "config": {"api_key": "***", "prefix": "hey"}}
    cli("disable", "echo", "--tenant", "acme")
    cli("call", "ai_request", "--tenant", "acme", "--arg", "prompt=x", code=1)
    audit = json.loads(cli("audit", "--tenant", "acme", "--json").stdout)
    assert [a["action"] for a in audit] == ["enable", "disable"] and audit[0]["user"]
    raw = b"".join(p.read_bytes() for p in cli.state.parent.glob("cli.db*"))
    assert SECRET.encode() not in raw


def test_call_exit_1_when_every_plugin_failed(cli) -> None:
    cli("enable", "broken", "--tenant", "acme", "--config", "mode=raise", "--trust")
    proc = cli("call", "ai_request", "--tenant", "acme", "--arg", "prompt=x", "--json", code=1)
    [result] = json.loads(proc.stdout)
    assert result["success"] is False and result["error"] == "ValueError: boom x"


def test_health_exit_1_when_unhealthy(cli) -> None:
    cli("enable", "broken", "--tenant", "acme", "--config", "mode=raise", "--trust")
    assert "UNHEALTHY: broken on purpose" in cli("health", "--tenant", "acme", code=1).stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["enable", "nope", "--tenant", "acme"], "no plugin named 'nope' is installed"),
        (["call", "make_coffee", "--tenant", "acme"], "no hook named 'make_coffee'"),
        (["enable", "echo", "--tenant", "acme", "--config", "garbage", "--trust"], "KEY=VALUE"),
        (["enable", "echo", "--tenant", "acme", "--config", "colour=red", "--trust"], "colour"),
        (["call", "ai_request", "--tenant", "acme", "--args-json", "{nope"], "--args-json is not valid JSON"),
        (["call", "ai_request", "--tenant", "acme", "--args-json", "[1]"], "--args-json must be a JSON object"),
        (["call", "ai_embedding", "--tenant", "acme", "--arg", "texts=a"], "argument texts must be list of strings"),
        (["enable", "echo", "--tenant", "bad tenant!", "--trust"], "tenant"),
        (["config", "show", "nope", "--tenant", "acme"], "no plugin named 'nope'"),
    ],
)
def test_bad_usage_exits_2_with_one_line(cli, args, expected) -> None:
    proc = cli(*args, code=2)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert expected in proc.stderr
    assert len([line for line in lines if "rror" in line]) == 1


def test_refusals_exit_1(cli) -> None:
    proc = cli("enable", "echo", "--tenant", "acme", "--config", "api_key=k123456", code=1)
    assert "pass --trust" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("enable", "echo", "--tenant", "acme", "--config", "api_key=env:UNSET_VAR_XYZ", "--trust", code=1)
    assert "UNSET_VAR_XYZ is not set" in proc.stderr


def test_check_reports_and_exit_codes(cli, site, manifest_text) -> None:
    reports = json.loads(cli("check", "echo", "--json").stdout)
    assert reports[0]["name"] == "echo" and reports[0]["valid"] is True
    (site.root / "erp_echo" / "echo" / "plugin.py").write_text("import subprocess\n")
    proc = cli("check", "echo", "--json", code=1)
    [report] = json.loads(proc.stdout)
    assert report["valid"] is False
    assert any("erp_echo/echo/plugin.py: changed" in e for e in report["errors"])
    assert any(f["file"].endswith("plugin.py") and f["line"] == 1 for f in report["findings"])


def test_list_does_not_import_plugins_or_sdks(cli) -> None:
    code = ("import sys; from erp_plugins_core._cli import main\n"
            "try: main(['list', '--json'])\nexcept SystemExit: pass\n"
            "bad = [m for m in ('openai', 'ollama', 'googleapiclient', 'erp_echo') if m in sys.modules]\n"
            "print('IMPORTED', bad, file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[1:])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "IMPORTED []" in proc.stderr


SLOW = """
import asyncio, os, sys
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    async def initialize(self, config, context):
        print("INITIALIZING", flush=True)
        sys.stdout.flush()
        await asyncio.sleep(30)
        return True
    def answer(self, prompt, context):
        return "slow"
"""


def test_sigkill_in_the_middle_of_enable_leaves_a_consistent_store(cli, site, manifest_text, tmp_path) -> None:
    import signal
    import sqlite3
    import time

    extra = "security: {sandbox: false}\nresources: {timeout: 60}\npermissions: [ai.generate]\n"
    extra += "hooks: [{name: ai_request, method: answer}]\n"
    site.install("erp-slow", plugins={"slow_start": (manifest_text("slow_start", extra=extra), SLOW)})
    cli("enable", "echo", "--tenant", "acme", "--config", "api_key=env:ECHO_KEY", "--trust")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site.root), *sys.path[1:]]),
           "ERP_PLUGINS_STATE": str(cli.state), "ERP_PLUGINS_CACHE_DIR": str(tmp_path / "cache"),
           "ECHO_KEY": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "erp_plugins_core._cli", "enable", "slow_start", "--tenant", "acme",
                             "--trust"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "INITIALIZING"  # inside enable, between load and activate
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(cli.state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = {r["name"]: r["tenant"] for r in json.loads(cli("list", "--tenant", "acme", "--json").stdout)}
    assert rows["slow_start"]["enabled"] is False and rows["echo"]["state"] == "active"
    start = time.monotonic()
    cli("disable", "echo", "--tenant", "acme")  # the store is not left locked
    assert time.monotonic() - start < 20


def test_lock_refuses_a_distribution_that_drifted(cli, site, manifest_text) -> None:
    cli("lock")
    cli("enable", "echo", "--tenant", "acme", "--config", "api_key=env:ECHO_KEY", "--trust")
    site.install("erp-late", plugins={"late": (manifest_text("late", extra="security: {sandbox: false}\n"),
                                               "from erp_plugins_core import PluginInterface\n"
                                               "class Plugin(PluginInterface):\n    pass\n")})
    proc = cli("enable", "late", "--tenant", "acme", "--trust", code=1)
    assert "refused by the lock" in proc.stderr and "erp-plugins lock" in proc.stderr
    cli("lock", "--remove")
    cli("enable", "late", "--tenant", "acme", "--trust")
