"""Worker templates on the host's side: one per sandboxed plugin version, forking its tenants' workers.

A `Template` is three things: the holder of a user namespace that maps the template's uid and every tenant uid
(`erp_plugins_core._userns`, started as the template's uid; the host writes its maps as root), the template
itself in bubblewrap inside that namespace (`erp_plugins_core._zygote`), and the control socket between host
and template. `fork()` sends the three pipes of a new worker with its tenant's uid, limits, data folder and
seccomp filter, has the holder map the child's uid when the child asks, and returns the child's host pid.

Which templates run, and for how long, is `_template_pool`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _seccomp
from .._errors import SandboxError
from ._availability import UID_BASE, UID_SPAN
from ._command import TMPFS_BYTES

if TYPE_CHECKING:
    from .._cgroup import MemoryCgroup
    from ._runner import SandboxRunner

log = logging.getLogger("erp_plugins.sandbox")

#: Templates' own uids: one per plugin, below the tenants' range.
TEMPLATE_UID_BASE = 1_400_000_000
TEMPLATE_UID_SPAN = 99_000_000
#: How long a template may take to import its plugin and say ready.
READY_TIMEOUT = 60.0
_STDERR_TAIL = 8 * 1024


def template_uid(plugin: str) -> int:
    """The uid a plugin's template runs as (outside the tenants' range)."""
    digest = hashlib.sha256(f"{plugin}\0template".encode()).digest()
    return TEMPLATE_UID_BASE + int.from_bytes(digest[:8], "big") % TEMPLATE_UID_SPAN


def inner_id(uid: int) -> int:
    """A tenant uid's id inside a template's user namespace (0 is the template's own)."""
    if not UID_BASE <= uid < UID_BASE + UID_SPAN:
        raise SandboxError(f"uid {uid} is outside the tenant range the templates map")
    return uid - UID_BASE + 1


@dataclasses.dataclass
class _Spare:
    """A child of the template with no tenant yet: it has made its user namespace and waits for its request."""

    ident: int
    pid: int
    ended: asyncio.Future[int]
    memory: int | None
    group: MemoryCgroup | None


_DROPPING: set[asyncio.Future[None]] = set()  # spares being dropped, kept referenced


def _discard_spare(task: asyncio.Task[_Spare]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a spare that could not be made is made again by the next fork


class Template:
    """One running template; see the module docstring."""

    def __init__(self, key: tuple[Any, ...], plugin: str) -> None:
        self.key = key
        self.plugin = plugin
        self.uid = template_uid(plugin)
        self.pid: int | None = None  # the template's Python, as the host sees it
        self._holder: asyncio.subprocess.Process | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._forked: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._map_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._stderr = bytearray()
        self.dead = False
        self.taught = False  # sent the modules a worker of it imported (once: `teach`)
        self.failure: str | None = None  # why it said it cannot go on, if it did
        self.network = False  # whether its workers have the network (its runners' manifest), set by `start`
        self._making: asyncio.Task[_Spare] | None = None  # the next spare child, being made or ready

    def __repr__(self) -> str:
        return f"Template({self.plugin!r}, pid={self.pid}, dead={self.dead})"

    async def start(self, runner: SandboxRunner) -> None:
        """Start holder and template for `runner`'s plugin; SandboxError (with the template's words) if it fails."""
        from ._launch import _as_user, _children, _read_all

        runtime = runner._runtime
        assert runtime is not None
        self.network = runner.manifest.resources.network_access
        script = f"{runtime.site}/erp_plugins_core/_userns.py"
        self._holder = await asyncio.create_subprocess_exec(
            runtime.python, "-I", "-S", "-B", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True, cwd="/", env={}, **_as_user(self.uid))
        assert self._holder.stdout is not None
        said = (await asyncio.wait_for(self._holder.stdout.readline(), READY_TIMEOUT)).decode().strip()
        if said != "ready":
            raise SandboxError(f"the user namespace of the template could not be made: {said or 'no answer'}")
        pid = self._holder.pid
        _write_maps(pid, f"0 {self.uid} 1\n1 {UID_BASE} {UID_SPAN}\n")  # the template's own uid and every tenant's
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
        host_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        seccomp_fd = _seccomp.filter_fd(runner.manifest.resources.network_access, template=True)
        info_r, info_w = os.pipe()
        try:
            argv = runner.template_argv(info_w, seccomp_fd, userns)
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=template_end.fileno(), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, pass_fds=(seccomp_fd, info_w, userns), start_new_session=True,
                cwd="/", env={}, **_as_user(self.uid))
        finally:
            for fd in (seccomp_fd, info_w, userns):
                os.close(fd)
            template_end.close()
        host_end.setblocking(False)
        self._sock = host_end
        drain = asyncio.create_task(self._drain_stderr())
        try:
            ready = await asyncio.wait_for(self._recv(), READY_TIMEOUT)
            info = json.loads((await asyncio.to_thread(_read_all, info_r)).decode() or "{}")
        except (TimeoutError, OSError, ValueError) as exc:
            await self.close()
            raise SandboxError(f"the template did not start ({type(exc).__name__}: {exc}); stderr: "
                               f"{self.stderr()[-500:]}") from None
        finally:
            os.close(info_r)
        if ready.get("t") != "ready":  # it said why (the plugin's import failed or started threads): for good
            self.failure = str(ready.get("message") or f"the template did not start: {self.stderr()[-500:]}")
            await self.close()
            raise SandboxError(self.failure)
        init = int(info.get("child-pid", 0))
        self.pid = next(iter(_children(init)), None) if init else None
        if self.pid is None:
            await self.close()
            raise SandboxError("the template's process could not be found")
        self._reader = asyncio.create_task(self._read())
        self._reader.add_done_callback(lambda _: drain.cancel())

    async def fork(self, request: dict[str, Any], fds: tuple[int, int, int], memory: int | None,
                   limits: tuple[str, str]) -> tuple[int, asyncio.Future[int], MemoryCgroup | None]:
        """A worker for `request` (uid, data, rw, seccomp) with `fds` as its stdin, stdout and
        stderr, in a memory cgroup of `memory` bytes where one can be made (None: no cgroup wanted), with the
        rlimits `limits[1]` in a cgroup, else `limits[0]`: (the child's host pid, a future of its exit status,
        its cgroup).

        The child is the spare `prepare` made after the last start (already in its cgroup) or, without one, a
        new one. Only mapping the uid and handing over are left."""
        if self.dead or self._sock is None:
            raise SandboxError("the plugin's template is not running")
        spare = await self._take_spare(memory)
        try:
            await self._map(spare.pid, int(request["uid"]))
            message = {**request, "limits": limits[spare.group is not None], "t": "go", "id": spare.ident}
            socket.send_fds(self._sock, [json.dumps(message).encode()], list(fds))
        except BaseException:
            await self._drop(spare)
            raise
        return spare.pid, spare.ended, spare.group

    def prepare(self, memory: int | None) -> None:
        """Start making the next spare child (`fork` takes it), unless one is ready or being made: called a
        moment after a start, so that the spare's fork and cgroup moves slow no start."""
        making = self._making
        if self.dead or making is not None and not (making.done() and (making.cancelled() or making.exception())):
            return  # one is being made or ready
        self._making = asyncio.create_task(self._spare(memory))
        self._making.add_done_callback(_discard_spare)

    async def _take_spare(self, memory: int | None) -> _Spare:
        making, self._making = self._making, None
        if making is not None:
            with contextlib.suppress(SandboxError, OSError):
                spare = await asyncio.shield(making)
                if not spare.ended.done() and spare.memory == memory:
                    return spare
                await self._drop(spare)
        return await self._spare(memory)

    async def _spare(self, memory: int | None) -> _Spare:
        """Have the template fork a child (its namespaces and PID 1 made, it waits), and put them in a new cgroup."""
        from .._cgroup import MemoryCgroup
        from ._launch import _add_all, _children, _say_no_cgroup

        loop = asyncio.get_running_loop()
        ident = next(self._ids)
        forked = self._forked[ident] = loop.create_future()
        ended = self._exits[ident] = loop.create_future()
        ended.add_done_callback(lambda _: self._exits.pop(ident, None))
        try:
            self._send({"t": "spare", "id": ident, "network": self.network, "tmp": TMPFS_BYTES})
            child = self._host_pid(await forked)
        finally:
            self._forked.pop(ident, None)
        spare = _Spare(ident, child or 0, ended, memory, None)
        if child is None:
            await self._drop(spare)
            raise SandboxError("the forked worker could not be found")
        if memory is not None:
            spare.group = MemoryCgroup.create(memory)
            if spare.group is None:
                _say_no_cgroup()
            else:  # C and its G now: the worker G forks later is born in the group
                with contextlib.suppress(OSError):  # checked after the worker's hello, and said there
                    await asyncio.to_thread(_add_all, spare.group, [child, *_children(child)])
        return spare

    async def _drop(self, spare: _Spare) -> None:
        """End an unused child and remove its cgroup."""
        with contextlib.suppress(SandboxError, OSError):
            self._send({"t": "abort", "id": spare.ident})
        if spare.group is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(spare.ended), 2.0)
            spare.group.remove()

    def teach(self, modules: list[str], site: str) -> None:
        """Have the template import `modules`, what a worker forked from it imported by its first call's end
        (the SDK's lazy imports), so the next workers start with them imported and shared. Only names of the
        runtime site's packages and of the standard library are passed on (a worker is not trusted)."""
        names = preload_names(modules, site)
        if names and not self.dead:
            with contextlib.suppress(OSError, SandboxError):
                self._send({"t": "preload", "modules": names})
            making, self._making = self._making, None  # a spare forked before the preload lacks it
            if making is not None:
                task = asyncio.ensure_future(self._drop_making(making))
                _DROPPING.add(task)
                task.add_done_callback(_DROPPING.discard)

    async def _drop_making(self, making: asyncio.Task[_Spare]) -> None:
        with contextlib.suppress(SandboxError, OSError, asyncio.CancelledError):
            await self._drop(await making)

    async def close(self) -> None:
        """End holder and template (their workers end with them: they die with their parent)."""
        self.dead = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for proc in (self._proc, self._holder):
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._fail_all()
        making, self._making = self._making, None
        if making is not None and making.done() and not making.cancelled() and making.exception() is None:
            spare = making.result()
            if spare.group is not None:
                for _ in range(40):  # its processes died with the template; the group empties soon after
                    if spare.group.remove():
                        break
                    await asyncio.sleep(0.025)
        elif making is not None:
            making.cancel()

    def stderr(self) -> str:
        return self._stderr.decode(errors="replace")

    # --- inside ------------------------------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        if self._sock is None:
            raise SandboxError("the plugin's template is not running")
        self._sock.send(json.dumps(msg).encode())

    async def _recv(self) -> dict[str, Any]:
        assert self._sock is not None
        data = await asyncio.get_running_loop().sock_recv(self._sock, 1 << 16)
        if not data:
            raise OSError("the template closed its socket")
        return json.loads(data)

    async def _read(self) -> None:
        """Route the template's `forked` and `exit` messages until it ends."""
        try:
            while True:
                msg = await self._recv()
                if msg.get("t") == "error":  # it cannot fork any more (a preload started a thread): it ends
                    self.failure = str(msg.get("message"))[:300]
                table = self._forked if msg.get("t") == "forked" else self._exits if msg.get("t") == "exit" else {}
                fut = table.get(int(msg.get("id", 0)))
                if fut is not None and not fut.done():
                    fut.set_result(int(msg["pid"] if msg["t"] == "forked" else msg["status"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not self.dead:
            said = self.failure or self.stderr().strip().rpartition("\n")[2][-300:]
            log.warning("the worker template of plugin %r ended%s; its tenants' workers start afresh", self.plugin,
                        f" ({said})" if said else "")
            await self.close()

    def _fail_all(self) -> None:
        for table, value in ((self._forked, None), (self._exits, -signal.SIGKILL)):
            for fut in list(table.values()):
                if not fut.done():
                    if value is None:
                        fut.set_exception(SandboxError(f"the worker template ended: {self.stderr()[-300:]}"))
                    else:
                        fut.set_result(value)

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while chunk := await self._proc.stderr.read(65536):
            self._stderr += chunk
            del self._stderr[:-_STDERR_TAIL]

    async def _map(self, pid: int, uid: int) -> None:
        """Have the holder map `uid` into the user namespace of child `pid`."""
        holder = self._holder
        assert holder is not None and holder.stdin is not None and holder.stdout is not None
        async with self._map_lock:
            holder.stdin.write(f"{pid} {uid} {inner_id(uid)}\n".encode())
            await holder.stdin.drain()
            said = (await holder.stdout.readline()).decode().strip()
        if said != "ok":
            raise SandboxError(f"the tenant's uid could not be mapped for its worker: {said or 'holder ended'}")

    def _host_pid(self, inner: int) -> int | None:
        """The host pid of the template's child whose pid in the template's namespace is `inner`."""
        from ._launch import _children

        for pid in _children(self.pid) if self.pid is not None else []:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == inner:
                        return pid
        return None


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: Standard modules with side effects when imported; never preloaded.
_NEVER = frozenset({"antigravity", "this", "idlelib", "turtle", "turtledemo", "tkinter", "__hello__", "__phello__",
                    "test", "__main__"})
_MAX_PRELOAD = 4000
_MAX_PRELOAD_BYTES = 48 * 1024  # the message must fit the template's 64 KiB read of one packet


def preload_names(modules: list[str], site: str) -> list[str]:
    """The names of `modules` a template may import: well-formed, of the runtime `site`'s top-level packages or
    of the standard library (none with import-time side effects), at most `_MAX_PRELOAD` and 48 KiB of them."""
    try:
        tops = {entry.split(".")[0] for entry in os.listdir(site) if not entry.endswith((".dist-info", ".pth"))}
    except OSError:
        tops = set()
    tops |= set(sys.stdlib_module_names) - _NEVER
    names, size = [], 0
    for m in modules[:_MAX_PRELOAD * 4]:
        if isinstance(m, str) and len(m) < 200 and _MODULE.fullmatch(m) and m.split(".")[0] in tops:
            size += len(m) + 4
            if len(names) == _MAX_PRELOAD or size > _MAX_PRELOAD_BYTES:
                break
            names.append(m)
    return names


def _write_maps(pid: int, lines: str) -> None:
    """As root: the uid and gid maps of process `pid`'s new user namespace (a few bytes to /proc, no I/O wait)."""
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    for kind in ("uid_map", "gid_map"):
        Path(f"/proc/{pid}/{kind}").write_text(lines)
