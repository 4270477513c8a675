"""Events and background jobs through `erp-plugins serve`: a real server process (SQLite state, and PostgreSQL
state with a real `erp-plugins worker` process, since a server's host delivers only on SQLite), real HTTP, a
trusted folder plugin that fails a chosen number of runs; listings compared with the CLI's `--json`; tenant
isolation on every route; the console's "Events and jobs" page in a real browser (Debian's chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serverkit import ARTIFACTS, CLI, Fleet, Server, cli, make_token, server_env, shared_site

pytestmark = pytest.mark.timeout(300)

#: A trusted folder plugin: books events and runs workflow steps; `fail_first: N` in the data or payload makes
#: its first N runs of that event or step fail (counted in the one process that delivers), so a failure is
#: final after ERP_PLUGINS_JOB_ATTEMPTS runs and a retry then succeeds.
LEDGER_YAML = """\
name: ledger
version: "1.0.0"
description: Books events and runs workflow steps for the server's job tests
plugin_type: business_logic
api_version: "1.0"
main_file: plugin.py
main_class: Ledger
permissions: [workflow.execute]
hooks:
  - {name: on_event, method: book}
  - {name: workflow_step, method: step}
security: {sandbox: false}
"""
LEDGER_PY = """\
from erp_plugins_core import PluginInterface


class Ledger(PluginInterface):
    def _run(self, key, fail_first):
        runs = self.__dict__.setdefault("runs", {})
        runs[key] = runs.get(key, 0) + 1
        if runs[key] <= fail_first:
            raise RuntimeError(f"ledger is down (run {runs[key]})")
        return runs[key]

    async def book(self, event_type, data):
        runs = self._run((event_type, data.get("n")), data.get("fail_first", 0))
        return {"runs": runs, "user": dict(self.context.user_context or {})}

    async def step(self, workflow, step, payload):
        runs = self._run((workflow, step), payload.get("fail_first", 0))
        return {"workflow": workflow, "step": step, "tenant": self.context.tenant_id, "runs": runs, **payload}
"""
FAST = {"ERP_PLUGINS_JOB_ATTEMPTS": "2", "ERP_PLUGINS_JOB_BACKOFF": "0.05", "ERP_PLUGINS_JOB_POLL": "0.1",
        "ERP_PLUGINS_JOB_LEASE": "2"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ARTIFACTS / "console"


class JobsFleet(Fleet):
    """A server (and on PostgreSQL a worker) with the ledger enabled for acme and globex."""

    worker: subprocess.Popen[bytes] | None = None
    backend = "sqlite"

    def logs(self) -> str:
        worker = self.server.log_path.with_name("worker.log")
        return self.server.log()[-3000:] + (worker.read_text(errors="replace")[-3000:] if worker.exists() else "")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobsFleet]:
    tmp = tmp_path_factory.mktemp(f"jobs-{request.param}")
    tmp.chmod(0o755)
    addons = tmp / "addons" / "ledger"
    addons.mkdir(parents=True)
    (addons / "plugin.yaml").write_text(LEDGER_YAML)
    (addons / "plugin.py").write_text(LEDGER_PY)
    if request.param == "sqlite":
        state = str(tmp / "state.db")
    else:
        cluster = request.getfixturevalue("pg_cluster")
        state = cluster.url(cluster.create_database())
    env = server_env(shared_site(), tmp, ERP_PLUGINS_PATH=str(addons.parent), **FAST)
    f = JobsFleet(Server(env, state, tmp / "serve.log"))
    f.backend = request.param
    if request.param == "postgresql":  # a server's host on PostgreSQL stores work; workers deliver it
        with (tmp / "worker.log").open("wb") as log:
            f.worker = subprocess.Popen([*CLI, "--state", state, "worker", "--concurrency", "2"], env=env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for name, args in {"acme_admin": ("--tenant", "acme", "--scope", "admin"), "acme_call": ("--tenant", "acme"),
                       "globex_admin": ("--tenant", "globex", "--scope", "admin"),
                       "globex_call": ("--tenant", "globex")}.items():
        f.tokens[name] = make_token(env, state, *args)
    with httpx.Client(base_url=f.url, timeout=60) as c:
        for tenant in ("acme", "globex"):
            r = c.put(f"/v1/tenants/{tenant}/plugins/ledger", headers=f.h(f"{tenant}_admin"), json={"trust": True})
            assert r.status_code == 200, r.text
    yield f
    if f.worker is not None:
        f.worker.send_signal(signal.SIGTERM)
        try:
            f.worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(f.worker.pid, signal.SIGKILL)
            f.worker.wait()
    f.server.stop()


@pytest.fixture
def c(fleet: JobsFleet) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.url, timeout=30) as client:
        yield client


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and "Traceback" not in body["detail"]
    return str(body["detail"])


def cli_json(fleet: JobsFleet, *args: str) -> Any:
    return json.loads(cli(fleet.env, fleet.state, *args, "--json").stdout)


def wait_done(fleet: JobsFleet, c: httpx.Client, tenant: str, work_id: str,
              states: tuple[str, ...] = ("succeeded", "failed")) -> dict[str, Any]:
    """The event or job once it reaches one of `states` (polled through the API)."""
    deadline = time.monotonic() + 90  # generous: the machine is shared
    while True:
        r = c.get(f"/v1/tenants/{tenant}/jobs/{work_id}", headers=fleet.h(f"{tenant}_call"))
        assert r.status_code == 200, r.text
        if r.json()["state"] in states:
            return dict(r.json())
        assert time.monotonic() < deadline, f"{work_id} stuck in {r.json()['state']}:\n{fleet.logs()}"
        time.sleep(0.05)


def emit(fleet: JobsFleet, c: httpx.Client, tenant: str, event_type: str, data: dict[str, Any]) -> str:
    r = c.post(f"/v1/tenants/{tenant}/events", headers=fleet.h(f"{tenant}_call"),
               json={"event_type": event_type, "data": data})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def submit(fleet: JobsFleet, c: httpx.Client, tenant: str, body: dict[str, Any]) -> str:
    r = c.post(f"/v1/tenants/{tenant}/jobs", headers=fleet.h(f"{tenant}_call"), json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def settle(fleet: JobsFleet, c: httpx.Client, tenant: str) -> None:
    """Wait until none of the tenant's work is queued or running, so two readings of the backlog agree."""
    for kind in ("events", "jobs"):
        listed = c.get(f"/v1/tenants/{tenant}/{kind}?limit=1000", headers=fleet.h(f"{tenant}_call")).json()[kind]
        for w in listed:
            if w["state"] in ("queued", "running"):
                wait_done(fleet, c, tenant, w["id"])


# --- listings, delivery, retry ----------------------------------------------------------------------------------


def test_an_emitted_event_is_listed_and_delivered_as_the_cli_lists_it(fleet: JobsFleet, c: httpx.Client) -> None:
    event_id = emit(fleet, c, "acme", "invoice.created", {"n": 1, "total": 120})
    view = wait_done(fleet, c, "acme", event_id)
    assert view["state"] == "succeeded" and view["kind"] == "event" and view["error"] is None, fleet.logs()
    assert view["event_type"] == "invoice.created" and view["data"] == {"n": 1, "total": 120}
    # the hook ran with the caller's user: the token's id, as a hook call over HTTP has it
    assert [(r["plugin"], r["state"], r["attempts"], r["result"]) for r in view["results"]] == [
        ("ledger", "succeeded", 1, {"runs": 1, "user": {"token": fleet.tokens["acme_call"]["id"]}})]
    settle(fleet, c, "acme")
    listing = c.get("/v1/tenants/acme/events?limit=5", headers=fleet.h("acme_call")).json()
    assert listing["events"][0]["id"] == event_id and listing["events"][0]["state"] == "succeeded"
    assert set(listing["backlog"]) == {"queued", "running", "succeeded", "failed"}
    assert listing["backlog"]["succeeded"] >= 1
    assert listing == cli_json(fleet, "events", "--tenant", "acme", "--limit", "5")
    # globex sees none of acme's events
    theirs = c.get("/v1/tenants/globex/events", headers=fleet.h("globex_call")).json()
    assert event_id not in [e["id"] for e in theirs["events"]]


def test_a_failed_event_is_in_the_failed_list_and_retried_through_the_api(fleet: JobsFleet, c: httpx.Client) -> None:
    ok = emit(fleet, c, "acme", "invoice.created", {"n": 2})
    bad = emit(fleet, c, "acme", "invoice.created", {"n": 3, "fail_first": 2})
    view = wait_done(fleet, c, "acme", bad)
    assert view["state"] == "failed", fleet.logs()
    assert view["error"] == "ledger: RuntimeError: ledger is down (run 2)"
    assert view["results"][0]["attempts"] == 2  # ERP_PLUGINS_JOB_ATTEMPTS
    assert wait_done(fleet, c, "acme", ok)["state"] == "succeeded"
    settle(fleet, c, "acme")
    failed = c.get("/v1/tenants/acme/events?failed=true", headers=fleet.h("acme_call")).json()
    ids = [e["id"] for e in failed["events"]]
    assert bad in ids and ok not in ids and failed["backlog"]["failed"] >= 1
    assert failed["events"][ids.index(bad)]["results"][0]["error"] == "RuntimeError: ledger is down (run 2)"
    assert failed == cli_json(fleet, "events", "--tenant", "acme", "--failed")
    # a call token may look but not retry
    assert "needs scope 'admin'" in problem(c.post(f"/v1/tenants/acme/jobs/{bad}/retry",
                                                   headers=fleet.h("acme_call")), 403)
    r = c.post(f"/v1/tenants/acme/jobs/{bad}/retry", headers=fleet.h("acme_admin"))
    assert r.status_code == 202, r.text
    assert r.json()["id"] == bad and r.json()["retried"] == 1 and r.json()["job"]["id"] == bad
    view = wait_done(fleet, c, "acme", bad)
    assert view["state"] == "succeeded" and view["error"] is None, fleet.logs()
    assert view["results"][0]["result"]["runs"] == 3  # run once more, by the retry
    assert "nothing to retry: event" in problem(c.post(f"/v1/tenants/acme/jobs/{bad}/retry",
                                                       headers=fleet.h("acme_admin")), 409)
    assert bad not in [e["id"] for e in c.get("/v1/tenants/acme/events?failed=true",
                                              headers=fleet.h("acme_call")).json()["events"]]
    audit = c.get("/v1/tenants/acme/audit?limit=20", headers=fleet.h("acme_admin")).json()
    retried = [e for e in audit if e["action"] == "api:retry"]
    assert retried and retried[0]["plugin"] == "ledger" and retried[0]["detail"]["work"] == bad
    assert retried[0]["user"] == f"token:{fleet.tokens['acme_admin']['id']}"


def test_the_same_idempotency_key_gives_one_job(fleet: JobsFleet, c: httpx.Client) -> None:
    body = {"hook": "workflow_step", "args": {"workflow": "close-month", "step": "post", "payload": {"m": 11}},
            "idempotency_key": "close-2026-11"}
    first, second = submit(fleet, c, "acme", body), submit(fleet, c, "acme", body)
    assert first == second
    view = wait_done(fleet, c, "acme", first)
    assert view["state"] == "succeeded" and view["kind"] == "job" and view["hook"] == "workflow_step", fleet.logs()
    assert view["idempotency_key"] == "close-2026-11" and view["tenant"] == "acme"
    assert view["results"][0]["result"] == {"workflow": "close-month", "step": "post", "tenant": "acme", "runs": 1,
                                            "m": 11}  # ran once
    other = submit(fleet, c, "acme", {**body, "idempotency_key": None})
    assert other != first
    theirs = submit(fleet, c, "globex", body)  # the key is per tenant
    assert theirs not in (first, other)
    for tenant, work in (("acme", other), ("globex", theirs)):
        assert wait_done(fleet, c, tenant, work)["state"] == "succeeded"
    settle(fleet, c, "acme")
    listing = c.get("/v1/tenants/acme/jobs", headers=fleet.h("acme_call")).json()
    assert [j["id"] for j in listing["jobs"] if j["idempotency_key"] == "close-2026-11"] == [first]
    assert {j["tenant"] for j in listing["jobs"]} == {"acme"} and theirs not in [j["id"] for j in listing["jobs"]]
    assert listing == cli_json(fleet, "jobs", "--tenant", "acme")  # the CLI's shape, tenant-filtered
    assert theirs in [j["id"] for j in cli_json(fleet, "jobs")["jobs"]]  # (the CLI without --tenant shows all)
    done = c.get("/v1/tenants/acme/jobs?state=succeeded&limit=100", headers=fleet.h("acme_call")).json()["jobs"]
    assert first in [j["id"] for j in done]
    failed = c.get("/v1/tenants/acme/jobs?state=failed", headers=fleet.h("acme_call")).json()["jobs"]
    assert first not in [j["id"] for j in failed]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"hook": "nope"}, 404, "no hook named 'nope'"),
    ({"hook": "ai_stream", "args": {"prompt": "x"}}, 404, "is a streaming hook"),
    ({"hook": "workflow_step", "args": {"workflow": "w"}}, 422, "needs argument(s): step"),
    ({"hook": "workflow_step", "args": {"workflow": 3, "step": "s"}}, 422, "argument workflow must be str, got int"),
    ({"hook": "workflow_step", "args": {"workflow": "w", "step": "s", "colour": 1}}, 422,
     "unknown argument(s): colour"),
    ({"hook": "workflow_step", "args": {"workflow": "w", "step": "s", "tenant": "globex"}}, 422,
     "unknown argument(s): tenant"),
    ({"hook": "workflow_step", "args": [1]}, 422, "args must be an object"),
    ({"hook": "workflow_step", "colour": 1}, 422, "unknown key(s) colour"),
    ({"args": {}}, 422, "hook must be a non-empty string"),
    ({"hook": "workflow_step", "args": {"workflow": "w", "step": "s"}, "idempotency_key": "k" * 201}, 422,
     "at most 200 characters"),
    ({"hook": "workflow_step", "args": {"workflow": "w", "step": "s"}, "idempotency_key": 7}, 422,
     "idempotency_key must be a string"),
    ({"hook": "send_notification", "args": {"channel": "sms", "recipient": "r", "message": "m"}}, 409,
     "no plugin enabled for tenant 'acme' implements send_notification"),
    ({"hook": "send_email", "args": {"to": "a@b.c", "subject": "s", "body": "b", "attachments": ["/etc/passwd"]}},
     422, "names files on the server"),
])
def test_bad_submissions_are_problems_and_store_nothing(fleet: JobsFleet, c: httpx.Client, body: dict[str, Any],
                                                       status: int, words: str) -> None:
    before = c.get("/v1/tenants/acme/jobs?limit=1000", headers=fleet.h("acme_call")).json()["jobs"]
    assert words in problem(c.post("/v1/tenants/acme/jobs", headers=fleet.h("acme_call"), json=body), status)
    after = c.get("/v1/tenants/acme/jobs?limit=1000", headers=fleet.h("acme_call")).json()["jobs"]
    assert [j["id"] for j in after] == [j["id"] for j in before]


@pytest.mark.parametrize(("path", "words"), [
    ("/v1/tenants/acme/events?failed=maybe", "failed must be true or false, got 'maybe'"),
    ("/v1/tenants/acme/events?limit=0", "limit must be a whole number from 1 to 10000, got '0'"),
    ("/v1/tenants/acme/events?limit=ten", "limit must be a whole number"),
    ("/v1/tenants/acme/events?tenant=globex", "unknown query parameter(s) tenant; this route takes: failed, limit"),
    ("/v1/tenants/acme/jobs?state=done", "state must be one of queued, running, succeeded, failed, got 'done'"),
    ("/v1/tenants/acme/jobs?failed=true", "unknown query parameter(s) failed"),
])
def test_bad_queries_are_refused(fleet: JobsFleet, c: httpx.Client, path: str, words: str) -> None:
    assert words in problem(c.get(path, headers=fleet.h("acme_call")), 422)


def test_malformed_body_unknown_job_and_unknown_tenant(fleet: JobsFleet, c: httpx.Client) -> None:
    assert "not valid JSON" in problem(c.post("/v1/tenants/acme/jobs", headers={
        **fleet.h("acme_call"), "content-type": "application/json"}, content=b"{bad"), 400)
    unknown = str(uuid.uuid4())
    assert f"no event or job '{unknown}' for tenant 'acme'" in problem(
        c.get(f"/v1/tenants/acme/jobs/{unknown}", headers=fleet.h("acme_call")), 404)
    problem(c.post(f"/v1/tenants/acme/jobs/{unknown}/retry", headers=fleet.h("acme_admin")), 404)
    problem(c.get("/v1/tenants/acme/jobs/" + "x" * 300, headers=fleet.h("acme_call")), 404)


# --- tenants ---------------------------------------------------------------------------------------------------


def test_tenant_b_cannot_reach_tenant_a_work(fleet: JobsFleet, c: httpx.Client) -> None:
    failed = emit(fleet, c, "acme", "invoice.created", {"n": 40, "fail_first": 9})
    job = submit(fleet, c, "acme", {"hook": "workflow_step", "args": {"workflow": "w", "step": "b-test"}})
    before = wait_done(fleet, c, "acme", failed)
    assert before["state"] == "failed"
    wait_done(fleet, c, "acme", job)
    # acme's paths with globex's tokens: 403, whatever the scope
    for method, path, body in [("GET", "/v1/tenants/acme/events", None), ("GET", "/v1/tenants/acme/jobs", None),
                               ("POST", "/v1/tenants/acme/jobs", {"hook": "workflow_step",
                                                                  "args": {"workflow": "w", "step": "x"}}),
                               ("GET", f"/v1/tenants/acme/jobs/{job}", None),
                               ("POST", f"/v1/tenants/acme/jobs/{failed}/retry", None)]:
        for token in ("globex_call", "globex_admin"):
            r = c.request(method, path, headers=fleet.h(token), json=body)
            assert "another tenant" in problem(r, 403), (method, path, token)
    # acme's ids under globex's path: exactly what an unknown id gets, and nothing retried
    unknown = str(uuid.uuid4())
    expected = problem(c.get(f"/v1/tenants/globex/jobs/{unknown}", headers=fleet.h("globex_call")), 404)
    for work in (job, failed):
        detail = problem(c.get(f"/v1/tenants/globex/jobs/{work}", headers=fleet.h("globex_call")), 404)
        assert detail.replace(work, "ID") == expected.replace(unknown, "ID")
        r = c.post(f"/v1/tenants/globex/jobs/{work}/retry", headers=fleet.h("globex_admin"))
        assert problem(r, 404).replace(work, "ID") == expected.replace(unknown, "ID")
    after = c.get(f"/v1/tenants/acme/jobs/{failed}", headers=fleet.h("acme_call")).json()
    assert after["state"] == "failed" and after["results"][0]["attempts"] == before["results"][0]["attempts"]
    for kind in ("events", "jobs"):
        listed = c.get(f"/v1/tenants/globex/{kind}?limit=1000", headers=fleet.h("globex_call")).json()[kind]
        assert not {job, failed} & {w["id"] for w in listed} and {w["tenant"] for w in listed} <= {"globex"}


def test_openapi_describes_the_job_routes(fleet: JobsFleet, c: httpx.Client) -> None:
    doc = c.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/v1/tenants/{tenant}/events"]) == {"get", "post"}
    assert set(paths["/v1/tenants/{tenant}/jobs"]) == {"get", "post"}
    assert "scope `admin`" in paths["/v1/tenants/{tenant}/jobs/{id}/retry"]["post"]["description"]
    assert "scope `call`" in paths["/v1/tenants/{tenant}/jobs/{id}"]["get"]["description"]
    assert {p["name"] for p in paths["/v1/tenants/{tenant}/events"]["get"]["parameters"]} == {
        "tenant", "limit", "failed"}
    assert set(doc["components"]["schemas"]["Job"]["required"]) == {
        "id", "hook", "tenant", "state", "results", "attempts", "error"}


# --- the console ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_the_console_shows_the_backlog_and_retries_a_failed_event(fleet: JobsFleet, c: httpx.Client,
                                                                   browser: Any) -> None:
    bad = emit(fleet, c, "acme", "payment.received", {"n": 50, "fail_first": 2})
    assert wait_done(fleet, c, "acme", bad)["state"] == "failed"
    settle(fleet, c, "acme")
    backlog = c.get("/v1/tenants/acme/events", headers=fleet.h("acme_call")).json()["backlog"]
    context = browser.new_context(base_url=fleet.url)
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
    try:
        page.goto("/login")
        page.get_by_label("Token").fill(fleet.token("acme_admin"))
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="Events and jobs").click()
        assert page.get_by_role("heading", name="Events and jobs of acme").is_visible()
        table = page.get_by_role("table", name="Deliveries by state")
        assert table.get_by_role("columnheader").all_inner_texts() == ["Kind", "queued", "running", "succeeded",
                                                                      "failed"]
        assert page.locator("#backlog-events .count-failed").inner_text() == str(backlog["failed"])
        assert page.locator("#backlog-events .count-succeeded").inner_text() == str(backlog["succeeded"])
        row = page.locator(f"#work-{bad}")
        assert row.locator("td.state").inner_text() == "failed"
        assert "ledger: failed, attempts 2: RuntimeError: ledger is down (run 2)" in row.inner_text()
        assert page.get_by_role("rowheader", name="payment.received").count() == 1
        page.screenshot(path=SHOTS / f"jobs-{fleet.backend}.png", full_page=True)
        # a form POST without this session's CSRF token is refused, and retries nothing
        forged = page.request.post(f"/tenants/acme/jobs/{bad}/retry", form={"csrf": "forged"})
        assert forged.status == 403 and "CSRF" in forged.text()
        assert c.get(f"/v1/tenants/acme/jobs/{bad}", headers=fleet.h("acme_call")).json()["state"] == "failed"
        row.get_by_role("button", name=f"Retry event {bad}").click()
        assert page.get_by_role("status").inner_text() == f"queued 1 failed delivery of event {bad} again"
        view = wait_done(fleet, c, "acme", bad)
        assert view["state"] == "succeeded" and view["results"][0]["result"]["runs"] == 3
        page.reload()
        assert page.locator(f"#work-{bad} td.state").inner_text() == "succeeded"
        assert page.locator(f"#work-{bad}").get_by_role("button").count() == 0  # nothing left to retry
        audit = c.get("/v1/tenants/acme/audit?limit=20", headers=fleet.h("acme_admin")).json()
        assert any(e["action"] == "console:retry" and e["detail"]["work"] == bad for e in audit)
    finally:
        context.close()
    assert not blocked, blocked


def test_the_console_refuses_another_tenants_work(fleet: JobsFleet, c: httpx.Client, browser: Any) -> None:
    bad = emit(fleet, c, "acme", "payment.received", {"n": 60, "fail_first": 9})
    assert wait_done(fleet, c, "acme", bad)["state"] == "failed"
    context = browser.new_context(base_url=fleet.url)
    page = context.new_page()
    try:
        page.goto("/login")
        page.get_by_label("Token").fill(fleet.token("globex_admin"))
        page.get_by_role("button", name="Sign in").click()
        assert page.goto("/tenants/acme/jobs").status == 403
        page.goto("/tenants/globex/jobs")
        assert page.locator(f"#work-{bad}").count() == 0
        csrf = page.locator("form[action='/logout'] input[name=csrf]").get_attribute("value")
        r = page.request.post(f"/tenants/globex/jobs/{bad}/retry", form={"csrf": csrf})
        assert r.status == 404 and "no event or job" in r.text()
    finally:
        context.close()
    after = c.get(f"/v1/tenants/acme/jobs/{bad}", headers=fleet.h("acme_call")).json()
    assert after["state"] == "failed" and after["results"][0]["attempts"] == 2
