"""Following the shared state: every open host applies what any process committed before its next call.

Any process (the CLI, another `PluginHost`, `erp-plugins serve`) commits changes to the state store, and
the store records each one in its change feed (`StateStore.changes_since`). A `StateFollower` keeps one
host in step with that feed:

- Every call reads `stale`, an attribute; when it is set, `due()` asks the store's `ChangeWatch` whether
  anything may have been committed (SQLite: `PRAGMA data_version`, ≈ 5 µs; PostgreSQL: a flag set by
  LISTEN/NOTIFY, with a poll each second as a fallback) and clears it. A timer sets it again
  `check_interval` later, armed only by a check, so calls between two checks pay an attribute read.
- A background task does the same every `BACKGROUND_S` seconds, so a change reaches a host that gets no
  call too: a plugin disabled elsewhere has its worker stopped even on an idle host.
- `catch_up()` reads the new changes (in a thread: the event loop never waits on the database) and hands
  each changed (tenant, plugin) and setting to the host, which stops, restarts or re-registers instances.
  One catch-up runs at a time; calls that arrive meanwhile wait for it, so no call starts on a stale view.
- A heartbeat marks this host alive in the store, whose expiry drops the runtime rows of hosts that are gone.

When the database is unreachable, `catch_up` logs once, keeps the host serving from its current view and
tries again after a backoff; it never fails a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._errors import StateError

log = logging.getLogger("erp_plugins.host")

#: Seconds after a check before calls look at the store again (between them: an attribute read per call).
CHECK_INTERVAL_S = 0.001
#: Seconds between two looks at the store when no call comes.
BACKGROUND_S = 0.5
#: Seconds between two heartbeats of this host; its runtime rows expire after HOST_TTL_S without one.
HEARTBEAT_S = 10.0
HOST_TTL_S = 60.0
#: Backoff while the database is unreachable.
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 10.0

#: Set while the host itself changes a tenant (enable, disable, starting a tenant): a call made from inside
#: that work (a plugin's initialize emitting an event) must not wait for a catch-up that waits for it.
applying: contextvars.ContextVar[bool] = contextvars.ContextVar("erp_plugins_applying", default=False)

PluginChange = Callable[[str, str], Awaitable[None]]
SettingChange = Callable[[str], Awaitable[None]]
Reload = Callable[[], Awaitable[None]]


class StateFollower:
    """Applies the store's change feed to one host; see the module docstring."""

    def __init__(
        self,
        store: Any,
        *,
        host_name: str,
        on_plugin: PluginChange,
        on_setting: SettingChange,
        on_reload: Reload,
        check_interval: float = CHECK_INTERVAL_S,
    ) -> None:
        self._store = store
        self.host_name = host_name
        self._on_plugin = on_plugin
        self._on_setting = on_setting
        self._on_reload = on_reload
        self._interval = check_interval
        self._watch = store.watch()
        self._seq = 0
        #: Whether the next call must look at the watch (set by a timer after each check; see the docstring).
        self.stale = True
        self._timer: asyncio.TimerHandle | None = None
        self._dirty = False
        self._running: asyncio.Future[None] | None = None
        self._retry_delay = _RETRY_FIRST_S
        self._down_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Note where the feed stands now, and start listening and heart-beating."""
        self._seq = await asyncio.to_thread(self._store.change_seq)
        self._tasks = [
            asyncio.create_task(self._listen(), name="erp-plugins-state-watch"),
            asyncio.create_task(self._heartbeat(), name="erp-plugins-heartbeat"),
            asyncio.create_task(self._background(), name="erp-plugins-follow"),
        ]

    async def close(self) -> None:
        """Stop listening and heart-beating.

        This host's runtime rows stay until they expire (HOST_TTL_S after the last heartbeat), so the state
        a short-lived process reached (the CLI's `enable`, or why it failed) is still shown for a while.
        """
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        close = getattr(self._watch, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def due(self) -> bool:
        """Whether a call must catch up first (ask when `stale` is set): a cheap check of the store.

        `stale` stays set until the catch-up is done, so calls arriving meanwhile wait for it too.
        """
        if self._dirty:  # seen by an earlier check, not caught up yet
            return True
        try:
            changed = self._watch.maybe_changed()
        except Exception:  # a watch must never fail a call; look at the feed instead
            changed = True
        if changed:
            self._dirty = True
            return True
        self.stale = False
        self._arm(self._interval)
        return False

    def _arm(self, delay: float) -> None:
        """Set `stale` again after `delay` seconds (one timer at a time)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.stale = True

    async def catch_up(self) -> None:
        """Apply every change committed since the last catch-up; concurrent callers share one run."""
        if applying.get():  # from inside the host's own work on a tenant: the next call catches up
            return
        running = self._running
        if running is not None:
            await asyncio.shield(running)
            return
        self._running = asyncio.get_running_loop().create_future()
        try:
            await self._apply_new_changes()
        finally:
            fut, self._running = self._running, None
            fut.set_result(None)

    async def _apply_new_changes(self) -> None:
        try:
            changes = await asyncio.to_thread(self._store.changes_since, self._seq)
        except StateError as exc:
            self._unreachable(exc)
            return
        if self._down_since is not None:
            log.warning("state store %s is reachable again; applying the changes made meanwhile",
                        getattr(self._store, "location", ""))
            self._down_since = None
        self._retry_delay = _RETRY_FIRST_S
        plugins: dict[tuple[str, str], None] = {}
        settings: dict[str, None] = {}
        reload = False
        for change in changes:
            if change.kind == "reset":  # this host fell behind the pruned feed: compare everything
                reload = True
            elif change.kind == "plugin" and change.tenant and change.plugin:
                plugins[(change.tenant, change.plugin)] = None
            elif change.kind.startswith("setting:"):
                settings[change.kind.removeprefix("setting:")] = None
        try:
            if reload:
                await self._apply(self._on_reload(), "every plugin (the change feed was pruned past this host)")
            for tenant, plugin in plugins:
                await self._apply(self._on_plugin(tenant, plugin), f"{plugin} for tenant {tenant}")
            for key in settings:
                await self._apply(self._on_setting(key), f"setting {key}")
        except StateError as exc:  # lost on the way: everything is applied again (idempotently) next time
            self._unreachable(exc)
            return
        if changes:
            self._seq = max(self._seq, max(c.seq for c in changes))
        self._dirty = False
        self.stale = False
        self._arm(self._interval)

    @staticmethod
    async def _apply(step: Awaitable[None], what: str) -> None:
        """One change; a failure is logged and does not hold up the others (StateError goes up: retry all)."""
        try:
            await step
        except StateError:
            raise
        except Exception:
            log.exception("applying the change of %s failed", what)

    def _unreachable(self, exc: StateError) -> None:
        """Keep serving from the current view; look again after a growing delay."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("state store unreachable, serving from this host's current view and retrying: %s", exc)
        self.stale = False  # calls go on with the current view; the first one after the delay tries again
        self._arm(self._retry_delay)
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX_S)

    async def _listen(self) -> None:
        """Run the store's watch (PostgreSQL LISTEN; nothing for SQLite)."""
        run = getattr(self._watch, "run", None)
        if run is not None:
            await run()

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(BACKGROUND_S)
            try:
                if self.stale and self.due():
                    await self.catch_up()
            except Exception:  # the loop must outlive any one change
                log.exception("following the state store failed")

    async def _heartbeat(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._store.heartbeat, self.host_name, ttl=HOST_TTL_S)
            except Exception as exc:  # an unreachable store is reported by catch_up; keep beating
                log.debug("heartbeat of %s failed: %s", self.host_name, exc)
            await asyncio.sleep(HEARTBEAT_S)
