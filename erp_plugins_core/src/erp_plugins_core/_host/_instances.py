"""Starting, registering, stopping and failing one plugin instance of a tenant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._config import resolve
from .._context import PluginContext
from .._discovery import PluginRecord
from .._dispatch import (
    TenantDispatcher,
    describe,
)
from .._errors import (
    IntegrityError,
    PluginError,
)
from .._follow import applying
from .._lifecycle import Lifecycle, PluginState
from .._permissions import network_allowed
from .._redact import Redactor
from .._runner import InProcessRunner, PluginRunner
from .._state import (
    TenantPlugin,
    validate_tenant,
)
from ._support import (
    _RETRY_BASE_S,
    _RETRY_MAX_S,
    UNSAFE_NO_SANDBOX_ENV,
    HostBase,
    Instance,
    T,
    _HostBridge,
    data_root,
    log,
    unsafe_no_sandbox,
)


class InstanceMixin(HostBase):
    """Starting, registering, stopping and failing one plugin instance of a tenant."""

    def _dispatcher(self, tenant: str) -> TenantDispatcher:
        disp = self._dispatchers.get(tenant)
        if disp is None:
            disp = self._dispatchers[tenant] = TenantDispatcher(tenant)
        return disp

    def _lock(self, tenant: str) -> asyncio.Lock:
        lock = self._tenant_locks.get(tenant)
        if lock is None:
            lock = self._tenant_locks[tenant] = asyncio.Lock()
        return lock

    async def _ensure_tenant(self, tenant: str, *, lazy: bool = True) -> None:
        """Start the tenant's enabled plugins (dependencies first) the first time the tenant is used.

        `lazy`: sandboxed instances start their worker on their first call (`warm_up` starts them now).
        """
        if tenant in self._started_tenants:
            return
        if applying.get() and tenant in self._starting_tenants:
            return  # a call from inside this tenant's own start (a plugin emitting in initialize) goes on
        async with self._lock(tenant):  # calls of a tenant being started wait here until all of it runs
            if tenant in self._started_tenants:
                return
            self._starting_tenants.add(tenant)
            token = applying.set(True)
            try:
                rows = {r.plugin: r for r in await self._db(self._require_store().list, tenant) if r.enabled}
                for name in self.catalog.activation_order(list(rows)):
                    inst = await self._new_instance(name, tenant, rows[name], lazy=lazy)
                    if inst is not None:
                        await self._start(inst)
                self._started_tenants.add(tenant)
            finally:
                applying.reset(token)
                self._starting_tenants.discard(tenant)

    async def warm_up(self, tenants: list[str] | None = None) -> None:
        """Start these tenants' plugins now, sandboxed workers included (None: every tenant in the state).

        Opening a host starts no worker; this is for a process that wants warm first calls, or a real health
        check of every plugin (`erp-plugins health`). A worker that cannot start is logged; its health says why.
        """
        for tenant in tenants if tenants is not None else await self._db(self._require_store().tenants):
            validate_tenant(tenant)
            await self._ensure_tenant(tenant, lazy=False)
            for (t, _), inst in list(self._instances.items()):
                if t == tenant and inst.life.state is PluginState.ACTIVE:
                    try:
                        await inst.runner.warm()
                    except Exception as exc:
                        log.warning("plugin %s for tenant %s did not warm up: %s", inst.name, tenant,
                                    inst.redactor.text(str(exc)))

    @staticmethod
    async def _db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a state-store call in a thread: the event loop never waits on the database."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _make_runner(self, record: PluginRecord, tenant: str, trusted: bool,
                     granted: Iterable[str] = (), *, lazy: bool = False) -> PluginRunner:
        """The one place that decides where a plugin's code runs (and, sandboxed, whether it gets the network:
        a plugin that declares network.external gets it only where the tenant granted it).

        `lazy`: a sandboxed instance records its start and runs it in a worker when its first call comes.
        """
        assert record.manifest is not None
        if not record.manifest.security.sandbox:
            return InProcessRunner(record, tenant)
        if unsafe_no_sandbox():
            log.warning(
                "%s=1: running sandboxed plugin %r for tenant %r UNCONFINED in the host's process "
                "(development only; never in production)", UNSAFE_NO_SANDBOX_ENV, record.name, tenant,
            )
            return InProcessRunner(record, tenant)
        from .._sandbox import SandboxRunner, WorkerFleet

        if self._fleet is None:
            self._fleet = WorkerFleet(**self._fleet_args)
        forbidden = [str(p) for p in (self.state_path, self.box.key_file) if p is not None]
        record = record.with_network(network_allowed(record.manifest, granted))
        return SandboxRunner(record, tenant, data_root=data_root(), forbidden=forbidden, fleet=self._fleet,
                             lazy=lazy)

    async def _new_instance(self, name: str, tenant: str, row: TenantPlugin, *, lazy: bool = True) -> Instance | None:
        record = self.catalog.get(name)
        if record is None or record.errors or record.manifest is None:
            reason = (
                f"plugin {name!r} is enabled for tenant {tenant!r} but no longer installed"
                if record is None
                else f"plugin {name!r} is invalid: {'; '.join(record.errors)}"
            )
            log.error(reason)
            await self._db(self._require_store().set_runtime_state, tenant, name, PluginState.ERROR.value, reason,
                           host=self.host_name)
            return None
        runner = self._make_runner(record, tenant, row.trusted, row.granted, lazy=lazy)
        inst = Instance(record, tenant, row, runner, Lifecycle(name, tenant))
        self._instances[(tenant, name)] = inst
        return inst

    async def _start(self, inst: Instance, *, raise_errors: bool = False, persist: bool = True) -> bool:
        """Take an instance from discovered (or error) to active; on failure record the reason."""
        manifest = inst.record.manifest
        assert manifest is not None
        try:
            if inst.life.state in (PluginState.ERROR, PluginState.UNLOADED, PluginState.DISCOVERED):
                await asyncio.to_thread(self._verify_files, inst.record)  # hashes files, reads the lock
                # a sandboxed plugin has no file system: the host reads its `format: file-path` files for it
                runtime, secrets = resolve(inst.row.config, manifest, self.box, read_paths=inst.runner.sandboxed)
                inst.redactor = Redactor(secrets)
                timeout = manifest.resources.timeout
                async with asyncio.timeout(timeout):
                    await inst.runner.load()
                inst.life.to(PluginState.LOADED)
                granted = frozenset(inst.row.granted)
                inst.context = PluginContext(
                    tenant_id=inst.tenant,
                    plugin=inst.name,
                    config=runtime,
                    granted=granted,
                    bridge=_HostBridge(self, inst.name, inst.tenant),
                    redactor=inst.redactor,
                )
                async with asyncio.timeout(timeout):
                    ok = await inst.runner.initialize(runtime, inst.context)
                if ok is False:
                    raise PluginError(f"plugin {inst.name!r}: initialize() returned False")
                inst.life.to(PluginState.INITIALIZED)
            async with asyncio.timeout(manifest.resources.timeout):
                ok = await inst.runner.lifecycle("activate")
            if ok is False:
                raise PluginError(f"plugin {inst.name!r}: activate() returned False")
            self._register(inst)
            inst.life.to(PluginState.ACTIVE)
        except Exception as exc:
            reason = describe(exc if not isinstance(exc, TimeoutError) else PluginError(
                f"plugin {inst.name!r} did not start within {manifest.resources.timeout:g}s (resources.timeout)"
            ), inst.redactor)
            inst.failures += 1
            inst.retry_at = time.monotonic() + min(_RETRY_MAX_S, _RETRY_BASE_S * 2 ** (inst.failures - 1))
            inst.life.fail(reason)
            self._dispatcher(inst.tenant).unregister(inst.name)
            try:
                await inst.runner.close()
            except Exception:  # closing a broken runner must not hide why it broke
                log.debug("closing %s failed", inst.runner, exc_info=True)
            if persist:
                await self._persist_state(inst)
            if raise_errors:
                raise PluginError(reason) from None
            log.warning("plugin %s for tenant %s failed to start: %s", inst.name, inst.tenant, reason)
            return False
        inst.failures = 0
        inst.next_health = time.monotonic() + manifest.health_check.interval
        if persist:
            await self._persist_state(inst)
        return True

    def _register(self, inst: Instance) -> None:
        """Make an instance's hooks dispatchable for its tenant, with its priority, grants and timeout."""
        manifest = inst.record.manifest
        assert manifest is not None
        functions = {h.name: inst.runner.hook_function(h.name, h.method) for h in manifest.hooks}
        self._dispatcher(inst.tenant).register(
            inst.name,
            functions,
            priority=inst.row.priority,
            timeout=manifest.resources.timeout,
            granted=frozenset(inst.row.granted),
            redactor=inst.redactor,
            self_timed=inst.runner.times_its_calls,
        )

    async def _persist_state(self, inst: Instance, state: str | None = None) -> None:
        """Record this host's runtime state of an instance (a database that is down only costs the record)."""
        if self.store is None:
            return
        try:
            await self._db(self.store.set_runtime_state, inst.tenant, inst.name, state or inst.life.state.value,
                           None if state else inst.life.reason, host=self.host_name)
        except Exception as exc:
            log.warning("cannot record the state of %s for tenant %s: %s", inst.name, inst.tenant, exc)

    async def _stop(self, inst: Instance, *, persist: bool = True) -> None:
        """Deactivate and clean up an instance; errors are logged, never raised (the plugin is going away)."""
        if self._instances.get((inst.tenant, inst.name)) is inst:
            self._dispatcher(inst.tenant).unregister(inst.name)
        timeout = inst.record.manifest.resources.timeout if inst.record.manifest else 30.0
        if inst.life.state is PluginState.ACTIVE:
            for method in ("deactivate", "cleanup"):
                try:
                    async with asyncio.timeout(timeout):
                        await inst.runner.lifecycle(method)
                except Exception as exc:
                    log.warning("plugin %s %s() failed: %s", inst.name, method, describe(exc, inst.redactor))
            inst.life.to(PluginState.INACTIVE)
            inst.life.to(PluginState.UNLOADED)
        try:
            await inst.runner.close()
        except Exception:
            log.debug("closing %s failed", inst.runner, exc_info=True)
        if self._instances.get((inst.tenant, inst.name)) is inst:
            del self._instances[(inst.tenant, inst.name)]
        if persist:
            await self._persist_state(inst, PluginState.INACTIVE.value)

    def _verify_files(self, record: PluginRecord) -> None:
        """Refuse a plugin whose installed files differ from its RECORD, or (while a lock exists) from the lock.

        Editable (development) installs have no RECORD of their sources; they load, and `check` warns.
        """
        from .._integrity import check_lock, editable_location, lock_from_json, verify_distribution

        if record.folder is not None:
            return  # a folder plugin has no RECORD: integrity does not apply (`check` says so)
        dist = record.distribution_object()
        if dist is None:
            raise IntegrityError(f"plugin {record.name!r}: its installed files cannot be located for verification")
        if editable_location(dist) is None:
            problems = [str(p) for p in verify_distribution(dist)]
            if problems:
                raise IntegrityError(
                    f"plugin {record.name!r} refused: installed files differ from RECORD: {'; '.join(problems[:5])}"
                    f"; reinstall {record.distribution}"
                )
        text = self.store.get_setting("lock") if self.store is not None else None
        if text:
            drift = check_lock(dist, lock_from_json(text))
            if drift:
                raise IntegrityError(f"plugin {record.name!r} refused by the lock: {'; '.join(drift)}")

    async def _check_gave_up(self, tenant: str, plugin: str) -> None:
        """A sandboxed worker that kept crashing puts its plugin into the error state (retried with backoff)."""
        inst = self._instances.get((tenant, plugin))
        reason = getattr(inst.runner, "failed", None) if inst is not None else None
        if inst is None or not reason or inst.life.state is PluginState.ERROR:
            return
        await self._put_in_error(inst, str(reason))

    async def _put_in_error(self, inst: Instance, reason: str) -> None:
        """Take an instance out of dispatch into its error state; the health loop retries it with backoff."""
        self._dispatcher(inst.tenant).unregister(inst.name)
        inst.life.fail(inst.redactor.text(reason))
        inst.failures += 1
        inst.retry_at = time.monotonic() + min(_RETRY_MAX_S, _RETRY_BASE_S * 2 ** (inst.failures - 1))
        try:
            await inst.runner.close()
        except Exception:
            log.debug("closing %s failed", inst.runner, exc_info=True)
        await self._persist_state(inst)
        log.warning("plugin %s for tenant %s put into its error state: %s", inst.name, inst.tenant, inst.life.reason)


