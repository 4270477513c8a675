"""A running worker as the host sees it: its process, pipe, calls in flight with their deadlines, log budget.

Plain objects with no policy: `WorkerLauncher` starts and ends them, `WorkerProxy` makes calls on them.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _rpc
from .._cgroup import MemoryCgroup
from .._errors import SandboxError

if TYPE_CHECKING:
    from ._fleet import _Slot

#: Stream chunks a worker may send ahead of its consumer (credit-based backpressure).
STREAM_WINDOW = 16


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
    touch: bool = True  # its end counts as use of the worker (a health check's does not)

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

    def __init__(self, proc: asyncio.subprocess.Process, pipe: asyncio.WriteTransport | None) -> None:
        self.proc = proc
        self.pipe: asyncio.WriteTransport | None = pipe
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
        self.count_crash = True  # False when the host stopped it on purpose
        self.slot: _Slot | None = None  # its place in a WorkerFleet, released when it ends
        self.retiring = False  # being stopped for idleness or to make room: its end is no crash
        self.last_used = time.monotonic()  # when its last call (not a health check) ended, for idle stops and LRU
        self.template: Any = None  # forked from this template, which its first call's imports are to teach

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

    def new_call(self, what: str, ctx: contextvars.Context | None, stream: bool = False, touch: bool = True) -> _Call:
        call = _Call(self.next_id, what, ctx, asyncio.get_running_loop().create_future())
        if not touch:
            call.touch = False
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

