"""WorkerFleet: a bound on a host's live sandbox workers, and the stopping of idle ones.

A sandboxed instance costs about 20 MB PSS and three processes for as long as its worker lives
(notes/fleet.md), so a host with many tenants keeps only some workers alive:

- idle stop: a worker with no call in flight for `idle_timeout` seconds is stopped gracefully (the plugin's
  `deactivate` and `cleanup` run with a short bound, then the worker ends; never counted as a crash);
- cap: a worker starts only in a free slot; with all `cap` slots taken, the least recently used worker with no
  call in flight is stopped the same way to make room, and when every worker is busy the start waits for a
  slot (within its call's own timeout).

A stopped instance is started again, transparently, by its next call (`SandboxRunner` replays load,
initialize and activate). A health check neither starts a worker nor counts as use.

Settings, each a constructor argument or else an environment variable:
- `ERP_PLUGINS_MAX_WORKERS`: a whole number >= 1. Unset: derived from memory at the fleet's creation,
  `clamp(available // 64 MiB, 4, 512)`, where `available` is MemAvailable of /proc/meminfo, or the room left
  under the host's own memory cgroup limit (limit - usage) when that is lower. 64 MiB per worker is about
  three times a worker's measured PSS, room for what plugins allocate.
- `ERP_PLUGINS_WORKER_IDLE`: seconds (a number > 0), or `off` (or `never`) to never stop idle workers
  (`idle_timeout=math.inf` in Python). Default 600. 0 is refused: it would stop every worker as its call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import SandboxError
from ._template_pool import TemplatePool

if TYPE_CHECKING:
    from ._process import _Worker
    from ._runner import SandboxRunner

log = logging.getLogger("erp_plugins.sandbox")

MAX_WORKERS_ENV = "ERP_PLUGINS_MAX_WORKERS"
IDLE_ENV = "ERP_PLUGINS_WORKER_IDLE"
DEFAULT_IDLE = 600.0
#: Memory counted per worker when the cap is derived from memory, and the bounds of that derived cap.
WORKER_BUDGET = 64 * 1024 * 1024
MIN_DERIVED, MAX_DERIVED = 4, 512
_OFF = ("off", "never")


def max_workers_from_env() -> int | None:
    """`ERP_PLUGINS_MAX_WORKERS` as a number of workers, or None when it is unset."""
    raw = os.environ.get(MAX_WORKERS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SandboxError(f"{MAX_WORKERS_ENV}={raw[:40]!r} is not a number of workers; set it to a whole number "
                           "of at least 1, or unset it for a cap derived from memory")
    return value


def idle_from_env() -> float | None:
    """`ERP_PLUGINS_WORKER_IDLE` in seconds (`math.inf` for `off`), or None when it is unset."""
    raw = os.environ.get(IDLE_ENV, "").strip()
    if not raw:
        return None
    if raw.lower() in _OFF:
        return math.inf
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise SandboxError(f"{IDLE_ENV}={raw[:40]!r} is not an idle time; set it to a number of seconds greater "
                           "than 0, or to off to never stop idle workers")
    return value


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_room() -> int | None:
    """Memory left under this process's own memory cgroup limit (v2 `memory.max`, v1 `limit_in_bytes`)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _hid, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            if controllers == "":
                folder = Path("/sys/fs/cgroup", path.lstrip("/"))
                limit_file, usage_file = folder / "memory.max", folder / "memory.current"
            elif "memory" in controllers.split(","):
                folder = Path("/sys/fs/cgroup/memory", path.lstrip("/"))
                limit_file, usage_file = folder / "memory.limit_in_bytes", folder / "memory.usage_in_bytes"
            else:
                continue
            with contextlib.suppress(OSError, ValueError):
                limit = limit_file.read_text().strip()
                if limit != "max" and int(limit) < 1 << 60:
                    return max(int(limit) - int(usage_file.read_text()), 0)
    return None


def derived_max_workers() -> int:
    """The cap when none is set: available memory over `WORKER_BUDGET`, clamped to [4, 512]."""
    sizes = [n for n in (_meminfo_available(), _cgroup_room()) if n is not None]
    if not sizes:
        return MIN_DERIVED
    return max(MIN_DERIVED, min(MAX_DERIVED, min(sizes) // WORKER_BUDGET))


class _Slot:
    """One place in a fleet: taken before a worker is spawned, released when that worker has ended."""

    __slots__ = ("fleet", "runner", "worker", "retiring", "released")

    def __init__(self, fleet: WorkerFleet, runner: SandboxRunner) -> None:
        self.fleet = fleet
        self.runner = runner
        self.worker: _Worker | None = None
        self.retiring = False
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.fleet._release(self)

    def idle_now(self) -> None:
        """The worker's last call in flight ended: a start waiting for a slot may stop it now."""
        if self.fleet._waiting:
            self.fleet._notify()

    def stoppable(self) -> bool:
        """Whether its worker may be stopped now: running, no call in flight, its runner not (re)starting it."""
        w = self.worker
        return (w is not None and not w.dead and not w.calls and not self.retiring and not self.released
                and not self.runner._lock.locked())


class WorkerFleet:
    """A cap on a host's live sandbox workers, least recently used stopped first, and idle workers stopped.

    Shared by the host's `SandboxRunner`s (`SandboxRunner(..., fleet=fleet)`); see the module docstring for
    the settings. `stats()` is for health endpoints; `await close()` stops the reaper (not the workers: the
    runners own those).
    """

    def __init__(self, *, max_workers: int | None = None, idle_timeout: float | None = None) -> None:
        if max_workers is None:
            max_workers = max_workers_from_env() or derived_max_workers()
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a whole number of at least 1, not {max_workers!r}")
        if idle_timeout is None:
            idle_timeout = idle_from_env() or DEFAULT_IDLE
        elif not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be seconds greater than 0 (math.inf: never), not {idle_timeout!r}")
        self.cap = max_workers
        self.idle_timeout = float(idle_timeout)
        self.idle_stops = 0
        self.evictions = 0
        self._slots: set[_Slot] = set()
        self._waiting = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._reaper_wake: asyncio.Event | None = None
        self.templates = TemplatePool()  # the plugins' worker templates its runners fork from

    def __repr__(self) -> str:
        return f"WorkerFleet(live={len(self._slots)}, cap={self.cap}, idle_timeout={self.idle_timeout:g})"

    def stats(self) -> dict[str, Any]:
        """Live workers (started or starting), the cap, the idle timeout (None: never), starts waiting for a
        slot, and how many workers were stopped for idleness or evicted to make room so far."""
        return {"live": len(self._slots), "cap": self.cap,
                "idle_timeout": self.idle_timeout if math.isfinite(self.idle_timeout) else None,
                "waiting": self._waiting, "idle_stops": self.idle_stops, "evictions": self.evictions}

    async def acquire(self, runner: SandboxRunner) -> _Slot:
        """A slot for `runner`'s next worker: a free one, else one made by stopping the least recently used
        idle worker, else the first freed (no bound here: the caller's own timeout cancels the wait)."""
        self._start_reaper()
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            while True:
                if len(self._slots) < self.cap:
                    slot = _Slot(self, runner)
                    self._slots.add(slot)
                    if self._reaper_wake is not None:
                        self._reaper_wake.set()
                    return slot
                if sum(s.retiring for s in self._slots) < self._waiting:
                    idle = [s for s in self._slots if s.stoppable()]
                    if idle:
                        lru = min(idle, key=lambda s: s.worker.last_used)  # type: ignore[union-attr]
                        self._stop(lru, eviction=True)
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
                try:
                    await fut
                finally:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
        finally:
            self._waiting -= 1

    async def close(self) -> None:
        """Stop the reaper and any stop in progress (their workers are killed; the runners start new ones)."""
        await self.templates.close()
        tasks = [t for t in (self._reaper, *self._tasks) if t is not None and not t.done()]
        self._reaper = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task

    # --- inside ------------------------------------------------------------------------------------------

    def _release(self, slot: _Slot) -> None:
        self._slots.discard(slot)
        self._notify()

    def _notify(self) -> None:
        """Let every start waiting for a slot look again (a slot was freed, or a worker became stoppable)."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _stop(self, slot: _Slot, *, eviction: bool) -> None:
        """Stop `slot`'s worker gracefully in a task of its own (a plugin's deactivate may take a moment)."""
        slot.retiring = True
        task = asyncio.get_running_loop().create_task(self._run_stop(slot, eviction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_stop(self, slot: _Slot, eviction: bool) -> None:
        w = slot.worker
        reason = ("evicted to make room for another worker (least recently used)" if eviction
                  else f"idle for {self.idle_timeout:g} s")
        stopped = False
        try:
            level = logging.DEBUG if eviction else logging.INFO  # evictions: counted in stats(), not logged
            stopped = w is not None and await slot.runner._retire(w, reason, level=level)
        except Exception:  # a stop that failed leaves the worker to its runner; the fleet goes on
            log.exception("stopping the idle worker of %r failed", slot.runner)
        if stopped:
            if eviction:
                self.evictions += 1
            else:
                self.idle_stops += 1
        else:
            slot.retiring = False
            self._notify()

    def _start_reaper(self) -> None:
        """The one task per fleet that stops idle workers, started on the running loop when first needed."""
        if not math.isfinite(self.idle_timeout):
            return
        loop = asyncio.get_running_loop()
        task = self._reaper
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._reaper_wake = asyncio.Event()
        self._reaper = loop.create_task(self._reap_idle(self._reaper_wake))

    async def _reap_idle(self, wake: asyncio.Event) -> None:
        """Stop every worker idle for `idle_timeout`; sleep until the next one could be (at most that long)."""
        idle = self.idle_timeout
        while True:
            now = time.monotonic()
            pause = idle
            for slot in list(self._slots):
                if not slot.stoppable():
                    continue
                due = slot.worker.last_used + idle - now  # type: ignore[union-attr]
                if due <= 0:
                    self._stop(slot, eviction=False)
                else:
                    pause = min(pause, due)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(pause, 0.05) if self._slots else None)
