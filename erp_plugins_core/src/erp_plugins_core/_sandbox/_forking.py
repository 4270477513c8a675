"""Starting a worker by forking it from its plugin's template (`_template`), instead of a fresh bwrap process.

The worker the runner gets is the same `_Worker` as a plain start gives: the same pipes, protocol and hello;
only its process differs. `ForkedProcess` stands for it where the launcher expects an asyncio subprocess:
its pid is the forked child's (C, which only waits), its exit status the one the template reports, its stderr
the worker's own pipe. The worker's PID namespace is ended by killing its PID 1 (G) through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from .. import _cgroup, _seccomp
from .._errors import PluginError, SandboxError
from ._process import _Worker
from ._site import mark_used

if TYPE_CHECKING:
    from ._fleet import _Slot
    from ._template import Template

_TEACHING: set[asyncio.Task[None]] = set()  # the running `_teach_from` tasks, kept referenced


#: Seconds after a forked worker's hello before its template makes the next spare child.
SPARE_DELAY = 0.2


class ForkedProcess:
    """The parts of `asyncio.subprocess.Process` the launcher uses, for a worker forked from a template."""

    def __init__(self, pid: int, ended: asyncio.Future[int], stderr: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stderr = stderr
        self._ended = ended

    @property
    def returncode(self) -> int | None:
        return self._ended.result() if self._ended.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)


class WorkerForker:
    """The part of `SandboxRunner` that starts its worker from the plugin's template."""

    def _teach(self, w: _Worker) -> None:
        """After `w`'s first call: once per template, send it the modules `w` imported (`Template.teach`)."""
        template, w.template = w.template, None
        if template is None or template.taught or template.dead:
            return
        template.taught = True
        task = asyncio.create_task(self._teach_from(w, template))
        _TEACHING.add(task)
        task.add_done_callback(_TEACHING.discard)

    async def _teach_from(self, w: _Worker, template: Template) -> None:
        runner: Any = self
        try:
            names = await runner._call(w, "modules", {}, what="modules", seconds=5.0, touch=False)
        except PluginError:
            return
        if isinstance(names, list):
            template.teach(names, runner._runtime.site)

    async def _spawn_forked(self, template: Template, slot: _Slot | None) -> _Worker:
        """A worker forked from `template`, said hello and placed in its memory cgroup, like `_spawn`'s."""
        from ._launch import START_TIMEOUT, _add_all, _children, _grow_pipe

        runner: Any = self
        mark_used(runner._runtime.site)
        memory = runner.manifest.resources.memory_bytes if _cgroup.wanted() else None
        network = runner.manifest.resources.network_access
        data = runner._data_dir()
        request = {"uid": runner.uid, "data": data.name if data is not None else None,
                   "rw": runner.manifest.security.file_permissions == "read-write",
                   "seccomp": _seccomp.filter_bytes(network).hex()}
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        _grow_pipe(out_r)
        _grow_pipe(in_w)
        try:
            limits = (runner.limits_text(False), runner.limits_text(True))  # without, with a memory cgroup
            child, ended, group = await template.fork(request, (in_r, out_w, err_w), memory, limits)
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        loop = asyncio.get_running_loop()
        stderr = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stderr), os.fdopen(err_r, "rb", 0))
        pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(in_w, "wb", buffering=0))
        w = _Worker(ForkedProcess(child, ended, stderr), pipe)  # type: ignore[arg-type]
        if not template.taught:
            w.template = template
        w.cgroup = group
        await runner._attach(w, out_r, slot)
        try:
            await asyncio.wait_for(asyncio.shield(w.hello), START_TIMEOUT)
        except TimeoutError:
            runner._kill(w, f"did not start within {START_TIMEOUT:g} s")
            await runner._reap(w)
            raise SandboxError(f"plugin {runner.record.name!r}: forked worker did not start within "
                               f"{START_TIMEOUT:g} s; stderr: {runner._stderr(w)[-500:]}") from None
        except SandboxError:
            await runner._reap(w)
            raise
        except asyncio.CancelledError:
            runner._kill(w, "start was cancelled", crash=False)
            raise
        with contextlib.suppress(OSError):
            w.child_pid = next(iter(_children(child)), None)
            if w.child_pid is not None:
                w.pidfd = os.pidfd_open(w.child_pid)
        if w.child_pid is None:
            runner._kill(w, "its process could not be found", crash=False)
            await runner._reap(w)
            raise SandboxError(f"plugin {runner.record.name!r}: the forked worker's process could not be found")
        # the next start's child, once this worker's initialize and first call are likely done: its fork and
        # cgroup moves would slow them (a move holds up forks machine-wide for an RCU grace period)
        loop.call_later(SPARE_DELAY, template.prepare, memory)
        if group is not None:  # checked before `initialize`: no plugin code of this tenant has run yet
            try:
                inside = group.pids()
                missing = [p for p in (child, w.child_pid, *_children(w.child_pid)) if p not in inside]
                if missing:
                    await asyncio.to_thread(_add_all, group, missing)
            except OSError as exc:
                runner._kill(w, f"could not be placed in its memory cgroup {group.path} ({exc})", crash=False)
                await runner._reap(w)
                raise SandboxError(f"plugin {runner.record.name!r}: worker could not be placed in its memory "
                                   f"cgroup {group.path}: {exc}") from None
        return w
