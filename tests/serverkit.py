"""Helpers for the server's end-to-end tests: the sample plugins installed in a site dir, and a real
`erp-plugins serve` process on a free loopback port with its log captured."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "server_samples"
CLI = [sys.executable, "-m", "erp_plugins_core._cli"]
ARTIFACTS = ROOT / "tests" / "artifacts"


def build_site(work: Path) -> Path:
    """The sample plugins built as a wheel and installed (no deps) into `work/site`.

    Built from a copy: setuptools writes build/ and *.egg-info into the source folder, and parallel test
    processes building the same folder at once break each other's builds.
    """
    wheels = work / "wheels"
    source = work / "server_samples"
    shutil.copytree(SAMPLES, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(wheels), str(source)], check=True, timeout=300,
                   cwd=work)
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(site), *map(str, wheels.glob("*.whl"))],
                   check=True, timeout=300)
    return site


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `erp-plugins serve` process; `env` is shared with `cli()` so both see the same state and key."""

    def __init__(self, env: dict[str, str], state: str, log_path: Path, *args: str) -> None:
        self.env = env
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [*CLI, "--state", state, "serve", "--bind", f"127.0.0.1:{self.port}", *args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not become ready: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in (log := self.log()):
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the server log:\n{self.log()[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def cli(env: dict[str, str], state: str, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, "--state", state, *args], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if code is not None:
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def make_token(env: dict[str, str], state: str, *args: str) -> dict[str, Any]:
    """`token create ... --json` (the token is in the returned dict's `token`)."""
    return json.loads(cli(env, state, "token", "create", *args, "--json").stdout)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- fixtures (imported by the server test modules) -------------------------------------------------------

from cryptography.fernet import Fernet  # noqa: E402

API_KEY = "sk-web-tool-secret-7781"


_SITE: list[Path] = []


def shared_site() -> Path:
    """The sample plugins' site dir, built once per test process (each server test module uses it)."""
    if not _SITE:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="erp-server-samples-"))
        work.chmod(0o755)
        _SITE.append(build_site(work))
    return _SITE[0]


def server_env(site: Path, home: Path, **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ERP_PLUGINS", "PYTHONPATH"))}
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o755)
    return {**base, "PYTHONPATH": str(site), "ERP_PLUGINS_SECRET_KEY": Fernet.generate_key().decode(),
            "ERP_PLUGINS_CACHE_DIR": str(home / "cache"), "ERP_PLUGINS_DATA_DIR": str(data),
            "WEB_TOOL_KEY": API_KEY, **more}


class Fleet:
    """A running server with tenants acme and globex, and tokens of every kind."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = server.url
        self.env = server.env
        self.state = server.state
        self.tokens: dict[str, dict[str, Any]] = {}

    def token(self, name: str) -> str:
        return str(self.tokens[name]["token"])

    def h(self, name: str) -> dict[str, str]:
        return bearer(self.token(name))


def start_fleet(tmp: Path, site: Path, *serve_args: str, sandboxed: bool = True,
                env: dict[str, str] | None = None) -> Fleet:
    """`env`: more environment variables for the server and the CLI (job settings, plugin folders)."""
    env = server_env(site, tmp, **(env or {}))
    state = str(tmp / "state.db")
    fleet = Fleet(Server(env, state, tmp / "serve.log", *serve_args))
    for name, args in {
        "acme_admin": ("--tenant", "acme", "--scope", "admin"),
        "acme_call": ("--tenant", "acme"),
        "globex_admin": ("--tenant", "globex", "--scope", "admin"),
        "globex_call": ("--tenant", "globex"),
        "platform": ("--platform", "--scope", "admin"),
        "platform_call": ("--platform",),
    }.items():
        fleet.tokens[name] = make_token(env, state, *args)
    with httpx.Client(base_url=fleet.url, timeout=60) as c:
        for tenant in ("acme", "globex"):
            r = c.put(f"/v1/tenants/{tenant}/plugins/web_tool", headers=fleet.h(f"{tenant}_admin"),
                      json={"config": {"api_key": "env:WEB_TOOL_KEY", "greeting": f"Hi from {tenant}"},
                            "trust": True, "priority": 10})
            assert r.status_code == 200, r.text
        if sandboxed:
            r = c.put("/v1/tenants/acme/plugins/boxed_stream", headers=fleet.h("acme_admin"), json={"priority": 5})
            assert r.status_code == 200, r.text
    return fleet
