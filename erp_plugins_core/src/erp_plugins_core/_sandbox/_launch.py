"""Starting and ending worker processes: spawning, cgroup moves, kills, reaping.

A worker is started by `_spawn` (bwrap as the worker's uid, seccomp filter and info pipe passed by fd, the
memory cgroup entered while its Python starts) and ends in `_finish`, however it ends (exit, kill, protocol
violation, closed pipe): every call in flight gets its death as an error, a crash is counted unless the host
stopped it on purpose, and its cgroup is removed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _cgroup, _seccomp
from .._cgroup import MemoryCgroup
from .._discovery import PluginRecord
from .._errors import SandboxError
from .._manifest import Manifest
from .._redact import Redactor
from ._command import WorkerCommand
from ._process import _End, _FromWorker, _Worker, describe_exit
from ._site import Runtime, mark_used

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._fleet import _Slot
    from ._template import Template

log = logging.getLogger("erp_plugins.sandbox")

START_TIMEOUT = 20.0
_STDERR_TAIL = 16 * 1024


class WorkerLauncher(WorkerCommand):
    """The part of `SandboxRunner` that starts, places, kills and reaps its worker processes."""

    record: PluginRecord
    tenant: str
    manifest: Manifest
    uid: int | None
    max_crashes: int
    crash_window: float
    _runtime: Runtime | None
    _loaded: bool
    _crashes: collections.deque[float]
    _failed: str | None
    _redactor: Redactor
    _handle: Callable[[_Worker, dict[str, Any]], None]
    _template: Callable[[], Awaitable[Template | None]]  # the runner's; None: start afresh
    _spawn_forked: Callable[[Template, _Slot | None], Awaitable[_Worker]]  # WorkerForker's

    async def _spawn(self, slot: _Slot | None = None) -> _Worker:
        template = await self._template()
        if template is not None:
            try:
                return await self._spawn_forked(template, slot)
            except SandboxError as exc:
                if not template.dead:
                    raise
                log.info("plugin %r: its template ended while forking a worker (%s); starting one afresh",
                         self.record.name, self._redactor.redact(str(exc)))
        if self._runtime is not None:
            mark_used(self._runtime.site)
        wanted = _cgroup.wanted()
        group = MemoryCgroup.create(self.manifest.resources.memory_bytes) if wanted else None
        if wanted and group is None:
            _say_no_cgroup()
        seccomp_fd = _seccomp.filter_fd(self.manifest.resources.network_access)
        info_r, info_w = os.pipe()
        out_r, out_w = os.pipe()  # the worker's replies; read by a protocol, not a StreamReader
        in_r, in_w = os.pipe()  # the host's messages; our own pipe, so that any event loop can take it
        _grow_pipe(out_r)
        _grow_pipe(in_w)
        try:
            argv = self.argv(info_w, seccomp_fd, cgroup=group is not None)
            kwargs = _as_user(self.uid) if self.uid is not None else {}
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=in_r, stdout=out_w, stderr=asyncio.subprocess.PIPE,
                pass_fds=(seccomp_fd, info_w), start_new_session=True, cwd="/", env={}, limit=1 << 20, **kwargs,
            )
        except BaseException:
            os.close(info_r)
            os.close(out_r)
            os.close(in_w)
            if group is not None:
                group.remove()
            raise
        finally:
            os.close(seccomp_fd)
            os.close(info_w)
            os.close(out_w)
            os.close(in_r)
        loop = asyncio.get_running_loop()
        pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(in_w, "wb", buffering=0))
        w = _Worker(proc, pipe)
        w.cgroup = group  # removed by _finish, however the worker ends
        await self._attach(w, out_r, slot)
        placing = asyncio.ensure_future(self._place_early(w, group)) if group is not None else None
        started = False
        try:
            await asyncio.wait_for(asyncio.shield(w.hello), START_TIMEOUT)
            info = await asyncio.to_thread(_read_all, info_r)
            started = True
        except TimeoutError:
            os.set_blocking(info_r, False)
            with contextlib.suppress(OSError, ValueError, KeyError):  # kill the namespace too, if it exists
                w.pidfd = os.pidfd_open(int(json.loads(os.read(info_r, 65536).decode())["child-pid"]))
            self._kill(w, f"did not start within {START_TIMEOUT:g} s")
            self._kill_group(w)
            await self._reap(w)
            raise SandboxError(f"plugin {self.record.name!r}: worker did not start within {START_TIMEOUT:g} s; "
                               f"stderr: {self._stderr(w)[-500:]}") from None
        except SandboxError:
            await self._reap(w)
            raise
        except asyncio.CancelledError:  # the call that needed it timed out or was cancelled: leave nothing running
            self._kill(w, "start was cancelled", crash=False)
            raise
        finally:
            os.close(info_r)
            if placing is not None and not started:
                placing.cancel()
                placing.add_done_callback(_retrieved)  # a move that failed as well is not logged as unretrieved
        try:
            w.child_pid = int(json.loads(info.decode())["child-pid"])
            w.pidfd = os.pidfd_open(w.child_pid)
        except (ValueError, KeyError, OSError):
            w.child_pid = None
        if placing is not None:
            assert group is not None
            await self._enter_cgroup(w, group, placing)
        return w

    async def _attach(self, w: _Worker, out_r: int, slot: _Slot | None) -> None:
        """Wire a new worker up: its fleet slot (released by `_finish`), the protocol reading its replies from
        `out_r`, and its tasks (the read loop, which ends it, and the stderr drain)."""
        if slot is not None:
            w.slot, slot.worker = slot, w
        protocol = _FromWorker(functools.partial(self._handle, w))
        w.reader = protocol
        await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, os.fdopen(out_r, "rb", buffering=0))
        w.tasks = [asyncio.create_task(self._read_loop(w)), asyncio.create_task(self._drain_stderr(w))]

    @staticmethod
    async def _place_early(w: _Worker, group: MemoryCgroup) -> None:
        """Move bwrap, the sandbox's PID 1 and the worker into `group` as soon as the worker process exists.

        A move waits for a kernel RCU grace period (14–25 ms here) and holds up every fork on the machine
        meanwhile; started once bwrap's forks are done, it runs while the worker's Python starts up (≈ 20 ms)
        instead of after its hello. `_enter_cgroup` checks the result before any plugin code runs.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline and not w.hello.done() and w.proc.returncode is None:
            init = _children(w.pid)
            workers = _children(init[0]) if init else []
            if workers:
                await asyncio.to_thread(_add_all, group, [w.pid, init[0], *workers])
                return
            await asyncio.sleep(0.001)

    async def _enter_cgroup(self, w: _Worker, group: MemoryCgroup, placing: asyncio.Future[None]) -> None:
        """Make sure bwrap, the sandbox's PID 1 and the worker are in `group`; what they fork later is born there.

        Runs once the worker said hello: until `load` it runs only our own code, so no plugin code runs
        outside the cgroup. Whatever `_place_early` did not move is moved now. A worker that cannot be placed
        is stopped: its limits must hold.
        """
        try:
            await placing
            pids = [w.pid] + ([w.child_pid, *_children(w.child_pid)] if w.child_pid is not None else [])
            inside = group.pids()
            missing = [pid for pid in pids if pid not in inside]
            if missing:  # a move can wait ~20 ms for the kernel: not on the event loop
                await asyncio.to_thread(_add_all, group, missing)
        except OSError as exc:
            self._kill(w, f"could not be placed in its memory cgroup {group.path} ({exc})", crash=False)
            await self._reap(w)
            raise SandboxError(f"plugin {self.record.name!r}: worker could not be placed in its memory cgroup "
                               f"{group.path}: {exc}") from None

    async def _stop(self, w: _Worker, reason: str) -> None:
        self._kill(w, reason, crash=False)
        await self._reap(w)

    def _kill(self, w: _Worker, reason: str, *, crash: bool = True) -> None:
        """SIGKILL the worker's PID namespace (its PID 1), then bwrap's process group; reaping is async."""
        if w.kill_reason is None:
            w.kill_reason = reason
            w.count_crash = crash
        if w.pidfd is not None:
            try:  # bwrap reaps its PID 1 only after the kernel has killed every process of the namespace
                signal.pidfd_send_signal(w.pidfd, signal.SIGKILL)
                return
            except OSError:
                pass
        self._kill_group(w)

    @staticmethod
    def _kill_group(w: _Worker) -> None:
        if w.proc.returncode is None:
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except OSError:  # a forked worker's waiting parent may not lead its group yet
                with contextlib.suppress(OSError):
                    os.kill(w.pid, signal.SIGKILL)

    async def _reap(self, w: _Worker) -> None:
        try:
            await asyncio.shield(w.finished.wait())
        except asyncio.CancelledError:
            raise


    async def _read_loop(self, w: _Worker) -> None:
        """Wait until the worker's pipe closes (or it broke the protocol), then end the worker."""
        assert w.reader is not None
        await w.reader.closed
        if w.reader.violation is not None:
            self._kill(w, f"broke the protocol (protocol violation: {w.reader.violation})")
        await self._finish(w)

    async def _finish(self, w: _Worker) -> None:
        try:
            await asyncio.wait_for(w.proc.wait(), 3.0)
        except TimeoutError:
            self._kill(w, w.kill_reason or "closed its pipe but did not exit")
            try:
                await asyncio.wait_for(w.proc.wait(), 2.0)
            except TimeoutError:
                self._kill_group(w)
                await w.proc.wait()
        for task in w.tasks[1:]:
            try:
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        w.dead = True
        if w.slot is not None:
            w.slot.release()
        if w.pidfd is not None:
            os.close(w.pidfd)
            w.pidfd = None
        reason = w.kill_reason or describe_exit(w.proc.returncode, self._stderr(w))
        if w.kill_reason is None and w.cgroup is not None and w.cgroup.oom_kills():
            reason = (f"ran out of memory (the kernel's OOM killer ended it at its memory_limit "
                      f"{self.manifest.resources.memory_limit})")
        message = f"plugin {self.record.name!r}: worker {reason}"
        counted = w.count_crash and not w.retiring
        if counted and self._loaded:
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and self._crashes[0] < now - self.crash_window:
                self._crashes.popleft()
            if len(self._crashes) >= self.max_crashes and self._failed is None:
                self._failed = (
                    f"plugin {self.record.name!r} for tenant {self.tenant!r}: its worker failed "
                    f"{len(self._crashes)} times within {self.crash_window:g} s (last: {reason}); "
                    "the plugin is put into its error state"
                )
        if self._failed is not None and counted:
            message = self._failed
        elif counted:
            message += "; it is restarted on the next call"
        w.death = message
        error = {"type": "SandboxError", "message": message, "kind": "died", "retry_after": None}
        if not w.hello.done():
            w.hello.set_exception(SandboxError(f"{message}; stderr: {self._stderr(w)[-800:]}"))
        for call in list(w.calls.values()):
            end = {"t": "res", "id": call.id, "ok": False, "value": None, "error": error, "usage": {}}
            if call.queue is not None:
                call.put(_End(end))
            elif not call.future.done():
                call.future.set_result(end)
        w.calls.clear()
        if w.watchdog is not None:
            w.watchdog.cancel()
            w.watchdog = None
        for bt in list(w.bridge_tasks):
            bt.cancel()
        w.finished.set()
        if w.pipe is not None:
            w.pipe.close()
        if counted:
            log.warning("%s", self._redactor.redact(message))
        if w.cgroup is not None:
            await self._remove_cgroup(w.cgroup)

    @staticmethod
    async def _remove_cgroup(group: MemoryCgroup) -> None:
        """Remove a dead worker's cgroup; its last processes may take a moment to leave it."""
        for _ in range(40):
            if group.remove():
                return
            await asyncio.sleep(0.025)
        log.warning("could not remove the worker cgroup %s (processes still in it)", group.path)

    async def _drain_stderr(self, w: _Worker) -> None:
        assert w.proc.stderr is not None
        while chunk := await w.proc.stderr.read(65536):
            w.stderr_tail += chunk
            del w.stderr_tail[:-_STDERR_TAIL]
            if log.isEnabledFor(logging.DEBUG):
                log.debug("plugin %s stderr: %s", self.record.name,
                          self._redactor.redact(chunk.decode(errors="replace")))

    def _stderr(self, w: _Worker) -> str:
        return self._redactor.redact(w.stderr_tail.decode(errors="replace"))


@functools.cache
def _say_no_cgroup() -> None:
    """Tell the administrator once why workers get no memory cgroup here."""
    log.info("sandbox workers get no memory cgroup here (it needs a writable memory controller: the host as root, "
             "or one delegated to it); their memory is capped by address space only (%s=0 silences this)",
             _cgroup.ENV)


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _add_all(group: MemoryCgroup, pids: list[int]) -> None:
    for pid in pids:
        group.add(pid)


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (empty when it is gone)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _grow_pipe(fd: int) -> None:
    """Let a pipe hold 1 MiB (64 KiB by default) so large frames cross in fewer reads; best effort."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1024 * 1024)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _as_user(uid: int) -> dict[str, Any]:
    """Arguments that start the worker's bwrap as `uid`, with no supplementary groups.

    On asyncio's own loops, the subprocess module's `user`/`group`/`extra_groups` (set in C after the fork).
    Other loops (uvloop, which an ERP application often runs) do not take those; there a `preexec_fn` makes
    the same three calls in the child before it executes bwrap.
    """
    if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        return {"user": uid, "group": uid, "extra_groups": []}

    def become() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    return {"preexec_fn": become}

