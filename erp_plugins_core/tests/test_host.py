"""PluginHost with trusted in-process plugins: tenants, config, permissions, dispatch, fallback, events, health."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from erp_plugins_core import (
    AllPluginsFailed,
    DependencyError,
    PermissionDenied,
    PluginError,
    PluginHost,
    StreamInterrupted,
    UnknownHookError,
    UnknownPluginError,
)
from erp_plugins_core._errors import ConfigError

TRUSTED = """
security: {sandbox: false}
resources: {timeout: 0.5}
health_check: {timeout: 0.3}
"""

ECHO = """
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    def answer(self, prompt, context):          # a plain function
        self.context.record_usage(prompt_tokens=len(prompt.split()))
        return f"{self.config['prefix']}:{prompt}:{self.context.tenant_id}"
    async def stream(self, prompt, context):
        for word in prompt.split():
            yield word
    async def health_check(self):
        return {"healthy": True, "detail": "echo ready " + self.config["api_key"]}
"""
ECHO_MANIFEST = TRUSTED + """
permissions: [ai.generate, events.emit]
config_schema:
  type: object
  properties:
    prefix: {type: string, default: echo}
    api_key: {type: string, required: true, sensitive: true}
hooks:
  - {name: ai_request, method: answer}
  - {name: ai_stream, method: stream}
"""

BROKEN = """
import asyncio
from erp_plugins_core import PluginInterface, UnavailableError, BadRequestError
class Plugin(PluginInterface):
    async def answer(self, prompt, context):
        mode = self.config["mode"]
        if mode == "hang":
            await asyncio.sleep(30)
        if mode == "down":
            raise UnavailableError("server 127.0.0.1:9 unreachable")
        if mode == "bad":
            raise BadRequestError("prompt too long")
        raise ValueError("boom " + prompt)
    async def stream(self, prompt, context):
        if self.config["mode"] == "half":
            yield "partial "
        raise UnavailableError("stream died")
    async def health_check(self):
        if self.config["mode"] == "hang":
            await asyncio.sleep(30)
        return {"healthy": False, "detail": "broken on purpose"}
"""
BROKEN_MANIFEST = TRUSTED + """
permissions: [ai.generate]
config_schema:
  type: object
  properties:
    mode: {type: string, enum: [hang, down, bad, raise, half]}
hooks:
  - {name: ai_request, method: answer}
  - {name: ai_stream, method: stream}
"""

EVENTS = """
from erp_plugins_core import PluginInterface
SEEN = []
class Plugin(PluginInterface):
    async def on_event(self, event_type, data):
        SEEN.append((self.context.tenant_id, event_type, dict(data)))
        if event_type == "ping":
            await self.context.emit_event("ping", {"n": data.get("n", 0) + 1})
"""
EVENTS_MANIFEST = TRUSTED + """
permissions: [events.emit]
hooks: [{name: on_event, method: on_event}]
"""


@pytest.fixture
def plugins(site, manifest_text, secret_key):
    site.install("erp-echo", plugins={"echo": (manifest_text("echo", extra=ECHO_MANIFEST), ECHO)})
    site.install("erp-broken", plugins={"broken": (manifest_text("broken", extra=BROKEN_MANIFEST), BROKEN)})
    site.install("erp-events", plugins={"events": (manifest_text("events", extra=EVENTS_MANIFEST), EVENTS)})
    dep = TRUSTED + "dependencies: [echo]\npermissions: [ai.generate]\nhooks: [{name: ai_request, method: answer}]\n"
    child = ECHO.replace("self.config['prefix']", "'child'")
    site.install("erp-child", plugins={"child": (manifest_text("child", extra=dep), child)})
    return site


@pytest.fixture
async def host(plugins, state_location):
    """A host on SQLite and on PostgreSQL: both backends give the same answers (it delivers events on both)."""
    async with PluginHost(state_location, health_loop=False, deliver=True) as h:
        yield h


SECRET = "sk-test-planted-secret-1234"


async def test_call_returns_one_result_per_plugin_even_when_one_raises_or_hangs(host) -> None:
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    await host.enable("broken", tenant="acme", config={"mode": "hang"}, trust=True)
    results = await host.call("ai_request", tenant="acme", prompt="hi there", context={})
    by = {r.plugin: r for r in results}
    assert by["echo"].success and by["echo"].result == "echo:hi there:acme"
    assert by["echo"].usage == {"prompt_tokens": 2}
    assert not by["broken"].success and by["broken"].error_kind == "timeout"
    assert "did not answer ai_request within 0.5s" in by["broken"].error
    assert by["broken"].duration_s < 5


async def test_exception_is_reported_with_type_and_message(host) -> None:
    await host.enable("broken", tenant="acme", config={"mode": "raise"}, trust=True)
    [result] = await host.call("ai_request", tenant="acme", prompt="x", context={})
    assert not result.success and result.error == "ValueError: boom x" and result.error_kind == "exception"


async def test_tenants_are_isolated(host) -> None:
    await host.enable("echo", tenant="acme", config={"api_key": SECRET, "prefix": "A"}, trust=True)
    await host.enable("echo", tenant="globex", config={"api_key": SECRET, "prefix": "G"}, trust=True)
    assert await host.first("ai_request", tenant="acme", prompt="p", context={}) == "A:p:acme"
    assert await host.first("ai_request", tenant="globex", prompt="p", context={}) == "G:p:globex"
    assert await host.call("ai_request", tenant="initech", prompt="p", context={}) == []
    assert host.config_of("echo", tenant="globex")["prefix"] == "G"


async def test_secret_is_redacted_in_results_health_and_config(host, tmp_path) -> None:
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    [report] = await host.health("acme")
    assert report.healthy and SECRET not in report.detail and "***" in report.detail
    [result] = await host.call("ai_request", tenant="acme", prompt=f"leak {SECRET}", context={})
    assert SECRET not in json.dumps(result.to_json())
    assert host.config_of("echo", tenant="acme")["api_key"] == "***"
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert SECRET.encode() not in raw


async def test_permission_not_granted_is_that_plugins_result(host) -> None:
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, grant=["events.emit"], trust=True)
    [result] = await host.call("ai_request", tenant="acme", prompt="x", context={})
    assert not result.success and result.error_kind == "permission"
    assert "permission 'ai.generate' is not granted to echo for tenant 'acme'" in result.error
    with pytest.raises(PermissionDenied, match="does not declare it"):
        await host.enable("echo", tenant="acme", config={"api_key": SECRET}, grant=["email.send"], trust=True)


async def test_unsandboxed_plugin_needs_trust(host) -> None:
    with pytest.raises(PermissionDenied, match=r"security.sandbox: false.*pass --trust"):
        await host.enable("echo", tenant="acme", config={"api_key": SECRET})


async def test_first_falls_back_in_priority_order_and_stops_on_request_errors(host) -> None:
    await host.enable("broken", tenant="acme", config={"mode": "down"}, trust=True, priority=1)
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True, priority=2)
    assert await host.first("ai_request", tenant="acme", prompt="q", context={}) == "echo:q:acme"
    await host.enable("broken", tenant="acme", config={"mode": "bad"}, trust=True, priority=1)
    with pytest.raises(AllPluginsFailed, match="broken: prompt too long"):
        await host.first("ai_request", tenant="acme", prompt="q", context={})
    await host.enable("broken", tenant="acme", config={"mode": "down"}, trust=True, priority=3)
    assert await host.first("ai_request", tenant="acme", prompt="q", context={}) == "echo:q:acme"


async def test_first_raises_with_every_error_when_all_fail(host) -> None:
    await host.enable("broken", tenant="acme", config={"mode": "hang"}, trust=True)
    with pytest.raises(AllPluginsFailed, match="broken: broken did not answer ai_request within 0.5s"):
        await host.first("ai_request", tenant="acme", prompt="q", context={})
    with pytest.raises(AllPluginsFailed, match="no plugin active for tenant 'nobody' implements ai_request"):
        await host.first("ai_request", tenant="nobody", prompt="q", context={})


async def test_stream_falls_back_before_first_chunk_but_not_after(host) -> None:
    await host.enable("broken", tenant="acme", config={"mode": "raise"}, trust=True, priority=1)
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True, priority=2)
    chunks = [c async for c in host.stream("ai_stream", tenant="acme", prompt="a b c", context={})]
    assert chunks == ["a", "b", "c"]
    await host.enable("broken", tenant="acme", config={"mode": "half"}, trust=True, priority=1)
    got = []
    with pytest.raises(StreamInterrupted, match="broken failed after 1 chunk"):
        async for c in host.stream("ai_stream", tenant="acme", prompt="a b", context={}):
            got.append(c)
    assert got == ["partial "]


async def test_call_on_a_streaming_hook_joins_each_plugins_chunks(host) -> None:
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    [r] = await host.call("ai_stream", tenant="acme", prompt="x y", context={})
    assert r.success and r.result == "xy"


async def test_bad_hook_and_arguments(host) -> None:
    with pytest.raises(UnknownHookError, match="no hook named 'make_coffee'"):
        await host.call("make_coffee", tenant="acme")
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    with pytest.raises(TypeError, match="argument prompt must be str, got int"):
        await host.call("ai_request", tenant="acme", prompt=3)
    with pytest.raises(TypeError, match="unknown argument"):
        await host.call("ai_request", tenant="acme", prompt="x", colour="red")
    [r] = await host.call("ai_request", tenant="acme", prompt="ctx default")
    assert r.success


async def test_config_errors_name_the_key_and_never_echo_secrets(host) -> None:
    with pytest.raises(ConfigError, match="api_key"):
        await host.enable("echo", tenant="acme", config={}, trust=True)
    with pytest.raises(ConfigError) as info:
        await host.enable("echo", tenant="acme", config={"api_key": 12345678}, trust=True)
    assert "12345678" not in str(info.value)
    with pytest.raises(UnknownPluginError, match="no plugin named 'nope'"):
        await host.enable("nope", tenant="acme")


async def test_dependencies_gate_enable_and_disable(host) -> None:
    with pytest.raises(DependencyError, match="run first: erp-plugins enable echo --tenant acme"):
        await host.enable("child", tenant="acme", trust=True)
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    await host.enable("child", tenant="acme", trust=True)
    with pytest.raises(DependencyError, match="child depend"):
        await host.disable("echo", tenant="acme")
    await host.disable("child", tenant="acme")
    await host.disable("echo", tenant="acme")
    assert await host.call("ai_request", tenant="acme", prompt="x", context={}) == []


async def test_a_row_read_before_this_hosts_disable_does_not_bring_the_plugin_back(host, monkeypatch) -> None:
    """Following another process's change reads the plugin's row; if this host disables the plugin between that
    read and its application, the stale (enabled) row must not start the plugin again."""
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    assert [r.plugin for r in await host.call("ai_request", tenant="acme", prompt="x", context={})] == ["echo"]
    store = host._require_store()
    original, reading, go_on = store.get, threading.Event(), threading.Event()

    def get_then_wait(*args, **kwargs):  # the follower's read, held open (in its worker thread)
        row = original(*args, **kwargs)
        reading.set()
        go_on.wait(10)
        return row

    monkeypatch.setattr(store, "get", get_then_wait)
    follow = asyncio.create_task(host._apply_plugin_change("acme", "echo"))
    assert await asyncio.to_thread(reading.wait, 10)
    monkeypatch.setattr(store, "get", original)
    disabling = asyncio.create_task(host.disable("echo", tenant="acme"))
    await asyncio.sleep(0.2)  # the disable runs now, or waits for the follower's lock
    go_on.set()
    await asyncio.gather(follow, disabling)
    assert await host.call("ai_request", tenant="acme", prompt="x", context={}) == []


async def test_state_survives_a_restart(plugins, state_location) -> None:
    async with PluginHost(state_location, health_loop=False) as h1:
        await h1.enable("echo", tenant="acme", config={"api_key": SECRET, "prefix": "P"}, trust=True, priority=5)
    async with PluginHost(state_location, health_loop=False) as h2:
        assert await h2.first("ai_request", tenant="acme", prompt="x", context={}) == "P:x:acme"
        status = h2.status("acme")["echo"]
        assert status["state"] == "active" and status["trusted"] and status["priority"] == 5
        assert [e.action for e in h2.store.audit("acme")] == ["enable"]


async def _settle(host) -> dict[str, int]:
    """Wait until the open host has delivered every stored event (SQLite: open hosts deliver in the background)."""
    engine = await host._jobs().engine()
    async with asyncio.timeout(30):
        while True:
            counts = await engine.counts(kind="event")
            if counts["queued"] == counts["running"] == 0:
                return counts
            await asyncio.sleep(0.02)


async def test_events_reach_other_plugins_and_chains_are_bounded(host, plugins) -> None:
    await host.enable("events", tenant="acme", trust=True)
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    import erp_events.events.plugin as events_mod

    events_mod.SEEN.clear()
    event_id = await host.emit("acme", "hello", {"x": 1})
    await _settle(host)
    assert events_mod.SEEN == [("acme", "hello", {"x": 1})]
    job = await host.job(event_id)
    assert job["state"] == "succeeded" and [r["plugin"] for r in job["results"]] == ["events"]  # echo has no on_event
    # the plugin re-emits "ping"; the source is excluded, so a lone plugin cannot loop
    events_mod.SEEN.clear()
    event_id = await host.emit("acme", "ping", {"n": 0})
    await _settle(host)
    assert (await host.job(event_id))["state"] == "succeeded" and len(events_mod.SEEN) == 1


async def test_event_chain_between_two_plugins_is_cut(host, plugins, site, manifest_text) -> None:
    site.install("erp-events2", plugins={"events2": (manifest_text("events2", extra=EVENTS_MANIFEST), EVENTS)})
    host.catalog.__init__(__import__("erp_plugins_core._discovery", fromlist=["scan"]).scan())
    await host.enable("events", tenant="acme", trust=True)
    await host.enable("events2", tenant="acme", trust=True)
    import erp_events.events.plugin as one
    import erp_events2.events2.plugin as two

    one.SEEN.clear()
    two.SEEN.clear()
    await host.emit("acme", "ping", {"n": 0})
    counts = await _settle(host)
    from erp_plugins_core._host import MAX_EVENT_DEPTH

    # the host's ping starts one chain per plugin; each bounces between the two until the bound cuts it
    assert len(one.SEEN) + len(two.SEEN) == 2 * MAX_EVENT_DEPTH
    assert max(d["n"] for _, _, d in one.SEEN + two.SEEN) == MAX_EVENT_DEPTH - 1
    # the refusal fails only the innermost handler of each chain, for good (retrying cannot help)
    assert counts["failed"] == 2
    failed = await (await host._jobs().engine()).list(kind="event", tenant="acme", state="failed")
    errors = [d for w in failed for d in w.deliveries if d.state == "failed"]
    assert len(errors) == 2 and all("event chain deeper than" in d.error and d.attempts == 1 for d in errors)
    await host.emit("acme", "hello", {})
    await _settle(host)
    assert two.SEEN[-1][1] == "hello" and one.SEEN[-1][1] == "hello"


async def test_emit_needs_events_emit_permission(host, plugins) -> None:
    await host.enable("events", tenant="acme", trust=True, grant=[])
    import erp_events.events.plugin as events_mod

    events_mod.SEEN.clear()
    event_id = await host.emit("acme", "ping", {"n": 0})
    await _settle(host)
    job = await host.job(event_id)
    [r] = job["results"]
    assert job["state"] == "failed" and r["error_kind"] == "permission" and r["attempts"] == 1
    assert "lacks permission 'events.emit'" in r["error"] and len(events_mod.SEEN) == 1


async def test_health_reports_unhealthy_and_timeouts(host) -> None:
    await host.enable("broken", tenant="acme", config={"mode": "raise"}, trust=True)
    [r] = await host.health("acme")
    assert not r.healthy and r.error == "broken on purpose"
    await host.enable("broken", tenant="acme", config={"mode": "hang"}, trust=True)
    [r] = await host.health("acme")
    assert not r.healthy and "did not answer within 0.3s" in r.error


async def test_failed_start_goes_to_error_and_is_retried(plugins, state_location, monkeypatch) -> None:
    monkeypatch.setenv("ECHO_KEY", SECRET)
    async with PluginHost(state_location, health_loop=False) as h:
        await h.enable("echo", tenant="acme", config={"api_key": "env:ECHO_KEY"}, trust=True)
        assert h.config_of("echo", tenant="acme")["api_key"] == "env:ECHO_KEY"
    monkeypatch.delenv("ECHO_KEY")
    async with PluginHost(state_location, health_loop=False, tenants=["acme"]) as h:  # brought up at open
        status = h.status("acme")["echo"]
        assert status["state"] == "error" and "ECHO_KEY is not set" in status["reason"]
        [r] = await h.health("acme")
        assert not r.healthy and "ECHO_KEY" in r.error
        monkeypatch.setenv("ECHO_KEY", SECRET)
        inst = h._instances[("acme", "echo")]
        assert await h._start(inst)  # what the health loop does once the backoff has passed
        assert h.status("acme")["echo"]["state"] == "active"


async def test_concurrent_calls_do_not_mix_usage(host) -> None:
    await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    results = await asyncio.gather(*(host.call("ai_request", tenant="acme", prompt="w " * n, context={})
                                     for n in range(1, 20)))
    assert [r[0].usage["prompt_tokens"] for r in results] == list(range(1, 20))


async def test_tampered_file_is_refused_at_load_and_lock_catches_drift(host, plugins) -> None:
    plugin_py = plugins.root / "erp_echo" / "echo" / "plugin.py"
    original = plugin_py.read_text()
    plugin_py.write_text(original + "\n# tampered\n")
    with pytest.raises(PluginError, match=r"installed files differ from RECORD: erp_echo/echo/plugin.py: changed"):
        await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)
    plugin_py.write_text(original)
    from erp_plugins_core._integrity import LockEntry, lock_to_json

    host.store.set_setting("lock", lock_to_json({"erp-echo": LockEntry("erp-echo", "0.9.0", "0" * 64)}))
    with pytest.raises(PluginError, match="refused by the lock"):
        await host.enable("echo", tenant="acme", config={"api_key": SECRET}, trust=True)


async def test_unsandboxed_plugin_with_findings_needs_accepted_findings(host, plugins, site, manifest_text) -> None:
    code = ECHO + "\nimport subprocess\n"
    site.install("erp-risky", plugins={"risky": (manifest_text("risky", extra=ECHO_MANIFEST), code)})
    host.catalog.__init__(__import__("erp_plugins_core._discovery", fromlist=["scan"]).scan())
    with pytest.raises(PermissionDenied, match=r"code-scan finding.*erp-plugins check --accept-findings risky"):
        await host.enable("risky", tenant="acme", config={"api_key": SECRET}, trust=True)
    host.store.set_setting("accepted_findings", json.dumps({"risky": "erp-risky==1.0.0"}))
    await host.enable("risky", tenant="acme", config={"api_key": SECRET}, trust=True)


async def test_consumer_stopping_a_stream_early_closes_the_plugins_generator(host, site, manifest_text) -> None:
    code = """
from erp_plugins_core import PluginInterface
CLOSED = []
class Plugin(PluginInterface):
    async def stream(self, prompt, context):
        try:
            for i in range(1000):
                yield str(i)
        finally:
            CLOSED.append(True)
"""
    extra = TRUSTED + "permissions: [ai.generate]\nhooks: [{name: ai_stream, method: stream}]\n"
    site.install("erp-endless", plugins={"endless": (manifest_text("endless", extra=extra), code)})
    host.catalog.__init__(__import__("erp_plugins_core._discovery", fromlist=["scan"]).scan())
    await host.enable("endless", tenant="acme", trust=True)
    import erp_endless.endless.plugin as mod

    stream = host.stream("ai_stream", tenant="acme", prompt="x", context={})
    got = [await stream.__anext__(), await stream.__anext__()]
    await stream.aclose()
    assert got == ["0", "1"] and mod.CLOSED == [True]


async def test_plugin_log_records_are_redacted(host, plugins, site, manifest_text, caplog) -> None:
    code = """
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    def answer(self, prompt, context):
        self.context.log("warning", "using key " + self.config["api_key"], key=self.config["api_key"], n=1)
        return "ok"
"""
    site.install("erp-chatty", plugins={"chatty": (manifest_text("chatty", extra=ECHO_MANIFEST.replace(
        "  - {name: ai_stream, method: stream}\n", "").replace("method: answer", "method: answer")), code)})
    host.catalog.__init__(__import__("erp_plugins_core._discovery", fromlist=["scan"]).scan())
    await host.enable("chatty", tenant="acme", config={"api_key": SECRET}, trust=True)
    with caplog.at_level("INFO", logger="erp_plugins"):
        [r] = await host.call("ai_request", tenant="acme", prompt="x", context={})
    assert r.success
    [record] = [rec for rec in caplog.records if rec.name == "erp_plugins.plugin.chatty"]
    assert record.getMessage() == "using key ***" and record.fields == {"key": "***", "n": 1}
    assert record.tenant == "acme" and SECRET not in caplog.text
