"""A worker template (zygote): one sandboxed process per plugin version that has imported the plugin and its SDK
and forks each tenant's worker when the host asks, so a worker starts in milliseconds instead of an import.

It runs inside bubblewrap as the template's own uid: inner uid 0 of a user namespace the host made with the
tenants' uids mapped in it (`_userns`), every capability dropped, a seccomp filter that still lets a child make
namespaces and mounts. It has run no tenant's `initialize` and never sees a config or a secret. Started as
`python -I -S -B -c <launch> <site> <limits> <loop> <module> <attr>` with its control socket (SOCK_SEQPACKET,
JSON messages) as fd 0. Imports only the standard library, msgpack, the worker's modules and the plugin.

A fork takes four processes (three only wait, and share nearly all their memory with the template):
- ahead of any tenant (the host keeps one such spare ready), the template forks C, which unshares a user
  namespace and then mount, PID, IPC, UTS (and, without network, network) namespaces, and forks G, PID 1 of the
  new PID namespace, which mounts its own /proc and /tmp; then C says so;
- for a tenant, the host has the namespace's holder map the tenant's uid there (the host's uid for that tenant,
  as a plain worker has), then sends `go` with the request and the worker's three pipes, which the template
  hands to C over C's own socket and closes; C takes the tenant's uid and hands both on to G, then only waits
  for G and ends as G ended;
- G takes the tenant's uid, binds its tenant's data folder at /data and hides the others, drops every
  capability, sets no_new_privs and the worker's own seccomp filter, and forks W, the worker (PID 2, as under
  bubblewrap); G then only waits, as bubblewrap's PID 1 does;
- W takes the three pipes the host sent as its stdin, stdout and stderr, and runs `_worker.main`: hello.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 22, 38, 47
_CAP_VERSION_3 = 0x20080522
_MAX_MESSAGE = 1 << 16
_libc: Any = None


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _call(name: str, *args: Any) -> None:
    """Call libc's `name`; OSError naming it when it fails."""
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _prctl(option: int, arg: int = 0) -> None:
    _call("prctl", ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _call("mount", *(None if s is None else s.encode() for s in (source, target, fstype)), ctypes.c_ulong(flags),
          None if data is None else data.encode())


def _send(ctl: socket.socket, msg: dict[str, Any]) -> None:
    ctl.send(json.dumps(msg).encode())


# --- the template --------------------------------------------------------------------------------------------


def main() -> None:
    """Set up like a worker, import the plugin, report, then fork workers until the host closes the socket."""
    global _libc
    # as Python's gc docs advise for fork without exec: no collection in the template (one would free "holes"
    # in pages that every child's allocations then fill, copying them, and costs ≈ 80 ms with an SDK
    # imported), everything frozen before the forks, collections back on in each worker
    gc.disable()
    site, limits, loop_kind, module, attr = sys.argv[1:6]
    worker = sys.modules["_worker"]
    os.closerange(3, 1 << 16)
    ctl = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # a plugin's print() at import goes to the template's stderr
    os.close(null)
    worker.set_limits(limits)
    sys.path.insert(0, site)
    _libc = ctypes.CDLL(None, use_errno=True)
    worker.rpc = worker._load_rpc()
    error = _preload(loop_kind, module, attr)
    threads = _threads()
    if error is None and threads != 1:
        error = (f"importing {module} started {threads - 1} thread(s); a template forks, so it must stay "
                 "single-threaded")
    gc.freeze()  # what the template made stays out of the children's collections: their pages stay shared
    _send(ctl, {"t": "ready"} if error is None else {"t": "error", "message": error[:2000]})
    if error is None:
        _serve(ctl, site, loop_kind)


def _threads(wait: float = 1.0) -> int:
    """How many threads this process has, once those already finished are gone: a thread that was joined can
    linger in the kernel a moment after `join()` returns (an SDK that ran something in an executor it shut
    down). Waits up to `wait` seconds for the count to fall to one."""
    deadline = time.monotonic() + wait
    while True:
        count = len(os.listdir("/proc/self/task"))
        if count == 1 or time.monotonic() >= deadline:
            return count
        time.sleep(0.002)


def _preload(loop_kind: str, module: str, attr: str) -> str | None:
    """Import what every worker would: the event loop, the worker's own modules and the plugin's; an error or None."""
    import asyncio  # noqa: F401
    import collections.abc  # noqa: F401
    import concurrent.futures  # noqa: F401
    import contextvars  # noqa: F401
    import importlib
    import logging  # noqa: F401
    import types  # noqa: F401

    if loop_kind == "auto":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
    try:
        for name in ("_hookspecs", "_interface", "_context", "_services", "_redact"):
            importlib.import_module(f"erp_plugins_core.{name}")
        getattr(importlib.import_module(module), attr)
    except BaseException as exc:  # the worker's `load` says it again, the plain way
        return f"cannot import {module}:{attr}: {type(exc).__name__}: {exc}"
    return None


def _serve(ctl: socket.socket, site: str, loop_kind: str) -> None:
    """Answer `spare` (fork a child), `go` (hand it its request and pipes), `abort` and `preload`; report each
    child's `forked` (its user namespace made) and `exit`."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(ctl.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    notes: dict[int, tuple[int, int]] = {}  # C's note pipe -> (request id, C's pid)
    children: dict[int, tuple[int, socket.socket | None]] = {}  # C's pid -> (request id, its socket until `go`)
    while True:
        for fd, _ in poller.poll():
            if fd == ctl.fileno():
                data, fds, flags, _ = socket.recv_fds(ctl, _MAX_MESSAGE, 3)
                if not data:
                    os._exit(0)  # the host is gone; the children follow by their parent-death signal
                try:
                    msg = json.loads(data) if not flags & socket.MSG_TRUNC else {}
                except ValueError:
                    msg = {}
                if "t" not in msg:  # a message cut or garbled: none of ours is, so it is dropped, not obeyed
                    for f in fds:
                        os.close(f)
                    continue
                if msg["t"] == "spare":
                    pid, note_r, sock = _fork(msg, site, loop_kind)
                    notes[note_r] = (msg["id"], pid)
                    children[pid] = (msg["id"], sock)
                    poller.register(note_r, select.POLLIN)
                elif msg["t"] == "preload":
                    _preload_more(ctl, msg["modules"])
                else:  # `go` or `abort` for the child of request `id`
                    pid = next((p for p, (i, _) in children.items() if i == msg["id"]), None)
                    sock = children[pid][1] if pid is not None else None
                    if sock is not None:
                        if msg["t"] == "go":
                            with contextlib.suppress(OSError):  # a child that died meanwhile is reported
                                socket.send_fds(sock, [data], fds)
                        sock.close()  # after `abort`, C reads end of file and exits
                        children[pid] = (msg["id"], None)  # type: ignore[index]
                for f in fds:
                    os.close(f)
            elif fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                _reap(ctl, children)
            else:
                request, pid = notes.pop(fd)
                poller.unregister(fd)
                said = os.read(fd, 1)
                os.close(fd)
                if said == b"u":
                    _send(ctl, {"t": "forked", "id": request, "pid": pid})


def _preload_more(ctl: socket.socket, modules: list[str]) -> None:
    """Import what the host saw a worker import after its start (lazy imports of the SDK's first calls), so
    the next workers find it imported and shared. A module that starts a thread ends the template: it could
    no longer fork safely, and the host starts its workers afresh from then on."""
    import importlib

    for name in modules:
        if isinstance(name, str) and name not in sys.modules:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: S112 - a module this process cannot import is simply not shared
                continue
    threads = _threads()
    if threads != 1:
        _send(ctl, {"t": "error", "message": f"preloading started {threads - 1} thread(s)"})
        os._exit(0)
    gc.freeze()


def _reap(ctl: socket.socket, children: dict[int, tuple[int, socket.socket | None]]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        request, sock = children.pop(pid, (None, None))
        if sock is not None:
            sock.close()
        if request is not None:
            _send(ctl, {"t": "exit", "id": request, "status": os.waitstatus_to_exitcode(status)})


def _fork(spare: dict[str, Any], site: str, loop_kind: str) -> tuple[int, int, socket.socket]:
    """Fork C, a child with no tenant yet (`spare`: its network and /tmp size); (its pid, the pipe it says `u`
    on once it and its G are ready, the socket its request comes on)."""
    note_r, note_w = os.pipe()
    mine, its = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            keep = sorted({0, 1, 2, note_w, its.fileno()})  # nothing of the template or of other children
            for low, high in zip(keep, [*keep[1:], 1 << 16], strict=True):
                os.closerange(low + 1, high)
            _child(spare, its, note_w, site, loop_kind)
        except BaseException as exc:
            _die([], f"erp-plugins template: the tenant's worker could not be set up: {exc}")
    os.close(note_w)
    its.close()
    return pid, note_r, mine


def _die(fds: list[int], message: str) -> None:
    """Say why on the worker's stderr (the template's once C closed it) and exit 70."""
    data = (message + "\n").encode(errors="replace")
    for fd in (fds[2] if len(fds) == 3 else 2, 2):
        try:
            os.write(fd, data)
            break
        except OSError:
            continue
    os._exit(70)


# --- the tenant's side ---------------------------------------------------------------------------------------


def _child(spare: dict[str, Any], sock: socket.socket, note_w: int, site: str, loop_kind: str) -> None:
    """C: a user namespace, the worker's other namespaces and G, ready before any tenant; then, once the host
    mapped a tenant's uid there, the request and pipes: the uid, and both handed on to G. Never returns."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _call("unshare", ctypes.c_int(CLONE_NEWUSER))  # C holds every capability in it, and only in it
    _call("unshare", ctypes.c_int(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
                                  | (0 if spare["network"] else CLONE_NEWNET)))
    to_g, g_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            sock.close()
            to_g.close()
            os.close(note_w)
            _grandchild(spare, g_end, site, loop_kind)
        except BaseException as exc:
            _die([], f"erp-plugins template: the tenant's worker could not be set up: {exc}")
    g_end.close()
    os.write(note_w, b"u")
    os.close(note_w)
    data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
    sock.close()
    if not data or len(fds) != 3:
        os._exit(71)  # aborted by the host, or the template ended: G reads end of file and ends too
    try:
        uid = int(json.loads(data)["uid"])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        os.setsid()
        socket.send_fds(to_g, [data], fds)
    except BaseException as exc:
        _die(fds, f"erp-plugins template: the tenant's worker could not be set up: {exc}")
    to_g.close()
    for f in fds:
        os.close(f)
    _end_as(pid, init=False)


def _end_as(pid: int, *, init: bool) -> None:
    """Wait for child `pid` and end as it ended. PID 1 of a namespace cannot die of its own signal: it exits
    128+N instead, as bubblewrap does; the host reads both ways."""
    while True:  # as PID 1, also reap the orphans the namespace's other processes leave
        done, status = os.waitpid(-1 if init else pid, 0)
        if done == pid:
            break
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if not init:
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _grandchild(spare: dict[str, Any], sock: socket.socket, site: str, loop_kind: str) -> None:
    """G, PID 1: its own /proc and /tmp before any tenant; with the request, the tenant's uid and data folder,
    no capabilities, the worker's filter, then the worker itself (W) to wait for."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(spare['tmp'])},mode=1777")  # noqa: S108
    data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
    sock.close()
    if not data or len(fds) != 3:
        os._exit(71)
    try:
        _specialize(json.loads(data), fds, site, loop_kind)
    except BaseException as exc:
        _die(fds, f"erp-plugins template: the tenant's worker could not be set up: {exc}")


def _specialize(msg: dict[str, Any], fds: list[int], site: str, loop_kind: str) -> None:
    """G, with its request: the tenant's uid and /data, no capabilities, the worker's filter, then W."""
    uid = int(msg["uid"])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if msg.get("data") is not None:
        name = str(msg["data"])
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad data folder name {name!r}")
        _mount(f"/.data/{name}", "/data", None, MS_BIND | MS_REC)
        if not msg["rw"]:
            _mount(None, "/data", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if os.path.isdir("/.data"):  # the other tenants' folders: hidden under an empty, read-only tmpfs
        _mount("tmpfs", "/.data", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0")
    _drop_privileges(bytes.fromhex(msg["seccomp"]))
    pid = os.fork()  # the worker is PID 2, as under bubblewrap: PID 1 ignores signals it has no handler for
    if pid == 0:
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            os.setsid()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            sys.argv[1:] = [site, str(msg["limits"]), loop_kind]
            gc.enable()
            sys.modules["_worker"].main()
        except BaseException as exc:
            _die(fds, f"erp-plugins template: the tenant's worker could not be started: {exc}")
        os._exit(0)
    for f in fds:
        os.close(f)
    _end_as(pid, init=True)


def _drop_privileges(bpf: bytes) -> None:
    """No capability in any set (bounding and ambient included), no_new_privs, then the worker's seccomp filter."""
    for cap in range(64):
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            break  # past the last capability this kernel knows
    _call("prctl", ctypes.c_int(PR_CAP_AMBIENT), ctypes.c_ulong(4), ctypes.c_ulong(0), ctypes.c_ulong(0),
          ctypes.c_ulong(0))  # PR_CAP_AMBIENT_CLEAR_ALL
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _call("capset", ctypes.byref(header), data)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    _call("prctl", ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(2), ctypes.byref(prog), ctypes.c_ulong(0),
          ctypes.c_ulong(0))  # SECCOMP_MODE_FILTER
