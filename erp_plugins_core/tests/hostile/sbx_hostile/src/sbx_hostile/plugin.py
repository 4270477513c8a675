# ruff: noqa: ASYNC230, ASYNC251 - hostile on purpose
"""A hostile plugin for the sandbox tests. Every attack is bounded so that it stops by itself even unconfined.

It must only ever be run through the sandbox (the tests fail rather than run it in process).
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import time

from erp_plugins_core._interface import PluginInterface


def _fork_bomb() -> str:
    started, refused = 0, 0
    for _ in range(200):  # bounded: at most 200 forks
        try:
            pid = os.fork()
        except OSError:
            refused += 1
            continue
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        started += 1
    return f"started={started} refused={refused}"


def _memory_bomb() -> str:
    blocks = []
    for _ in range(64):  # bounded: 64 x 32 MB = 2 GB
        blocks.append(bytearray(32 * 1024 * 1024))
    return f"allocated {len(blocks) * 32} MB"


def _touch_memory() -> str:
    blocks = []
    for _ in range(64):  # bounded: 64 x 16 MB = 1 GB, every page written (counted by a memory cgroup)
        blocks.append(b"x" * (16 * 1024 * 1024))
    return f"touched {len(blocks) * 16} MB"


def _spin(seconds: float) -> str:
    """Burn CPU in the worker's own thread (bounded by `seconds` of wall time)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return f"spun {n}"


def _try(fn) -> str:
    try:
        result = fn()
    except OSError as exc:
        return f"refused: {type(exc).__name__} {exc.errno}"
    return f"done: {str(result)[:200]}"


def _probe(pid: int) -> dict:
    """Every way this worker might reach process `pid` (a host pid: another tenant's worker, a template)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> int:
        if result < 0 or (what == "ptrace" and result != 0):
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return result

    buf = ctypes.create_string_buffer(64)
    local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
    remote = (ctypes.c_void_p * 2)(0x400000, 64)
    return {
        "signal": _try(lambda: os.kill(pid, 0)),
        "ptrace": _try(lambda: check(libc.ptrace(16, pid, None, None), "ptrace")),
        "process_vm_readv": _try(lambda: check(libc.process_vm_readv(pid, local, 1, remote, 1, 0), "vm_readv")),
        "mem": _try(lambda: open(f"/proc/{pid}/mem", "rb").read(1)),
        "environ": _try(lambda: open(f"/proc/{pid}/environ", "rb").read()),
        "channel": _try(lambda: open(f"/proc/{pid}/fd/0", "wb").write(b"x")),
    }


def _look_around() -> str:
    """All this worker can read of other processes and shared folders: their command lines, environments and
    files (bounded), for a test to search for another tenant's secret."""
    seen = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            for name in ("cmdline", "environ"):
                seen.append(_try(lambda: open(f"/proc/{entry}/{name}", "rb").read(4096)))
    for folder in ("/tmp", "/data", "/.data", "/dev/shm"):
        for root, _, names in os.walk(folder):
            for name in names[:50]:
                seen.append(_try(lambda: open(os.path.join(root, name), "rb").read(4096)))
    return "\n".join(seen)


class Plugin(PluginInterface):
    async def initialize(self, config: dict, context) -> bool:
        self.config = dict(config)  # in this worker's memory only
        return True

    async def attack(self, prompt: str, context: dict) -> str:
        kind, _, arg = prompt.partition(":")
        if kind == "probe":
            import json

            return json.dumps({"pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                               "uid": os.getuid(), "target": _probe(int(arg))})
        if kind == "look":
            return _look_around()
        if kind == "gc":  # whether this worker collects its own garbage, and what it inherited frozen
            import gc

            return f"{gc.isenabled()} {gc.get_freeze_count() > 0}"
        if kind == "import":  # a lazy import, as an SDK makes at its first call
            import importlib

            importlib.import_module(arg)
            return "imported"
        if kind == "raise":
            raise ValueError("hostile failure")
        if kind == "hang":
            time.sleep(120)  # blocks the worker's loop; the host's timeout must kill it
            return "woke up"
        if kind == "exit":
            os._exit(3)
        if kind == "segfault":
            ctypes.string_at(0)
        if kind == "memory":
            return _memory_bomb()
        if kind == "touch":
            return _touch_memory()
        if kind == "logflood":
            logger = logging.getLogger("erp_plugins.plugin.sbx_hostile")
            for i in range(int(arg)):
                logger.warning("flood %d", i)
            return "flooded"
        if kind == "spin":
            return _spin(float(arg or 30))
        if kind == "fork":
            return _fork_bomb()
        if kind == "connect":
            with socket.create_connection(("127.0.0.1", int(arg)), timeout=2) as s:
                s.sendall(b"leak")
            return "connected"
        if kind == "write":
            with open(arg, "w") as fh:
                fh.write("escaped")
            return "written"
        if kind == "remount":
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.mount(None, b"/", None, 32 | 0x20, None) != 0:  # MS_REMOUNT | MS_BIND? any remount
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), "/")
            with open("/escaped-remount", "w") as fh:
                fh.write("x")
            return "remounted"
        if kind == "ptrace":
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.ptrace(16, int(arg), None, None) != 0:  # PTRACE_ATTACH
                err = ctypes.get_errno()
                raise OSError(err, f"ptrace: {os.strerror(err)}")
            return "attached"
        if kind == "io_uring":  # io_uring_setup(1, params): a way around seccomp's view of syscalls
            libc = ctypes.CDLL(None, use_errno=True)
            params = ctypes.create_string_buffer(120)
            fd = libc.syscall(425, 1, params)
            if fd < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"io_uring_setup: {os.strerror(err)}")
            os.close(fd)
            return "io_uring ring created"
        if kind == "loop":
            import asyncio

            return type(asyncio.get_running_loop()).__module__
        if kind == "kill":
            os.kill(int(arg), 9)
            return "killed"
        if kind == "flood":
            for fd in range(3, 16):  # the pipe to the host is one of these
                try:
                    os.write(fd, (0x7FFFFFFF).to_bytes(4, "big") + b"\x00" * 1024)
                except OSError:
                    continue
            time.sleep(5)
            return "flooded"
        if kind == "garbage":
            for fd in range(3, 16):
                try:
                    os.write(fd, (5).to_bytes(4, "big") + b"\xc1\xc1\xc1\xc1\xc1")
                except OSError:
                    continue
            time.sleep(5)
            return "garbage sent"
        if kind == "print":
            print("not a frame " * 1000)
            return "printed"
        return "harmless"

    async def stream(self, prompt: str, context: dict):
        for i in range(3):
            yield f"h{i}"
            if prompt.startswith("stall:"):  # then nothing for longer than its timeout
                time.sleep(float(prompt.partition(":")[2]))

    async def read_path(self, file_path: str, folder_id: str | None) -> str:
        with open(file_path, "rb") as fh:  # the host's state store: must not be reachable
            return fh.read(64).hex()
