"""SandboxRunner: one plugin instance for one tenant in a bubblewrap worker, restarted when it dies.

It records what a new worker must replay (load, initialize with its config, activate), counts crashes
within `crash_window` and backs off between restarts; the calls themselves are `WorkerProxy`'s, the
worker's messages `WorkerBridge`'s, and its processes `WorkerLauncher`'s.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._context import PluginContext
from .._discovery import PluginRecord
from .._errors import HookTimeout, PluginLoadError, SandboxError
from .._redact import Redactor
from .._runner import LIFECYCLE_METHODS, PluginRunner
from ._availability import sandbox_available, uid_for
from ._bridge import WorkerBridge
from ._launch import WorkerLauncher
from ._process import _Worker
from ._proxy import PluginRaised, WorkerProxy
from ._site import Runtime, build_runtime


class SandboxRunner(WorkerProxy, WorkerBridge, WorkerLauncher, PluginRunner):
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

