"""PluginHost: opening and closing the host that ties the catalog, the state, lifecycles and dispatch together.

One instance of a plugin runs per tenant that enabled it (each tenant has its own config). The work is split
by concern into mixins (see the package docstring); this class holds the state they share and its lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from .._catalog import Catalog
from .._dispatch import TenantDispatcher
from .._errors import PluginError
from .._follow import StateFollower
from .._jobs import JobSettings
from .._jobs._service import JobService
from .._secrets import SecretBox
from .._state import (
    StateStore,
    default_location,
    open_store,
    parse_location,
)
from ._admin import AdminMixin
from ._calls import CallsMixin
from ._checks import HealthMixin
from ._events import EventsMixin
from ._following import FollowingMixin
from ._instances import InstanceMixin
from ._support import (
    Instance,
    default_host_name,
    log,
    warm_up_wanted,
)


class PluginHost(InstanceMixin, AdminMixin, FollowingMixin, CallsMixin, EventsMixin, HealthMixin):
    """Runs the enabled plugins of every tenant and dispatches hooks to them.

    `state` is an SQLite file path or a `postgresql://` URL (default: ERP_PLUGINS_STATE, else a file in the
    user's data dir), or a StateStore. Opening starts no plugin: a tenant's plugins start on its first call,
    except for the tenants named in `tenants`, whose instances are set up when the host opens (trusted ones
    started; sandboxed ones start their worker on their first call, or on `warm_up()`).
    The host follows the shared state: what any process commits applies before this host's next call.
    `host_name` labels this process's runtime rows (default: ERP_PLUGINS_HOST_NAME, else hostname:pid).
    `max_workers` and `worker_idle` bound the sandboxed workers alive at once and how long an idle one is kept
    (default: ERP_PLUGINS_MAX_WORKERS, derived from memory, and ERP_PLUGINS_WORKER_IDLE, 600 s).
    `plugins_dirs`: folders of folder plugins (as `--plugins-dir`),
    searched before those of ERP_PLUGINS_PATH.
    `warm_up` (default: ERP_PLUGINS_WARM_UP, off): once open, start every tenant's plugins in the background,
    sandboxed workers included, so first calls are warm; opening itself still waits for none of it.
    """

    def __init__(
        self,
        state: str | os.PathLike[str] | StateStore | None = None,
        *,
        catalog: Catalog | None = None,
        tenants: list[str] | None = None,
        health_loop: bool = True,
        jobs: JobSettings | None = None,
        deliver: bool | None = None,
        plugins_dirs: list[str | os.PathLike[str]] | None = None,
        host_name: str | None = None,
        max_workers: int | None = None,
        worker_idle: float | None = None,
        warm_up: bool | None = None,
    ) -> None:
        self._state_arg = state
        self._plugins_dirs = plugins_dirs  # folders of folder plugins, searched before ERP_PLUGINS_PATH
        self._job_settings, self._deliver = jobs, deliver  # see _jobs: None = from the environment / SQLite only
        self._job_service: JobService | None = None
        self._catalog = catalog
        self._restore = tenants or []
        self._health_loop_enabled = health_loop
        self.host_name = host_name or default_host_name()
        self._fleet_args = {"max_workers": max_workers, "idle_timeout": worker_idle}
        self._fleet: Any = None
        self._follower: StateFollower | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.store: StateStore | None = None
        self._box: SecretBox | None = None
        self._instances: dict[tuple[str, str], Instance] = {}
        self._dispatchers: dict[str, TenantDispatcher] = {}
        self._started_tenants: set[str] = set()
        self._starting_tenants: set[str] = set()
        self._tenant_locks: dict[str, asyncio.Lock] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._warm_up = warm_up_wanted() if warm_up is None else warm_up
        self._warm_task: asyncio.Task[None] | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog.load(plugins_dirs=self._plugins_dirs)
        return self._catalog

    @property
    def state_path(self) -> Path | None:
        """The SQLite state file; None for a PostgreSQL state or a store passed in."""
        if isinstance(self._state_arg, StateStore):
            return getattr(self._state_arg, "path", None)
        kind, location = parse_location(self._state_arg if self._state_arg is not None else default_location())
        return Path(location).expanduser() if kind == "sqlite" else None

    async def open(self) -> PluginHost:
        """Open the state store and start following it; bring up only the tenants named in `tenants`."""
        if self.store is None:
            if isinstance(self._state_arg, StateStore):
                self.store = self._state_arg
            else:
                self.store = await asyncio.to_thread(open_store, self._state_arg)
        if self._follower is None:
            self._follower = StateFollower(self.store, host_name=self.host_name,
                                           on_plugin=self._apply_plugin_change, on_setting=self._apply_setting_change,
                                           on_reload=self._reload_all)
            await self._follower.start()
        for tenant in self._restore:
            await self._ensure_tenant(tenant)  # trusted plugins start now; sandboxed workers on the first call
        if self._health_loop_enabled and self._health_task is None:
            self._health_task = asyncio.create_task(self._health_loop(), name="erp-plugins-health")
        await self._jobs().start()
        if self._warm_up and self._warm_task is None:
            self._warm_task = asyncio.create_task(self._warm_up_all(), name="erp-plugins-warm-up")
        return self

    async def _warm_up_all(self) -> None:
        try:
            await self.warm_up()
        except Exception as exc:  # a lost store, say: calls still start their plugins themselves
            log.warning("warm-up after open stopped: %s", exc)

    async def close(self) -> None:
        """Deactivate and clean up every running plugin, stop workers, close the store."""
        if self._job_service is not None:  # first: the deliveries running here finish with their plugins up
            await self._job_service.close()
            self._job_service = None
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_task
            self._warm_task = None
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None
        for task in list(self._retiring):
            task.cancel()
        for inst in list(self._instances.values()):
            await self._stop(inst, persist=False)
        self._instances.clear()
        if self._fleet is not None:
            await self._fleet.close()
            self._fleet = None
        if self._follower is not None:
            await self._follower.close()
            self._follower = None
        if self.store is not None and not isinstance(self._state_arg, StateStore):
            await asyncio.to_thread(self.store.close)
        self.store = None

    async def __aenter__(self) -> PluginHost:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_store(self) -> StateStore:
        if self.store is None:
            raise PluginError("the PluginHost is not open; use `async with PluginHost(...) as host:`")
        return self.store

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox.from_environment(self.state_path)
        return self._box

