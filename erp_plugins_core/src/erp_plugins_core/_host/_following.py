"""Applying what another process changed in the shared state to this host's instances."""

from __future__ import annotations

import asyncio
import time

from .._catalog import ACCEPTED_FINDINGS
from .._errors import (
    IntegrityError,
    PermissionDenied,
)
from .._follow import applying
from .._lifecycle import PluginState
from ._support import (
    HostBase,
    Instance,
    _same_policy,
)


class FollowingMixin(HostBase):
    """Applying what another process changed in the shared state to this host's instances."""

    async def _apply_plugin_change(self, tenant: str, name: str) -> None:
        """Bring this host's instance of `name` for `tenant` in line with its row, which some process changed.

        Disabled: no new call, stopped once its running calls end. Config, grants or trust changed: a new
        instance with the new values serves the next call. Priority alone: re-registered in place.
        """
        self._forget_targets(tenant)  # events and jobs pick their plugins from the state again
        if tenant not in self._started_tenants and tenant not in self._starting_tenants:
            return  # its plugins start from the store on its first call (one being started: wait for it below)
        async with self._lock(tenant):
            # read under the lock this host's own enable/disable hold: a row read before this host changed it
            # and applied after would undo that change (a plugin disabled here came back)
            row = await self._db(self._require_store().get, tenant, name)
            token = applying.set(True)
            try:
                inst = self._instances.get((tenant, name))
                if inst is not None and row is not None and row.enabled and _same_policy(inst.row, row):
                    if inst.row.priority != row.priority:
                        inst.row = row
                        if inst.life.state is PluginState.ACTIVE:
                            self._register(inst)
                    return
                if inst is not None:
                    self._retire(inst)
                if row is not None and row.enabled:
                    new = await self._new_instance(name, tenant, row)
                    if new is not None:
                        await self._start(new)
            finally:
                applying.reset(token)

    async def _reload_all(self) -> None:
        """Compare every started tenant's instances with the store (after missing part of the change feed)."""
        self._forget_targets(None)
        for tenant in list(self._started_tenants):
            names = {r.plugin for r in await self._db(self._require_store().list, tenant)}
            names |= {name for (t, name) in self._instances if t == tenant}
            for name in sorted(names):
                await self._apply_plugin_change(tenant, name)
        for key in ("lock", ACCEPTED_FINDINGS):
            await self._apply_setting_change(key)

    async def _apply_setting_change(self, key: str) -> None:
        """A new lock or new accepted findings apply to running instances: one that fails them now is stopped."""
        if key not in ("lock", ACCEPTED_FINDINGS):
            return
        for inst in list(self._instances.values()):
            if inst.life.state is not PluginState.ACTIVE:
                continue
            try:
                if key == "lock":
                    await asyncio.to_thread(self._verify_files, inst.record)
                elif inst.record.manifest is not None and not inst.record.manifest.security.sandbox:
                    await asyncio.to_thread(self._require_accepted_findings, inst.record)
            except (IntegrityError, PermissionDenied) as exc:
                await self._put_in_error(inst, str(exc))

    def _retire(self, inst: Instance) -> None:
        """No new call reaches `inst`; it is stopped once its running calls end (within its timeout)."""
        key = (inst.tenant, inst.name)
        if self._instances.get(key) is inst:
            self._dispatcher(inst.tenant).unregister(inst.name)
            del self._instances[key]
        task = asyncio.create_task(self._stop_when_idle(inst), name=f"erp-plugins-retire-{inst.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _stop_when_idle(self, inst: Instance) -> None:
        timeout = inst.record.manifest.resources.timeout if inst.record.manifest else 30.0
        deadline = time.monotonic() + timeout
        while inst.runner.in_flight() and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll of a count)
            await asyncio.sleep(0.02)
        # a replacement instance records its own state; only a plugin gone from this host is recorded inactive
        await self._stop(inst, persist=(inst.tenant, inst.name) not in self._instances)


