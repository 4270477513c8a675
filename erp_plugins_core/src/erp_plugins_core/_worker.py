"""The sandboxed worker: runs one plugin instance inside bubblewrap and answers the host over its pipe.

Started as `python -I -S -B <this file> <site dir> <NAME=soft:hard,...> <auto|asyncio>` (a path, limits and
the event loop to run; never config or secrets). Before anything of the plugin is imported it sets its
resource limits, moves the pipe to private descriptors (so the plugin's `print()` goes to stderr, not into the
protocol) and closes every other inherited descriptor. It imports only the standard library and msgpack
(and uvloop once it greeted the host) until the host asks it to load the plugin. Config, permissions and
secret values arrive over the pipe with `initialize`.

Reading: the event loop reads the host's pipe (non-blocking, `add_reader`) and runs each call as a task, so
a message costs no thread hand-off. A synchronous bridge request (the files service's reader) made on the
loop's own thread (googleapiclient reading an upload inside a hook) reads the pipe inline until its answer
arrives; one made from another thread (`asyncio.to_thread`) waits for the loop to deliver it, and reads the
pipe itself if the loop is blocked. Whoever reads, messages other than bridge answers are run by the loop in
the order they arrived. Nothing imports `threading` before the hello (asyncio imports it later anyway).
"""

from __future__ import annotations

import _thread
import errno
import os
import resource
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the cold start several ms; annotations are strings here anyway
    from typing import Any

_RPC_IN = _RPC_OUT = -1
_write_lock = _thread.allocate_lock()
_packer: Any = None


def _setup(site: str, limits: str) -> None:
    """Limits, private pipe descriptors and the import path; runs before any import of plugin code."""
    global _RPC_IN, _RPC_OUT
    os.closerange(3, 1 << 16)
    set_limits(limits)
    _RPC_IN = os.dup(0)
    _RPC_OUT = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.path.insert(0, site)


def set_limits(limits: str) -> None:
    """Set the rlimits `NAME=soft[:hard],...` (a worker's, or its template's before it imports the plugin)."""
    for item in limits.split(","):
        name, _, value = item.partition("=")
        soft, _, hard = value.partition(":")
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (int(soft), int(hard or soft)))


def _load_rpc() -> Any:
    """Load _rpc.py beside this file without importing the erp_plugins_core package (which is heavier)."""
    from importlib import _bootstrap  # type: ignore[attr-defined]
    from importlib.machinery import ModuleSpec, SourceFileLoader

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rpc.py")
    loader = SourceFileLoader("_erp_plugins_worker_rpc", path)
    spec = ModuleSpec(loader.name, loader, origin=path)
    spec.has_location = True
    module = _bootstrap.module_from_spec(spec)
    loader.exec_module(module)
    return module


rpc: Any = None


def send(msg: dict[str, Any]) -> None:
    """Send one message to the host (any thread); TypeError/ValueError when msgpack or the frame limit refuse it."""
    with _write_lock:  # the packer is not thread-safe, and frames from two threads must not interleave
        rpc.write_all(_RPC_OUT, rpc.encode(msg, _packer))


def _wait_readable(fd: int, timeout: float | None) -> bool:
    """Block until `fd` has data (or EOF), at most `timeout` seconds; True when it has."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


def describe(exc: BaseException, redact: Any = None) -> dict[str, Any]:
    """The `error` map for an exception raised by plugin code."""
    message = str(exc)
    if redact is not None:
        message = redact(message)
    kind = "exception"
    if isinstance(exc, MemoryError):
        kind = "memory"
    elif isinstance(exc, PermissionError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS)
    ):
        kind = "access"
    else:
        errors = sys.modules.get("erp_plugins_core._errors")
        if errors is not None and isinstance(exc, errors.PluginError) and type(exc).__module__ == errors.__name__:
            kind = "plugin"
    retry = getattr(exc, "retry_after", None)
    return {
        "type": type(exc).__name__,
        "message": message[:4000],
        "kind": kind,
        "retry_after": retry if isinstance(retry, (int, float)) and not isinstance(retry, bool) else None,
    }


class Worker:
    """The plugin instance and the calls in flight."""

    def __init__(self, loop: Any) -> None:
        import asyncio
        import collections
        import collections.abc
        import concurrent.futures
        import contextvars
        import types

        self.asyncio = asyncio
        self.futures = concurrent.futures
        self.eager = sys.version_info >= (3, 12)
        self.copy_context = contextvars.copy_context
        self.coroutine_type = types.CoroutineType
        collections.abc.Coroutine.register(_Resumed)
        self.loop = loop
        self.loop_thread = _thread.get_ident()
        self.frames = rpc.FrameReader()
        self.read_lock = _thread.allocate_lock()
        self.inbox: Any = collections.deque()  # messages for the loop, in the order they arrived
        self.scope: tuple[Any, Any, Any] | None = None  # the context variables run_call sets, once loaded
        self.instance: Any = None
        self.hooks: dict[str, str] = {}
        self.context: Any = None
        self.redactor: Any = None
        self.tasks: dict[int, Any] = {}
        self.credit: dict[int, Any] = {}  # call id -> [credit, asyncio.Event]
        self.bridge_waiters: dict[int, Any] = {}
        self.bridge_ids = 0
        self.bridge_lock = _thread.allocate_lock()
        self.call_id: contextvars.ContextVar[int] = contextvars.ContextVar("erp_plugins_worker_call", default=0)
        self.call_usage: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
            "erp_plugins_worker_usage", default=None
        )

    # --- messages from the host ---------------------------------------------------------------------------

    def on_readable(self) -> None:
        """The loop's reader callback: take what the pipe holds, then run the messages."""
        with self.read_lock:
            self.read_some()
        self.run_inbox()

    def read_some(self) -> bool:
        """One non-blocking read: answers go to their waiters, other messages to the inbox; False if nothing.

        The caller holds `read_lock`. End of file or a broken frame from the host ends the worker: nothing
        sensible is left to do.
        """
        try:
            data = os.read(_RPC_IN, self.frames.want())
        except BlockingIOError:
            return False
        try:
            if not data:
                if self.frames.partial:
                    raise rpc.ProtocolViolation("pipe closed in the middle of a frame")
                os._exit(0)
            for payload in self.frames.feed(data):
                msg = rpc.decode(payload, rpc.TO_WORKER, nested=False)  # from the trusted host
                if msg["t"] == "bres":
                    self.deliver(msg)
                else:
                    self.inbox.append(msg)
        except Exception as exc:  # the host broke the protocol
            print(f"erp-plugins worker: {type(exc).__name__}: {exc}", file=sys.stderr)
            os._exit(0)
        return True

    def run_inbox(self) -> None:
        """Run the inbox's messages in order (loop thread only)."""
        inbox = self.inbox
        while inbox:
            msg = inbox.popleft()
            kind = msg["t"]
            if kind == "req":
                self.start_call(msg)
            elif kind == "credit":
                self.add_credit(msg["id"], msg["n"])
            elif kind == "cancel":
                self.cancel_call(msg["id"])

    def deliver(self, msg: dict[str, Any]) -> None:
        """Hand a bridge answer to whoever waits for it (a concurrent or an asyncio future)."""
        with self.bridge_lock:
            fut = self.bridge_waiters.pop(msg["id"], None)
        if fut is None:
            return
        if isinstance(fut, self.futures.Future):
            fut.set_result(msg)
        elif _thread.get_ident() == self.loop_thread:
            if not fut.done():
                fut.set_result(msg)
        else:
            self.loop.call_soon_threadsafe(_resolve, fut, msg)

    def add_credit(self, call: int, n: int) -> None:
        entry = self.credit.get(call)
        if entry is not None:
            entry[0] += n
            entry[1].set()

    def cancel_call(self, call: int) -> None:
        task = self.tasks.get(call)
        if task is not None:
            task.cancel()

    def start_call(self, msg: dict[str, Any]) -> None:
        """Run the call as a Task of its own (its own context) that starts eagerly.

        An eager Task runs up to its first suspension right here, so a call that does not suspend (or whose
        first step sends the reply) costs no loop iteration before its reply; and it is still a real Task:
        `asyncio.current_task()` works from its first line on, as sniffio and anyio need. Python 3.12+ has
        `eager_start`; on 3.11 `start_eager` does the same.
        """
        if self.eager:
            task = self.asyncio.Task(self.run_call(msg), loop=self.loop, eager_start=True)
            running = not task.done()
        else:
            task, running = self.start_eager(self.run_call(msg))
        if running:
            self.tasks[msg["id"]] = task

    def start_eager(self, coro: Any) -> tuple[Any, bool]:
        """Python 3.11's eager Task: the Task for `coro`, and whether `coro` is still running.

        The Task is created first (so it is current during the first step) around a `_Resumed` wrapper, then
        the coroutine's first step runs inline, in the Task's context and with the Task entered as the loop's
        current task. The Task's own first step, which 3.11 always schedules, then finds the coroutine
        finished, or takes over whatever the inline step waits on.
        """
        tasks = self.asyncio.tasks
        ctx = self.copy_context()
        resumed = _Resumed(coro)
        task = self.loop.create_task(resumed, context=ctx)
        try:
            tasks._enter_task(self.loop, task)
        except RuntimeError:  # started from inside another task, not a loop callback: the Task runs it all
            resumed.handed_over = True
            return task, True
        try:
            ctx.run(resumed.first_step)
        finally:
            tasks._leave_task(self.loop, task)
        return task, not resumed.finished

    # --- bridge to the host -------------------------------------------------------------------------------

    def bridge_send(self, op: str, args: dict[str, Any], fut: Any) -> None:
        """Send a bridge request for the current call; its answer will resolve `fut`."""
        with self.bridge_lock:
            self.bridge_ids += 1
            bid = self.bridge_ids
            self.bridge_waiters[bid] = fut
        try:
            send({"t": "breq", "id": bid, "call": self.call_id.get(), "op": op, "args": args})
        except BaseException:
            with self.bridge_lock:
                self.bridge_waiters.pop(bid, None)
            raise

    def bridge_result(self, reply: dict[str, Any]) -> Any:
        if reply["ok"]:
            return reply["value"]
        err = reply["error"] or {"type": "SandboxError", "message": "bridge request failed"}
        from erp_plugins_core import _errors

        cls = getattr(_errors, err["type"], None)
        if isinstance(cls, type) and issubclass(cls, _errors.PluginError):
            raise cls(err["message"])
        if err["type"] == "FileNotFoundError":
            raise FileNotFoundError(err["message"])
        raise _errors.SandboxError(err["message"])

    def bridge_sync(self, op: str, args: dict[str, Any]) -> Any:
        """A bridge request from synchronous code, on the loop's thread or any other."""
        fut = self.futures.Future()
        self.bridge_send(op, args, fut)
        if _thread.get_ident() == self.loop_thread:
            # the loop cannot read while this code blocks it: read the pipe here until the answer is in
            while not fut.done():
                with self.read_lock:
                    got = self.read_some()
                if not got:
                    _wait_readable(_RPC_IN, None)
            if self.inbox:
                self.loop.call_soon(self.run_inbox)
            return self.bridge_result(fut.result())
        while True:
            try:
                return self.bridge_result(fut.result(timeout=0.05))
            except self.futures.TimeoutError:
                pass
            # the loop may be blocked by synchronous plugin code: read the pipe from this thread as well
            if _wait_readable(_RPC_IN, 0.05) and self.read_lock.acquire(timeout=0.05):
                try:
                    self.read_some()
                finally:
                    self.read_lock.release()
                if self.inbox:
                    self.loop.call_soon_threadsafe(self.run_inbox)

    async def bridge_async(self, op: str, args: dict[str, Any]) -> Any:
        if self.asyncio.get_running_loop() is self.loop:
            fut = self.loop.create_future()
            self.bridge_send(op, args, fut)
            return self.bridge_result(await fut)
        cfut = self.futures.Future()  # a plugin running its own event loop in a thread
        self.bridge_send(op, args, cfut)
        return self.bridge_result(await self.asyncio.wrap_future(cfut))

    def note(self, op: str, args: dict[str, Any]) -> None:
        send({"t": "note", "call": self.call_id.get(), "op": op, "args": args})

    # --- calls --------------------------------------------------------------------------------------------

    async def run_call(self, msg: dict[str, Any]) -> None:
        """Run one request in its Task and reply; a hook call goes straight to the plugin (the hot path)."""
        call, op, args = msg["id"], msg["op"], msg["args"]
        self.call_id.set(call)
        usage: dict[str, int] = {}
        scope = self.scope
        if scope is not None:
            files = msg["files"]
            scope[0].set(msg["user"])
            scope[1].set(frozenset(p for p in files if isinstance(p, str)) if files else frozenset())
            scope[2].set(usage)
        try:
            if op == "hook" and self.instance is not None:
                value = getattr(self.instance, args["method"])(**args["kwargs"])
                if type(value) is self.coroutine_type or self.awaitable(value):
                    value = await value
            else:
                value = await self.dispatch(call, op, args)
        except BaseException as exc:  # everything the plugin raises goes back to the host
            if isinstance(exc, self.asyncio.CancelledError):
                reply = {"t": "res", "id": call, "ok": False, "value": None, "usage": usage,
                         "error": {"type": "CancelledError", "message": "cancelled", "kind": "cancelled",
                                   "retry_after": None}}
            else:
                redact = self.redactor.redact if self.redactor is not None else None
                reply = {"t": "res", "id": call, "ok": False, "value": None, "usage": usage,
                         "error": describe(exc, redact)}
        else:
            reply = {"t": "res", "id": call, "ok": True, "value": value, "usage": usage, "error": None}
        finally:
            self.tasks.pop(call, None)
            self.credit.pop(call, None)
        try:
            send(reply)
        except (TypeError, ValueError) as exc:  # a result msgpack cannot carry, or one past the frame limit
            send({"t": "res", "id": call, "ok": False, "value": None, "usage": usage,
                  "error": {"type": "TypeError", "message": f"result cannot be sent to the host: {exc}",
                            "kind": "exception", "retry_after": None}})

    def awaitable(self, result: Any) -> bool:
        """Whether a hook method's result is awaited: a coroutine (of any kind) or a Future."""
        return self.asyncio.iscoroutine(result) or isinstance(result, self.asyncio.Future)

    async def dispatch(self, call: int, op: str, args: dict[str, Any]) -> Any:
        """Every operation but a hook call on a loaded plugin (which `run_call` does itself)."""
        if op == "ping":
            return None
        if op == "modules":  # what this worker has imported: its template imports the same (`_zygote`)
            return sorted(sys.modules)
        if op == "load":
            return self.load(args["module"], args["attr"], args["hooks"])
        instance = self.instance
        if instance is None:
            raise RuntimeError("plugin is not loaded")
        if op == "initialize":
            return await self.initialize(args)
        if op == "lifecycle":
            return await getattr(instance, args["method"])()
        if op == "health":
            return await instance.health_check()
        if op == "stream":
            return await self.stream(call, getattr(instance, args["method"])(**args["kwargs"]), args["window"])
        raise RuntimeError(f"unknown operation {op!r}")

    def load(self, module_name: str, attr: str, hooks: list[list[str]]) -> None:
        import importlib

        from erp_plugins_core._hookspecs import PROJECT
        from erp_plugins_core._interface import PluginInterface

        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
        if not (isinstance(cls, type) and issubclass(cls, PluginInterface)):
            raise TypeError(f"{module_name}:{attr} is not a subclass of erp_plugins_core.PluginInterface")
        instance = cls()
        declared = {method for _, method in hooks}
        for name, method in hooks:
            if not callable(getattr(instance, method, None)):
                raise TypeError(f"plugin.yaml hooks: {name} names method {method!r}, which {attr} does not have")
        for name in dir(type(instance)):
            member = getattr(type(instance), name, None)
            if callable(member) and hasattr(member, f"{PROJECT}_impl") and name not in declared:
                raise TypeError(f"method {name} is marked @hookimpl but plugin.yaml does not list it under hooks")
        from erp_plugins_core._context import current_usage, current_user_context
        from erp_plugins_core._services import current_call_files

        self.instance = instance
        self.hooks = {name: method for name, method in hooks}
        self.scope = (current_user_context, current_call_files, current_usage)

    async def initialize(self, args: dict[str, Any]) -> Any:
        import logging

        from erp_plugins_core._context import PluginContext
        from erp_plugins_core._redact import Redactor

        self.redactor = Redactor(args["secrets"])
        logger = logging.getLogger(f"erp_plugins.plugin.{args['plugin']}")
        logger.handlers[:] = [_ForwardHandler(self)]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        self.context = PluginContext(
            tenant_id=args["tenant"],
            plugin=args["plugin"],
            config=args["config"],
            granted=frozenset(args["granted"]),
            bridge=_Bridge(self),
            redactor=self.redactor,
            logger=logger,
        )
        return await self.instance.initialize(dict(args["config"]), self.context)

    async def stream(self, call: int, iterator: Any, window: int) -> None:
        entry = [window, self.asyncio.Event()]
        self.credit[call] = entry
        if hasattr(iterator, "__aiter__"):
            agen = iterator.__aiter__()
            try:
                async for chunk in agen:
                    await self._send_chunk(call, chunk, entry)
            finally:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()
        else:
            for chunk in iterator:
                await self._send_chunk(call, chunk, entry)
        return None

    async def _send_chunk(self, call: int, chunk: Any, entry: list[Any]) -> None:
        while entry[0] <= 0:
            entry[1].clear()
            await entry[1].wait()
        entry[0] -= 1
        send({"t": "chunk", "id": call, "value": chunk})


class _Resumed:
    """A call coroutine whose first step ran inline (`Worker.start_eager`); its Task drives the rest.

    The Task's first `send` hands over what the inline step produced: the future it waits on (still marked
    as blocking, as the Task expects), or the coroutine's end (its return value, or the exception it raised).
    Later sends and throws, including a cancellation that arrives before the Task's first step, go straight
    to the coroutine. `Worker` registers it as a `collections.abc.Coroutine` (which a Task requires), once
    asyncio is imported: nothing imports collections.abc before the hello.
    """

    __slots__ = ("coro", "yielded", "finished", "value", "error", "handed_over")

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.yielded: Any = None
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.handed_over = False

    def first_step(self) -> None:
        """Run the coroutine up to its first suspension (or its end), keeping what that produced."""
        try:
            self.yielded = self.coro.send(None)
        except StopIteration as stop:
            self.finished, self.value = True, stop.value
        except BaseException as exc:  # the Task raises it in its first step, as if it had run it itself
            self.finished, self.error = True, exc

    def send(self, value: Any) -> Any:
        if self.handed_over:
            return self.coro.send(value)
        self.handed_over = True
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.finished:
            raise StopIteration(self.value)
        yielded, self.yielded = self.yielded, None
        return yielded

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self.handed_over = True
        if self.finished:
            raise typ if val is None else val
        return self.coro.throw(typ) if val is None and tb is None else self.coro.throw(typ, val, tb)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Any:
        raise TypeError("a resumed call is driven by its Task only")


class _ForwardHandler:
    """A logging handler that sends the plugin's (already redacted) records to the host."""

    level = 0

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.filters: list[Any] = []

    def handle(self, record: Any) -> bool:
        fields = getattr(record, "fields", {})
        try:
            self.worker.note("log", {"level": int(record.levelno), "message": record.getMessage()[:16000],
                                     "fields": fields if isinstance(fields, dict) else {}})
        except (TypeError, ValueError):
            self.worker.note("log", {"level": int(record.levelno), "message": record.getMessage()[:16000],
                                     "fields": {}})
        return True

    def __getattr__(self, name: str) -> Any:  # the rest of the Handler interface logging may touch
        if name in {"acquire", "release", "flush", "close", "setFormatter", "addFilter", "removeFilter"}:
            return lambda *a, **k: None
        raise AttributeError(name)


class _Bridge:
    """The worker side of PluginContext's bridge: services, events and progress over the pipe."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def get_service(self, name: str) -> Any:
        if name == "files":
            return _RemoteFiles(self.worker)
        raise KeyError(f"no host service named {name!r}")

    async def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        await self.worker.bridge_async("emit", {"event_type": event_type, "data": data})

    def progress(self, done: int, total: int | None, message: str) -> None:
        self.worker.note("progress", {"done": done, "total": total, "message": str(message)})


class _RemoteFiles:
    """FilesService over the pipe: the host checks every path against the call's files and serves chunks."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def open(self, path: str) -> Any:
        import io

        # no check here: the host resolves `path` as ERP code named it and refuses any file not in the call
        size = self.worker.bridge_sync("files.size", {"path": path})
        return io.BufferedReader(_RemoteRaw(self.worker, path, size), buffer_size=1024 * 1024)

    def size(self, path: str) -> int:
        with self.open(path) as fh:
            return fh.raw.size


def _remote_raw_base() -> type:
    import io

    class RemoteRaw(io.RawIOBase):
        """A seekable read-only file whose bytes the host reads on request."""

        def __init__(self, worker: Worker, path: str, size: int) -> None:
            super().__init__()
            self.worker, self.path, self.size, self.pos = worker, path, size, 0
            self.name = path

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def tell(self) -> int:
            return self.pos

        def seek(self, offset: int, whence: int = 0) -> int:
            base = {0: 0, 1: self.pos, 2: self.size}[whence]
            if base + offset < 0:
                raise OSError(errno.EINVAL, "negative seek position")
            self.pos = base + offset
            return self.pos

        def readinto(self, buffer: Any) -> int:
            want = min(len(buffer), self.worker_max, max(0, self.size - self.pos))
            if want <= 0:
                return 0
            data = self.worker.bridge_sync("files.read", {"path": self.path, "offset": self.pos, "size": want})
            n = len(data)
            buffer[:n] = data
            self.pos += n
            return n

        worker_max = 4 * 1024 * 1024

    return RemoteRaw


class _LazyRaw:
    cls: type | None = None

    def __call__(self, *args: Any) -> Any:
        if self.cls is None:
            self.cls = _remote_raw_base()
        return self.cls(*args)


_RemoteRaw = _LazyRaw()


def _resolve(fut: Any, msg: dict[str, Any]) -> None:
    if not fut.done():
        fut.set_result(msg)


def new_loop(kind: str) -> Any:
    """uvloop's loop when installed and `kind` is `auto`, else asyncio's (the host's ERP_PLUGINS_SANDBOX_LOOP)."""
    import asyncio

    if kind == "auto":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main() -> None:
    """Set up, greet the host, and serve calls until the host closes the pipe."""
    global rpc, _packer
    _setup(sys.argv[1], sys.argv[2])
    if rpc is None:  # a worker forked from a template (`_zygote`) has it already
        rpc = _load_rpc()
    _packer = rpc.new_packer()
    send({"t": "hello", "pid": os.getpid()})
    import asyncio

    loop = new_loop(sys.argv[3] if len(sys.argv) > 3 else "auto")
    asyncio.set_event_loop(loop)
    worker = Worker(loop)
    os.set_blocking(_RPC_IN, False)
    loop.add_reader(_RPC_IN, worker.on_readable)
    loop.run_forever()


if __name__ == "__main__":
    main()
