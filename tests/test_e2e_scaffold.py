"""End to end: a third-party author's path from `erp-plugins new` to a hook called through the CLI.

Builds the core's wheel, creates a fresh venv and installs it there (its dependencies from the package index or
pip's cache), scaffolds two plugins with that venv's `erp-plugins new` (so the templates must ship in the
wheel), builds their wheels, installs them with their `test` extra, runs their generated tests with the venv's
pytest, then `check`, `list --json`, `enable` and `call --json` through the venv's CLI.

Sandbox: the plugins run sandboxed (their manifests say `security.sandbox: true`) when the venv's core reports
the sandbox available; otherwise, and only then, the test sets ERP_PLUGINS_UNSAFE_NO_SANDBOX=1 and says so in
its output (`-rP`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "erp_plugins_core"
TENANT = "acme"


def run(argv: list[str | Path], env: dict[str, str], cwd: Path | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def test_scaffold_build_install_test_enable_call(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERP_PLUGINS_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "ERP_PLUGINS_SECRET_KEY": Fernet.generate_key().decode(),  # never the user's key file
        "ERP_PLUGINS_CACHE_DIR": str(tmp_path / "cache"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    })
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    py, cli = venv / "bin" / "python", venv / "bin" / "erp-plugins"

    # The core's wheel and the venv, concurrently. The wheel is built from a clean copy of the source: setuptools
    # never empties an in-tree build/ folder, so a module deleted from src/ could still ship from there.
    source = tmp_path / "core-src"
    shutil.copytree(CORE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    with ThreadPoolExecutor(2) as pool:
        core_build = pool.submit(run, [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, source],
                                 env)
        pool.submit(run, [sys.executable, "-m", "venv", venv], env).result()
        core_build.result()
    [core_wheel] = wheels.glob("erp_plugins_core-*.whl")
    run([py, "-m", "pip", "install", "-q", core_wheel], env, timeout=300)

    # Scaffold with the installed core: the templates come from its wheel.
    work = tmp_path / "work"
    run([cli, "new", "invoice_ocr", "--type", "business_logic", "--dir", work], env)
    run([cli, "new", "echo_ai", "--type", "ai_provider", "--dir", work], env)
    refused = run([cli, "new", "echo_ai", "--dir", work], env, check=False)
    assert refused.returncode == 1 and "already exists" in refused.stderr

    with ThreadPoolExecutor(2) as pool:
        builds = [pool.submit(run, [py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, work / n], env)
                  for n in ("invoice_ocr", "echo_ai")]
        for b in builds:
            b.result()
    plugin_wheels = sorted(wheels.glob("erp_plugin_*.whl"))
    assert [w.name.split("-")[0] for w in plugin_wheels] == ["erp_plugin_echo_ai", "erp_plugin_invoice_ocr"]
    run([py, "-m", "pip", "install", "-q", *(f"{w}[test]" for w in plugin_wheels)], env, timeout=300)

    why = run([py, "-c", "from erp_plugins_core._sandbox import sandbox_available; print(sandbox_available() or '')"],
              env).stdout.strip()
    if why:
        print(f"sandbox unavailable in this environment ({why}): running the plugins with "
              "ERP_PLUGINS_UNSAFE_NO_SANDBOX=1")
        env["ERP_PLUGINS_UNSAFE_NO_SANDBOX"] = "1"
    else:
        print("plugins run in the sandbox")

    # The generated tests, with the venv's pytest and the fixtures of the installed core.
    for name in ("invoice_ocr", "echo_ai"):
        done = run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider"], env, cwd=work / name, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert " passed" in done.stdout and "failed" not in done.stdout and "skipped" not in done.stdout

    state = tmp_path / "state.db"
    checked = json.loads(run([cli, "--state", state, "check", "invoice_ocr", "echo_ai", "--json"], env).stdout)
    assert sorted((c["name"], c["valid"], c["errors"]) for c in checked) == [("echo_ai", True, []),
                                                                            ("invoice_ocr", True, [])]

    listed = {p["name"]: p for p in json.loads(run([cli, "--state", state, "list", "--json"], env).stdout)}
    assert set(listed) == {"invoice_ocr", "echo_ai"}  # a fresh venv: only these
    assert listed["echo_ai"]["distribution"] == "erp-plugin-echo-ai" and listed["echo_ai"]["version"] == "0.1.0"
    assert listed["echo_ai"]["hooks"] == ["ai_request", "ai_stream", "ai_embedding"]
    assert listed["invoice_ocr"]["plugin_type"] == "business_logic" and listed["invoice_ocr"]["valid"] is True

    run([cli, "--state", state, "enable", "echo_ai", "--tenant", TENANT, "--config", "prefix=Echo: "], env)
    run([cli, "--state", state, "enable", "invoice_ocr", "--tenant", TENANT], env)
    called = json.loads(run([cli, "--state", state, "call", "ai_request", "--tenant", TENANT, "--arg",
                             "prompt=hello from the CLI", "--json"], env).stdout)
    assert [(r["plugin"], r["success"], r["result"], r["error"]) for r in called] == [
        ("echo_ai", True, "Echo: hello from the CLI", None)]
    event = json.loads(run([cli, "--state", state, "call", "on_event", "--tenant", TENANT, "--arg",
                            "event_type=invoice.created", "--args-json", '{"data": {"invoice_id": 42}}', "--json"],
                           env).stdout)
    assert [(r["plugin"], r["success"], r["error"]) for r in event] == [("invoice_ocr", True, None)]
    health = json.loads(run([cli, "--state", state, "health", "--tenant", TENANT, "--json"], env).stdout)
    assert {(h["plugin"], h["healthy"]) for h in health} == {("echo_ai", True), ("invoice_ocr", True)}
