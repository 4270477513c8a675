"""SandboxRunner: one plugin instance for one tenant in a bubblewrap worker, restarted when it dies.

It records what a new worker must replay (load, initialize with its config, activate), counts crashes
within `crash_window` and backs off between restarts; the calls themselves are `WorkerProxy`'s, the
worker's messages `WorkerBridge`'s, and its processes `WorkerLauncher`'s (or, forked from the plugin's
template, `WorkerForker`'s).

With a `WorkerFleet` its worker may be stopped when idle or to make room (`_retire`); the runner is then
dormant, like a `lazy` runner before its first call: load, initialize and lifecycle calls are only recorded,
a health check reports it idle without starting anything, and the next hook call or stream starts a worker
and replays what was recorded.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._context import PluginContext
from .._discovery import PluginRecord
from .._errors import HookTimeout, PluginError, PluginLoadError, SandboxError
from .._redact import Redactor
from .._runner import LIFECYCLE_METHODS, PluginRunner
from ._availability import sandbox_available, uid_for
from ._bridge import WorkerBridge
from ._fleet import MAX_WORKERS_ENV, WorkerFleet
from ._forking import WorkerForker
from ._launch import START_TIMEOUT, WorkerLauncher
from ._process import _Worker
from ._proxy import PluginRaised, WorkerProxy
from ._site import Runtime, build_runtime
from ._template import Template
from ._template_pool import templates_wanted

log = logging.getLogger("erp_plugins.sandbox")

#: What a health check of a runner without a worker (lazy, or stopped when idle) answers; it starts none.
IDLE_HEALTH = {"healthy": True, "idle": True, "detail": "idle: no worker running; it starts on the next call"}
#: How long an idle worker's `deactivate` and `cleanup` may each take before it is stopped anyway.
RETIRE_GRACE = 2.0


class SandboxRunner(WorkerProxy, WorkerBridge, WorkerForker, WorkerLauncher, PluginRunner):
    """Runs one plugin for one tenant in a bubblewrap worker; see the package docstring for what holds it."""

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
        fleet: WorkerFleet | None = None,
        lazy: bool = False,
    ) -> None:
        """`fleet`: the host's cap and idle stop for workers (None: this worker is never stopped for them).
        `lazy`: load, initialize and activate only record; the first hook call or stream starts the worker."""
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
        self.fleet = fleet
        self.lazy = lazy
        self._dormant = False  # no worker on purpose: lazy and not started yet, or stopped when idle
        self._retiring: _Worker | None = None
        self._starting = 0  # calls waiting for a worker to start
        self._closes = 0  # how many times close() ran: a start it overtook ends its worker
        self._slot_given_up = -math.inf  # loop time a start last stopped waiting for a fleet slot unserved

    # --- public API ------------------------------------------------------------------------------------

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """Host pids of the running worker (bwrap, and the sandbox's PID 1), for tests and diagnostics."""
        w = self._worker
        if w is None or w.dead:
            return ()
        return tuple(p for p in (w.pid, w.child_pid) if p is not None)

    @property
    def idle(self) -> bool:
        """True when the runner has no worker on purpose (lazy, or stopped when idle); its next call starts one."""
        w = self._worker
        return self._dormant and (w is None or w.dead)

    async def warm(self) -> None:
        """Start the worker now if there is none (what a lazy runner's first call would do), within the timeout."""
        await self._restart_within(self.manifest.resources.timeout, "warm-up")

    def in_flight(self) -> int:
        """Calls in the worker now, and calls waiting for their worker to start (or for a fleet slot)."""
        w = self._worker
        return (len(w.calls) if w is not None and not w.dead else 0) + self._starting

    @property
    def failed(self) -> str | None:
        """Why the runner gave up (too many crashes), or None."""
        return self._failed

    async def load(self) -> None:
        reason = sandbox_available()
        if reason is not None:
            raise SandboxError(f"plugin {self.record.name!r} must run sandboxed, but {reason}")
        self._failed = None
        self._crashes.clear()
        if self.lazy:
            self._dormant = self._loaded = True
            return
        # bounded only with a fleet, where a start may wait for a slot: as long as the start itself may take
        seconds = START_TIMEOUT + max(self.manifest.resources.timeout, 30.0)
        started = asyncio.get_running_loop().time()
        try:
            async with self._lock, asyncio.timeout(seconds if self.fleet is not None else None):
                await self._start()
        except TimeoutError:
            if self._slot_given_up >= started:
                raise self._slot_timeout("load", seconds) from None
            raise HookTimeout(f"plugin {self.record.name!r}: its worker did not load within {seconds:g} s") from None
        self._dormant = False
        self._loaded = True

    async def initialize(self, config: dict[str, Any], context: PluginContext) -> bool:
        secrets = [v for k, v in config.items() if k in self.manifest.sensitive_keys and isinstance(v, str)]
        self._redactor = Redactor(secrets)
        self._context = context
        self._init = (dict(config), context)
        if self.idle and self._failed is None:  # recorded; the next start replays it
            return True
        return bool(await self._request("initialize", self._init_args(), what="initialize",
                                        seconds=self.manifest.resources.timeout))

    async def lifecycle(self, method: str) -> bool:
        if method not in LIFECYCLE_METHODS:
            raise ValueError(f"unknown lifecycle method {method!r}")
        if self.idle and self._failed is None:  # recorded; a stopped worker was deactivated and cleaned up
            if method != "cleanup":
                self._active = method == "activate"
            return True
        result = await self._request("lifecycle", {"method": method}, what=method,
                                     seconds=self.manifest.resources.timeout)
        if method == "activate":
            self._active = bool(result)
        elif method == "deactivate":
            self._active = False
        return bool(result)

    async def health_check(self) -> dict[str, Any]:
        """The plugin's own answer, or `IDLE_HEALTH` for a runner without a worker: neither starts one nor
        counts as use of a running one (an idle worker is stopped all the same)."""
        if self.idle and self._failed is None:
            return dict(IDLE_HEALTH)
        result = await self._request("health", {}, what="health_check", seconds=self.manifest.health_check.timeout,
                                     touch=False)
        if not isinstance(result, dict):  # said as the host says it for a plugin in process, quoting the answer
            from .._health import health_verdict

            raise SandboxError(f"plugin {self.record.name!r}: {health_verdict(result, self._redactor)[1]}")
        return result

    async def close(self) -> None:
        """Stop the worker now (also one being stopped for idleness); the runner may be loaded again."""
        if self.fleet is not None and self._runtime is not None:
            await self.fleet.templates.release(self)
        w, retiring = self._worker, self._retiring
        self._closes += 1
        self._worker = None
        self._loaded = False
        self._active = False
        self._init = None
        self._dormant = False
        if retiring is not None:
            self._kill(retiring, "stopped by the host", crash=False)
        if w is not None:
            await self._stop(w, "stopped by the host")
        if retiring is not None:
            await self._reap(retiring)

    # --- starting and stopping -------------------------------------------------------------------------

    async def _template(self) -> Template | None:
        """The plugin's worker template to fork this runner's worker from, or None for a plain start: templates
        need the per-tenant uid (a host as root) and a fleet, and may be turned off (`templates_wanted`)."""
        if self.fleet is None or self.uid is None or not templates_wanted():
            return None
        return await self.fleet.templates.template_for(self)

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

    async def _start(self, closes: int | None = None) -> None:
        """Spawn a worker (in a fleet slot, if the runner has a fleet) and load the plugin in it; none if the
        runner was closed since `closes` (its count of closes) while this waited for the slot."""
        if self._runtime is None:
            self._runtime = await asyncio.to_thread(
                build_runtime, self.record, self._runtime_dir, self._python, self._forbidden
            )
        slot = None
        if self.fleet is not None:
            try:
                slot = await self.fleet.acquire(self)
            except asyncio.CancelledError:
                self._slot_given_up = asyncio.get_running_loop().time()
                raise
            if closes is not None and closes != self._closes:
                slot.release()
                raise self._closed_meanwhile()
        try:
            w = await self._spawn(slot)
        except BaseException:
            if slot is not None:
                slot.release()
            raise
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
            dormant, closes = self._dormant, self._closes
            try:
                await self._start(closes)
                if self._init is not None:
                    ok = await self._call(self._worker, "initialize", self._init_args(), what="initialize",
                                          seconds=self.manifest.resources.timeout)
                    if not ok:
                        raise SandboxError(f"plugin {self.record.name!r}: initialize returned False on restart")
                if self._active:
                    await self._call(self._worker, "lifecycle", {"method": "activate"}, what="activate",
                                     seconds=self.manifest.resources.timeout)
            except PluginError as exc:
                if self._worker is not None and not self._worker.dead:
                    self._kill(self._worker, f"restart failed: {exc}")
                self._dormant = False  # not idle: broken; its health check says so
                if dormant:
                    raise SandboxError(f"plugin {self.record.name!r} for tenant {self.tenant!r}: its worker could "
                                       f"not be started: {exc}") from exc
                raise
            assert self._worker is not None
            if self._closes != closes:  # the host closed the runner while this start waited or ran
                await self._stop(self._worker, "stopped by the host")
                raise self._closed_meanwhile()
            self._dormant = False
            return self._worker

    async def _restart_within(self, seconds: float, what: str) -> tuple[_Worker, float]:
        """A running worker for a hook call (restarted if need be) and what is left of the call's `seconds`.

        A hook call's timeout covers a restart too (backoff, start, initialize and activate replayed), so
        that `resources.timeout` bounds the call as a whole; dispatch relies on that (`times_its_calls`).
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._starting += 1
        try:
            async with asyncio.timeout(seconds):
                w = await self._ensure_worker()
        except TimeoutError:
            if self._slot_given_up >= start:
                raise self._slot_timeout(what, seconds) from None
            raise HookTimeout(
                f"plugin {self.record.name!r}: {what} timed out after {seconds:g} s while its worker restarted"
            ) from None
        finally:
            self._starting -= 1  # the caller registers its call with the worker before it next yields
        return w, max(seconds - (loop.time() - start), 0.001)

    def _closed_meanwhile(self) -> SandboxError:
        return SandboxError(f"plugin {self.record.name!r} for tenant {self.tenant!r} was stopped by the host")

    def _slot_timeout(self, what: str, seconds: float) -> HookTimeout:
        assert self.fleet is not None
        cap = self.fleet.cap
        return HookTimeout(
            f"plugin {self.record.name!r} for tenant {self.tenant!r}: {what} timed out after {seconds:g} s waiting "
            f"for a worker slot: all {cap} sandbox workers of the cap are busy (raise {MAX_WORKERS_ENV}, now {cap}, "
            "or PluginHost(max_workers=...))"
        )

    async def _retire(self, w: _Worker, reason: str, *, level: int = logging.INFO) -> bool:
        """Stop worker `w` for the fleet (idle, or to make room): `deactivate` and `cleanup` with a short bound,
        then end it; no crash, no backoff. False when it is in use again (or being restarted) by now. The stop
        is logged at `level` (the fleet logs evictions, one per start under churn, at debug)."""
        if self._lock.locked():
            return False
        async with self._lock:
            if self._worker is not w or w.dead or w.calls:
                return False
            self._worker, self._retiring = None, w
            self._dormant = w.retiring = True
            grace = min(RETIRE_GRACE, self.manifest.resources.timeout)
            try:
                for method, wanted in (("deactivate", self._active), ("cleanup", self._init is not None)):
                    if wanted and not w.dead:
                        try:
                            await self._call(w, "lifecycle", {"method": method}, what=method, seconds=grace,
                                             touch=False)
                        except PluginError as exc:
                            log.info("plugin %r (tenant %r): %s failed as its worker was stopped: %s",
                                     self.record.name, self.tenant, method, self._redactor.redact(str(exc)))
            finally:
                await self._stop(w, f"stopped: {reason}")
                self._retiring = None
        log.log(level, "plugin %r (tenant %r): worker stopped (%s); it starts again on its next call",
                self.record.name, self.tenant, reason)
        return True
