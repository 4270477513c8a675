"""Several `erp-plugins serve` replicas on one state (SQLite file or PostgreSQL), as behind a load balancer:
what one replica (or the CLI) changes, the other applies; a revoked token is refused by every replica."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from serverkit import CLI, Server, bearer, cli, free_port, make_token, server_env, shared_site

pytestmark = pytest.mark.timeout(300)


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def answers(url: str, token: str) -> list[str]:
    r = httpx.post(f"{url}/v1/tenants/acme/hooks/ai_request", headers=bearer(token), json={"prompt": "p"}, timeout=30)
    assert r.status_code == 200, r.text
    return [x["result"] for x in r.json()]


def test_two_replicas_follow_one_state(state_location: str, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    env = server_env(shared_site(), tmp_path)
    admin = make_token(env, state_location, "--tenant", "acme", "--scope", "admin")["token"]
    call = make_token(env, state_location, "--tenant", "acme")
    a = Server(env, state_location, tmp_path / "a.log")
    b = Server(env, state_location, tmp_path / "b.log")
    try:
        r = httpx.put(f"{a.url}/v1/tenants/acme/plugins/web_tool", headers=bearer(admin), timeout=60, json={
            "config": {"api_key": "env:WEB_TOOL_KEY", "greeting": "One"}, "trust": True})
        assert r.status_code == 200, r.text
        assert answers(b.url, call["token"]) == ["One p (fast)"]  # B starts the tenant from the shared state
        r = httpx.put(f"{b.url}/v1/tenants/acme/plugins/web_tool", headers=bearer(admin), timeout=60, json={
            "config": {"api_key": "env:WEB_TOOL_KEY", "greeting": "Two"}, "trust": True})
        assert r.status_code == 200, r.text
        eventually(lambda: answers(a.url, call["token"]) == ["Two p (fast)"], "A did not apply B's new config")
        cli(env, state_location, "disable", "web_tool", "--tenant", "acme")
        for server in (a, b):
            eventually(lambda s=server: answers(s.url, call["token"]) == [], "a replica still calls a disabled plugin")
        cli(env, state_location, "token", "revoke", call["id"])
        for server in (a, b):
            eventually(lambda s=server: httpx.get(f"{s.url}/v1/plugins", headers=bearer(call["token"])).status_code
                       == 401, "a replica still accepts a revoked token")
        for server in (a, b):
            assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    finally:
        a.stop()
        b.stop()
    for server in (a, b):
        assert "Traceback" not in server.log() and admin not in server.log()


def test_two_workers_serve_one_port(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    env = server_env(shared_site(), tmp_path)
    state = str(tmp_path / "state.db")
    admin = make_token(env, state, "--tenant", "acme", "--scope", "admin")["token"]
    server = Server(env, state, tmp_path / "serve.log", "--workers", "2")
    try:
        r = httpx.put(f"{server.url}/v1/tenants/acme/plugins/web_tool", headers=bearer(admin), timeout=60, json={
            "config": {"api_key": "env:WEB_TOOL_KEY"}, "trust": True})
        assert r.status_code == 200, r.text
        for _ in range(3):
            eventually(lambda: answers(server.url, admin) == ["Hello p (fast)"], "a worker did not serve the call")
        with httpx.Client(base_url=server.url, headers=bearer(admin), timeout=30) as c:
            assert all(c.get("/v1/tenants/acme/health").status_code == 200 for _ in range(20))
    finally:
        server.stop()
    assert server.log().count("msg=ready") == 2  # each worker opened its own host


def test_a_non_loopback_address_is_served_with_a_warning(tmp_path: Path) -> None:
    port = free_port()
    env = server_env(shared_site(), tmp_path)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLI, "--state", str(tmp_path / "s.db"), "serve", "--bind", f"0.0.0.0:{port}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            eventually(lambda: b"msg=ready" in log.read_bytes() or proc.poll() is not None, "serve did not start")
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    text = log.read_text()
    assert "level=warning" in text and "non-loopback address without TLS" in text
    assert sys.executable  # the CLI ran with this interpreter
