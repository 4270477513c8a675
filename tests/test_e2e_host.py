"""End to end: the four distributions and sample plugins installed from wheels into a fresh environment."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def by_name(rows: object) -> dict[str, dict]:
    assert isinstance(rows, list)
    return {r["name"]: r for r in rows}


def test_list_shows_first_party_plugins_without_importing_sdks(e2e_env) -> None:
    rows = by_name(e2e_env.cli_json("list"))
    openai = rows["openai_provider"]
    assert openai["distribution"] == "erp-plugin-openai" and openai["version"] == "0.1.0"
    assert openai["plugin_type"] == "ai_provider" and openai["valid"] is True
    assert openai["hooks"] == ["ai_request", "ai_stream", "ai_embedding"]
    assert set(openai["permissions"]) == {"ai.generate", "ai.embeddings"}
    assert rows["local_llm_provider"]["valid"] and rows["google_services"]["valid"]
    code = (
        "import sys\nfrom erp_plugins_core._cli import main\n"
        "try:\n    main(['list', '--json'])\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', [m for m in ('openai', 'ollama', 'googleapiclient', 'httpx') if m in sys.modules], "
        "file=sys.stderr)"
    )
    assert "IMPORTED []" in e2e_env.script(code).stderr


def test_broken_plugins_are_listed_invalid_and_never_stop_the_others(e2e_env) -> None:
    rows = by_name(e2e_env.cli_json("list"))
    broken = " ".join(rows["broken_manifest"]["errors"])
    assert "erp_samples/broken_manifest/plugin.yaml" in broken
    assert "plugin_type: unknown plugin_type 'robot'; allowed: ai_provider" in broken
    assert "resources.memory_limit" in broken
    assert "pip install 'definitely-not-installed-dist>=2'" in rows["needs_missing"]["errors"][0]
    for member in ("cycle_a", "cycle_b"):
        assert "dependency cycle among plugins: cycle_a -> cycle_b -> cycle_a" in rows[member]["errors"][0]
    assert rows["greeter"]["valid"] and rows["flaky"]["valid"]


def test_check_validates_installed_files_and_exit_codes(e2e_env) -> None:
    [report] = e2e_env.cli_json("check", "greeter")
    assert report == {"name": "greeter", "valid": True, "errors": [], "findings": [], "warnings": []}
    reports = by_name(e2e_env.cli_json("check", code=1))
    assert reports["openai_provider"]["valid"] and not reports["broken_manifest"]["valid"]


def test_tampered_installed_file_is_detected(e2e_env) -> None:
    site = e2e_env.script("import erp_samples, os; print(os.path.dirname(erp_samples.__file__))").stdout.strip()
    path = f"{site}/flaky/plugin.py"
    original = open(path).read()
    try:
        with open(path, "a") as fh:
            fh.write("\nimport subprocess  # planted\n")
        [report] = e2e_env.cli_json("check", "flaky", code=1)
        assert any("erp_samples/flaky/plugin.py: changed after installation" in e for e in report["errors"])
        assert any(f["rule"] and f["file"].endswith("flaky/plugin.py") for f in report["findings"])
        proc = e2e_env.cli("enable", "flaky", "--tenant", "tamper", "--trust", code=1)
        assert "installed files differ from RECORD" in proc.stderr
    finally:
        with open(path, "w") as fh:
            fh.write(original)


def test_plugin_host_api_one_result_per_plugin_despite_raise_and_hang(e2e_env) -> None:
    code = """
import asyncio, json
from erp_plugins_core import PluginHost

async def main():
    async with PluginHost(health_loop=False) as host:
        await host.enable("greeter", tenant="acme", config={"greeting": "Hi"}, trust=True)
        await host.enable("flaky", tenant="acme", trust=True)
        out = {}
        for prompt in ("Ada", "raise", "hang"):
            results = await host.call("ai_request", tenant="acme", prompt=prompt, context={})
            out[prompt] = {r.plugin: [r.success, r.result, r.error, r.error_kind] for r in results}
        out["first"] = await host.first("ai_request", tenant="acme", prompt="Bob", context={})
        out["other_tenant"] = len(await host.call("ai_request", tenant="globex", prompt="x", context={}))
    print(json.dumps(out))

asyncio.run(main())
"""
    out = json.loads(e2e_env.script(code).stdout.splitlines()[-1])
    assert out["Ada"] == {"greeter": [True, "Hi, Ada!", None, None], "flaky": [True, "flaky:Ada", None, None]}
    assert out["raise"]["greeter"][0] is True
    assert out["raise"]["flaky"] == [False, None, "RuntimeError: flaky failed on purpose", "exception"]
    assert out["hang"]["flaky"][3] == "timeout" and out["hang"]["greeter"][1] == "Hi, hang!"
    assert out["first"] in {"Hi, Bob!", "flaky:Bob"}
    assert out["other_tenant"] == 0
    # the state persisted: a later process (the CLI) brings the tenant's plugins back
    results = e2e_env.cli_json("call", "ai_request", "--tenant", "acme", "--arg", "prompt=Eve")
    assert {r["plugin"]: r["result"] for r in results} == {"greeter": "Hi, Eve!", "flaky": "flaky:Eve"}


def test_sandboxed_plugin_runs_in_a_worker_under_its_own_uid(e2e_env) -> None:
    e2e_env.cli("enable", "boxed_echo", "--tenant", "box")
    [r] = e2e_env.cli_json("call", "ai_request", "--tenant", "box", "--arg", "prompt=hello")
    assert r["success"] and r["result"] == "boxed:hello"
    [who] = e2e_env.cli_json("call", "ai_request", "--tenant", "box", "--arg", "prompt=whoami")
    uid = int(who["result"].split()[0].removeprefix("uid="))
    assert uid != 0  # an unprivileged uid of its own, not the host's root
    [s] = e2e_env.cli_json("call", "ai_stream", "--tenant", "box", "--arg", "prompt=a b c")
    assert s["result"] == "a b c "
    [crash] = e2e_env.cli_json("call", "ai_request", "--tenant", "box", "--arg", "prompt=crash", code=1)
    assert crash["success"] is False and "exit code 7" in crash["error"]
    [again] = e2e_env.cli_json("call", "ai_request", "--tenant", "box", "--arg", "prompt=back")
    assert again["result"] == "boxed:back"  # restarted on the next call
