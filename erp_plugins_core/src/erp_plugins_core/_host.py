"""PluginHost: the Python API ERP code uses, tying the catalog, the state store, lifecycles and dispatch together.

One instance of a plugin runs per tenant that enabled it (each tenant has its own config). Where its code
runs is decided in `_make_runner`: sandboxed plugins in a bubblewrap worker, trusted ones in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ._catalog import ACCEPTED_FINDINGS, Catalog, acceptance_key
from ._config import redacted, resolve, to_stored, validate_config
from ._context import PluginContext, current_user_context
from ._discovery import PluginRecord
from ._dispatch import (
    HookResult,
    Impl,
    StreamDeadline,
    TenantDispatcher,
    bind_arguments,
    call_first,
    call_one,
    describe,
    finish_all,
    is_firstresult,
    open_stream,
    should_fall_back,
    start_all,
)
from ._errors import (
    AllPluginsFailed,
    ConfigError,
    DependencyError,
    IntegrityError,
    LifecycleError,
    PermissionDenied,
    PluginError,
    SandboxError,
    StreamInterrupted,
    UnknownHookError,
    UnknownPluginError,
)
from ._follow import StateFollower, applying
from ._health import health_verdict, unhealthy_reason
from ._hookspecs import HOOKS, hook_info, hook_names
from ._jobs import JobSettings
from ._jobs._service import MAX_EVENT_DEPTH as MAX_EVENT_DEPTH  # re-exported: the bound on chains of events
from ._jobs._service import JobService
from ._lifecycle import Lifecycle, PluginState
from ._permissions import network_allowed
from ._redact import Redactor
from ._runner import InProcessRunner, PluginRunner
from ._secrets import SecretBox
from ._services import FilesService
from ._state import (
    AuditEntry,
    StateStore,
    StateTransaction,
    TenantPlugin,
    default_location,
    open_store,
    parse_location,
    validate_tenant,
)

log = logging.getLogger("erp_plugins.host")
T = TypeVar("T")

DEFAULT_PRIORITY = 100
UNSAFE_NO_SANDBOX_ENV = "ERP_PLUGINS_UNSAFE_NO_SANDBOX"
HOST_NAME_ENV = "ERP_PLUGINS_HOST_NAME"
_RETRY_BASE_S = 5.0
_RETRY_MAX_S = 300.0

#: Progress callback of the current `call` (the CLI shows a progress bar with it).
_progress_cb: contextvars.ContextVar[Callable[[str, int, int | None, str], None] | None] = contextvars.ContextVar(
    "erp_plugins_progress", default=None
)


def data_root() -> Path:
    """Where sandboxed plugins with `file_permissions` keep their files (`<root>/<plugin>/<tenant>`, bound at /data).

    `ERP_PLUGINS_DATA_DIR`, else /var/lib/erp-plugins/data for root (the per-plugin uids must reach it; root's
    home is closed to them), else the user's data dir.
    """
    env = os.environ.get("ERP_PLUGINS_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/erp-plugins/data")
    import platformdirs

    return Path(platformdirs.user_data_dir("erp-plugins"), "data")


def default_host_name() -> str:
    """`$ERP_PLUGINS_HOST_NAME`, else `hostname:pid`: how this process's runtime rows and health are labelled."""
    name = os.environ.get(HOST_NAME_ENV, "").strip()
    if name:
        if len(name) > 200 or not name.isprintable():
            raise ConfigError(f"{HOST_NAME_ENV} must be printable text of at most 200 characters")
        return name
    from ._state import default_host_name as hostname_pid

    return hostname_pid()


def unsafe_no_sandbox() -> bool:
    """True when the development-only opt-out runs sandboxed plugins in the host's process."""
    return os.environ.get(UNSAFE_NO_SANDBOX_ENV, "") == "1"


@dataclass
class HealthReport:
    """One enabled plugin's health for one tenant."""

    plugin: str
    tenant: str
    healthy: bool
    detail: str = ""
    error: str | None = None
    state: str = ""
    host: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "tenant": self.tenant, "healthy": self.healthy, "detail": self.detail,
                "error": self.error, "state": self.state, "host": self.host}


@dataclass
class Instance:
    """One plugin running (or trying to) for one tenant."""

    record: PluginRecord
    tenant: str
    row: TenantPlugin
    runner: PluginRunner
    life: Lifecycle
    redactor: Redactor = field(default_factory=Redactor)
    context: PluginContext | None = None
    failures: int = 0
    retry_at: float = 0.0
    next_health: float = 0.0

    @property
    def name(self) -> str:
        return self.record.name


def _same_policy(a: TenantPlugin, b: TenantPlugin) -> bool:
    """Whether two rows run an instance alike (priority aside: it only orders dispatch)."""
    return (a.enabled, a.trusted, sorted(a.granted), a.config) == (b.enabled, b.trusted, sorted(b.granted), b.config)


class _HostBridge:
    """What a plugin's context reaches in the host: the files service, events and progress."""

    def __init__(self, host: PluginHost, plugin: str, tenant: str) -> None:
        self._host, self._plugin, self._tenant = host, plugin, tenant

    def get_service(self, name: str) -> Any:
        if name == "files":
            return FilesService()
        raise KeyError(name)

    async def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        await self._host.emit(self._tenant, event_type, data, source=self._plugin)

    def progress(self, done: int, total: int | None, message: str) -> None:
        cb = _progress_cb.get()
        if cb is not None:
            cb(self._plugin, done, total, message)


class PluginHost:
    """Runs the enabled plugins of every tenant and dispatches hooks to them.

    `state` is an SQLite file path or a `postgresql://` URL (default: ERP_PLUGINS_STATE, else a file in the
    user's data dir), or a StateStore. Opening starts no plugin: a tenant's plugins start on its first call,
    except for the tenants named in `tenants`, which are brought up when the host opens.
    The host follows the shared state: what any process commits applies before this host's next call.
    `host_name` labels this process's runtime rows (default: ERP_PLUGINS_HOST_NAME, else hostname:pid).
    `max_workers` and `worker_idle` bound the sandboxed workers alive at once and how long an idle one is kept
    (default: ERP_PLUGINS_MAX_WORKERS, derived from memory, and ERP_PLUGINS_WORKER_IDLE, 600 s).
    `plugins_dirs`: folders of folder plugins (as `--plugins-dir`),
    searched before those of ERP_PLUGINS_PATH.
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
        self._tenant_locks: dict[str, asyncio.Lock] = {}
        self._health_task: asyncio.Task[None] | None = None

    # --- opening and closing ----------------------------------------------------------------------------

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
            await self._ensure_tenant(tenant, lazy=False)
        if self._health_loop_enabled and self._health_task is None:
            self._health_task = asyncio.create_task(self._health_loop(), name="erp-plugins-health")
        await self._jobs().start()
        return self

    async def close(self) -> None:
        """Deactivate and clean up every running plugin, stop workers, close the store."""
        if self._job_service is not None:  # first: the deliveries running here finish with their plugins up
            await self._job_service.close()
            self._job_service = None
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

        `lazy`: sandboxed instances start their worker on their first call (or now, for a tenant named in
        `tenants`, so that its health is checked for real and its first call is warm).
        """
        if tenant in self._started_tenants:
            return
        async with self._lock(tenant):
            if tenant in self._started_tenants:
                return
            token = applying.set(True)
            try:
                rows = {r.plugin: r for r in await self._db(self._require_store().list, tenant) if r.enabled}
                self._started_tenants.add(tenant)
                for name in self.catalog.activation_order(list(rows)):
                    inst = await self._new_instance(name, tenant, rows[name], lazy=lazy)
                    if inst is not None:
                        await self._start(inst)
            finally:
                applying.reset(token)

    async def warm_up(self, tenants: list[str] | None = None) -> None:
        """Start these tenants' plugins now, sandboxed workers included (None: every tenant in the state).

        Opening a host starts nothing; this is for a process that wants warm first calls, or a real health
        check of every plugin (`erp-plugins health`). Tenants already started are left as they are.
        """
        for tenant in tenants if tenants is not None else await self._db(self._require_store().tenants):
            validate_tenant(tenant)
            await self._ensure_tenant(tenant, lazy=False)

    @staticmethod
    async def _db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a state-store call in a thread: the event loop never waits on the database."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # --- instances ----------------------------------------------------------------------------------------

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
        from ._sandbox import SandboxRunner, WorkerFleet

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
        from ._integrity import check_lock, editable_location, lock_from_json, verify_distribution

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

    # --- administration -----------------------------------------------------------------------------------

    def record(self, name: str) -> PluginRecord:
        """The discovered plugin `name`; UnknownPluginError listing the installed ones otherwise."""
        rec = self.catalog.get(name)
        if rec is None:
            known = ", ".join(self.catalog.names()) or "none"
            raise UnknownPluginError(f"no plugin named {name!r} is installed (installed: {known})")
        return rec

    async def enable(
        self,
        name: str,
        *,
        tenant: str,
        config: Mapping[str, Any] | None = None,
        grant: list[str] | None = None,
        trust: bool = False,
        priority: int | None = None,
    ) -> TenantPlugin:
        """Validate config, load, initialize and activate `name` for `tenant`, then persist it.

        Refused while a plugin dependency is not enabled for the tenant, for a plugin that asks to run
        unsandboxed without `trust`, and for a sandboxed plugin when bubblewrap is missing.
        """
        validate_tenant(tenant)
        store = self._require_store()
        rec = self.record(name)
        if rec.errors or rec.manifest is None:
            raise PluginError(f"plugin {name!r} is invalid: {'; '.join(rec.errors)}")
        manifest = rec.manifest
        if not manifest.security.sandbox:
            if not trust:
                raise PermissionDenied(
                    f"plugin {name!r} asks to run unsandboxed in the host's process (security.sandbox: false in its "
                    f"plugin.yaml); review it and pass --trust to allow it for tenant {tenant!r}"
                )
            self._verify_files(rec)  # a tampered file is named as such, before any scan finding
            self._require_accepted_findings(rec)
        if manifest.security.sandbox and not unsafe_no_sandbox():
            from ._sandbox import sandbox_available

            why = sandbox_available()
            if why is not None:
                raise SandboxError(
                    f"plugin {name!r} must run sandboxed, but the sandbox is unavailable: {why} "
                    f"(development only: {UNSAFE_NO_SANDBOX_ENV}=1 runs it unconfined)"
                )
        granted = list(manifest.permissions) if grant is None else list(dict.fromkeys(grant))
        undeclared = [p for p in granted if p not in manifest.permissions]
        if undeclared:
            raise PermissionDenied(
                f"cannot grant {', '.join(undeclared)} to {name!r}: its plugin.yaml does not declare "
                f"{'it' if len(undeclared) == 1 else 'them'} (declared: {', '.join(manifest.permissions) or 'none'})"
            )
        self._require_dependencies(name, tenant, await self._db(store.list, tenant))
        await self._ensure_tenant(tenant)
        validated = validate_config(dict(config or {}), manifest)
        stored = to_stored(validated, manifest, self.box)
        previous = await self._db(store.get, tenant, name)
        row = TenantPlugin(
            tenant=tenant,
            plugin=name,
            enabled=True,
            trusted=bool(trust),
            granted=granted,
            priority=DEFAULT_PRIORITY if priority is None else priority,
            config=stored,
            state=PluginState.DISCOVERED.value,
        )
        detail = self._audit_detail(row, previous, manifest)

        def commit(tx: StateTransaction) -> None:
            # atomic with the check: a dependency disabled meanwhile by another process refuses this enable
            self._require_dependencies(name, tenant, tx.list(tenant))
            tx.put(row)
            tx.add_audit(AuditEntry.now(tenant, name, "enable", detail))

        async with self._lock(tenant):
            token = applying.set(True)
            try:
                old = self._instances.get((tenant, name))
                if old is not None:
                    await self._stop(old, persist=False)
                inst = Instance(rec, tenant, row, self._make_runner(rec, tenant, trust, granted),
                                Lifecycle(name, tenant))
                self._instances[(tenant, name)] = inst
                try:
                    # persisted below, in one transaction with the dependency re-check and the audit entry
                    await self._start(inst, raise_errors=True, persist=False)
                    row.state = inst.life.state.value
                    await self._db(store.atomic, commit)
                except BaseException:
                    if self._instances.get((tenant, name)) is inst:
                        await self._stop(inst, persist=False)
                    if old is not None and previous is not None and previous.enabled:
                        restored = await self._new_instance(name, tenant, previous, lazy=False)  # the old config
                        if restored is not None:
                            await self._start(restored)
                    raise
                await self._persist_state(inst)  # this host's runtime row (the row put records policy only)
            finally:
                applying.reset(token)
        return row

    @staticmethod
    def _audit_detail(row: TenantPlugin, previous: TenantPlugin | None, manifest: Any) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "granted": row.granted,
            "trusted": row.trusted,
            "priority": row.priority,
            "config": redacted(row.config, manifest),
        }
        if previous is not None:
            detail["previous_granted"] = previous.granted
            detail["config_changed"] = sorted(
                k for k in set(row.config) | set(previous.config) if row.config.get(k) != previous.config.get(k)
            )
        return detail

    def _require_accepted_findings(self, rec: PluginRecord) -> None:
        """An unsandboxed plugin with code-scan findings runs only once an administrator accepted them."""
        from ._scan import scan_distribution

        dist = rec.code_distribution()  # a folder plugin's folder too
        findings = scan_distribution(dist) if dist is not None else []
        if not findings:
            return
        accepted = json.loads(self._require_store().get_setting(ACCEPTED_FINDINGS) or "{}")
        if accepted.get(rec.name) != acceptance_key(rec):
            first = findings[0]
            raise PermissionDenied(
                f"plugin {rec.name!r} would run unsandboxed with {len(findings)} code-scan finding(s) "
                f"(first: {first.file}:{first.line} {first.rule} {first.message}); review them with "
                f"erp-plugins check {rec.name}, then accept with: erp-plugins check --accept-findings {rec.name}"
            )

    def _require_dependencies(self, name: str, tenant: str, rows: list[TenantPlugin]) -> None:
        enabled = {r.plugin for r in rows if r.enabled}
        for dep in self.catalog.dependencies(name):
            if dep not in enabled:
                raise DependencyError(
                    f"plugin {name!r} depends on plugin {dep!r}, which is not enabled for tenant {tenant!r}; "
                    f"run first: erp-plugins enable {dep} --tenant {tenant}"
                )

    async def disable(self, name: str, *, tenant: str) -> None:
        """Deactivate `name` for `tenant` and persist; refused while an enabled plugin depends on it."""
        validate_tenant(tenant)
        store = self._require_store()
        self.record(name)
        dependents = self.catalog.dependents(name)

        def commit(tx: StateTransaction) -> None:
            row = tx.get(tenant, name)
            if row is None or not row.enabled:
                raise LifecycleError(f"plugin {name!r} is not enabled for tenant {tenant!r}")
            enabled = {r.plugin for r in tx.list(tenant) if r.enabled}
            users = [d for d in dependents if d in enabled]
            if users:
                raise DependencyError(
                    f"cannot disable {name!r} for tenant {tenant!r}: {', '.join(users)} depend(s) on it; "
                    f"disable {'them' if len(users) > 1 else 'it'} first: erp-plugins disable {users[0]} "
                    f"--tenant {tenant}"
                )
            row.enabled = False
            row.state = PluginState.INACTIVE.value
            row.reason = None
            tx.put(row)
            tx.add_audit(AuditEntry.now(tenant, name, "disable", {}))

        async with self._lock(tenant):
            await self._db(store.atomic, commit)
            inst = self._instances.get((tenant, name))
            if inst is not None:
                self._retire(inst)

    def config_of(self, name: str, *, tenant: str) -> dict[str, Any]:
        """The stored config of `name` for `tenant`, sensitive values redacted."""
        validate_tenant(tenant)
        rec = self.record(name)
        row = self._require_store().get(tenant, name)
        if row is None:
            raise LifecycleError(
                f"plugin {name!r} has no config for tenant {tenant!r}; enable it first: "
                f"erp-plugins enable {name} --tenant {tenant}"
            )
        assert rec.manifest is not None
        return redacted(row.config, rec.manifest)

    def status(self, tenant: str) -> dict[str, dict[str, Any]]:
        """Per plugin name: enabled, state (live when this host runs it), trusted, granted, priority, reason."""
        out: dict[str, dict[str, Any]] = {}
        for row in self._require_store().list(tenant):
            inst = self._instances.get((tenant, row.plugin))
            out[row.plugin] = {
                "enabled": row.enabled,
                "state": inst.life.state.value if inst else row.state,
                "trusted": row.trusted,
                "granted": list(row.granted),
                "priority": row.priority,
                "reason": inst.life.reason if inst else row.reason,
            }
        return out

    # --- following the shared state -------------------------------------------------------------------------

    async def _apply_plugin_change(self, tenant: str, name: str) -> None:
        """Bring this host's instance of `name` for `tenant` in line with its row, which some process changed.

        Disabled: no new call, stopped once its running calls end. Config, grants or trust changed: a new
        instance with the new values serves the next call. Priority alone: re-registered in place.
        """
        if tenant not in self._started_tenants:
            return  # its plugins start from the store on its first call
        row = await self._db(self._require_store().get, tenant, name)
        async with self._lock(tenant):
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

    # --- hooks ----------------------------------------------------------------------------------------------

    async def _impls(self, hook: str, tenant: str) -> list[Impl]:
        follower = self._follower
        if follower is not None and follower.due():
            await follower.catch_up()
        if hook not in HOOKS and self.catalog.hook(hook) is None:  # a core hook, or one a plugin provides
            raise UnknownHookError(f"no hook named {hook!r}; hooks: {', '.join(hook_names())}")
        if tenant not in self._started_tenants:
            validate_tenant(tenant)
            self._require_store()
            await self._ensure_tenant(tenant)
        disp = self._dispatchers.get(tenant)
        return disp.table(hook) if disp is not None else []

    async def call(
        self,
        hook: str,
        *,
        tenant: str,
        user_context: Mapping[str, Any] | None = None,
        progress: Callable[[str, int, int | None, str], None] | None = None,
        **kwargs: Any,
    ) -> list[HookResult]:
        """Call `hook` on every plugin active for `tenant` that implements it, concurrently.

        One HookResult per plugin; a plugin's exception, timeout or missing permission is its own result.
        """
        follower = self._follower
        if follower is not None and follower.due():
            await follower.catch_up()
        disp = self._dispatchers.get(tenant) if tenant in self._started_tenants and hook in HOOKS else None
        impls = disp.table(hook) if disp is not None else await self._impls(hook, tenant)
        args = bind_arguments(hook, kwargs)
        if not impls:
            return []
        # set only what the caller gave: a call made while handling another (an event) keeps its user
        t_user = current_user_context.set(dict(user_context)) if user_context is not None else None
        t_prog = _progress_cb.set(progress) if progress is not None else None
        try:
            if hook not in HOOKS and is_firstresult(hook):  # a provided firstresult hook: as `first`, in order
                results = await call_first(impls, hook, args)
            else:
                results, pending = start_all(impls, hook, args)
                if pending is not None:
                    await finish_all(pending, hook, results)
        finally:
            if t_user is not None:
                current_user_context.reset(t_user)
            if t_prog is not None:
                _progress_cb.reset(t_prog)
        for r in results:
            if not r.success:
                await self._check_gave_up(tenant, r.plugin)
        return results

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

    async def first(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """The first successful result, trying plugins in priority order (lower `--priority` first).

        Falls back to the next plugin on unavailable, timeout, rate limit, crash or missing permission;
        raises AllPluginsFailed naming every plugin's error otherwise or when all fail.
        """
        return (await self.first_result(hook, tenant=tenant, user_context=user_context, **kwargs)).result

    async def first_result(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None,
        plugin_type: str | None = None, **kwargs: Any
    ) -> HookResult:
        """As `first`, but the whole HookResult of the plugin that answered (its name, usage, duration).

        `plugin_type` (e.g. "ai_provider") limits it to plugins of that manifest type.
        """
        impls = await self._impls(hook, tenant)
        if plugin_type is not None:
            impls = self._of_type(impls, plugin_type)
        args = bind_arguments(hook, kwargs)
        failures: list[HookResult] = []
        t_user = current_user_context.set(dict(user_context or {}))
        try:
            for impl in impls:
                result = await call_one(impl, hook, args)
                if result.success:
                    return result
                failures.append(result)
                await self._check_gave_up(tenant, result.plugin)
                if not should_fall_back(result.exception):
                    break
        finally:
            current_user_context.reset(t_user)
        raise self._all_failed(hook, tenant, failures)

    @staticmethod
    def _all_failed(hook: str, tenant: str, failures: list[HookResult]) -> AllPluginsFailed:
        if not failures:
            err = AllPluginsFailed(f"no plugin active for tenant {tenant!r} implements {hook}")
        else:
            err = AllPluginsFailed(
                f"{hook} failed for tenant {tenant!r}: " + "; ".join(f"{r.plugin}: {r.error}" for r in failures)
            )
        err.results = failures  # type: ignore[attr-defined]
        return err

    async def stream(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Chunks from the first plugin (in priority order) that starts streaming.

        A plugin that fails before its first chunk is skipped for the next; one that fails after it raises
        StreamInterrupted: its partial output is never continued with another plugin's text.
        """
        tagged = self.stream_tagged(hook, tenant=tenant, user_context=user_context, **kwargs)
        try:
            async for _plugin, chunk in tagged:
                yield chunk
        finally:
            await tagged.aclose()  # a consumer that stopped early stops the plugin's stream too

    def _of_type(self, impls: list[Impl], plugin_type: str) -> list[Impl]:
        """The implementations whose plugin's manifest says `plugin_type`."""
        out = []
        for impl in impls:
            rec = self.catalog.get(impl.plugin)
            if rec is not None and rec.manifest is not None and rec.manifest.plugin_type.value == plugin_type:
                out.append(impl)
        return out

    async def stream_tagged(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None,
        plugin_type: str | None = None, **kwargs: Any
    ) -> AsyncIterator[tuple[str, Any]]:
        """As `stream`, each chunk with the name of the plugin that produced it: `(plugin, chunk)`.

        `plugin_type` (e.g. "ai_provider") limits it to plugins of that manifest type.
        """
        if (info := hook_info(hook)) is not None and not info.streaming:
            raise UnknownHookError(f"{hook} is not a streaming hook; use call() or first()")
        impls = await self._impls(hook, tenant)
        if plugin_type is not None:
            impls = self._of_type(impls, plugin_type)
        args = bind_arguments(hook, kwargs)
        failures: list[HookResult] = []
        t_user = current_user_context.set(dict(user_context or {}))
        try:
            for impl in impls:
                if impl.denied is not None:
                    failures.append(HookResult(impl.plugin, False, error=impl.denied, error_kind="permission"))
                    continue
                start = time.perf_counter()
                try:
                    iterator, chunk = await open_stream(impl, hook, args)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    failures.append(HookResult(impl.plugin, False, None, describe(exc, impl.redactor),
                                               time.perf_counter() - start, exception=exc))
                    if not should_fall_back(exc):
                        break
                    continue
                count = 0
                deadline = StreamDeadline(impl, hook)
                try:
                    while True:
                        yield impl.plugin, impl.redactor.redact(chunk)
                        count += 1
                        try:
                            chunk = await deadline.next(iterator)
                        except StopAsyncIteration:
                            return
                        except Exception as exc:
                            raise StreamInterrupted(
                                f"{impl.plugin} failed after {count} chunk(s) of {hook}: "
                                f"{describe(exc, impl.redactor)}; the partial answer is not continued by another plugin"
                            ) from exc
                finally:
                    deadline.close()
                    # the consumer stopped early or the stream ended: let the plugin (or its worker) stop too
                    aclose = getattr(iterator, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
        finally:
            current_user_context.reset(t_user)
        raise self._all_failed(hook, tenant, failures)

    # --- events ---------------------------------------------------------------------------------------------

    async def emit(self, tenant: str, event_type: str, data: dict[str, Any], *, source: str | None = None) -> str:
        """Store an event for `on_event` of the tenant's enabled plugins (not the source); its id once stored.

        Delivery is durable and at least once, in emit order per plugin, retried with backoff (see `_jobs`);
        an event emitted while handling one more than MAX_EVENT_DEPTH deep is refused (EventChainTooDeep).
        """
        validate_tenant(tenant)
        return await self._jobs().emit(tenant, event_type, data, source=source)

    async def submit(self, hook: str, *, tenant: str, idempotency_key: str | None = None, **kwargs: Any) -> str:
        """Queue `hook` as a background job for the tenant's enabled plugins that implement it; the job's id.

        Arguments are checked now; the same idempotency key for the same tenant gives the same job. The job
        runs in a worker (or, with SQLite, an open host); enabled and granted are checked when it runs.
        """
        validate_tenant(tenant)
        return await self._jobs().submit(hook, tenant, idempotency_key, kwargs)

    async def job(self, job_id: str) -> dict[str, Any]:
        """`{id, hook, tenant, state, results, attempts, error}` of a job or event (JobNotFound if unknown)."""
        return await self._jobs().job(job_id)

    async def run_jobs(self, *, stop: asyncio.Event, concurrency: int = 1, name: str | None = None) -> None:
        """Run deliveries and jobs until `stop` is set; the running ones then finish (`erp-plugins worker`)."""
        await self._jobs().run(stop=stop, concurrency=concurrency, name=name)

    def _jobs(self) -> JobService:
        if self._job_service is None:
            store = self._require_store()
            location = getattr(store, "_url", None) or getattr(store, "path", None)
            if location is None:
                raise PluginError(f"{store!r} has no location a job engine can open")
            self._job_service = JobService(self, str(location), self._job_settings, self._deliver)
        return self._job_service

    # --- health ---------------------------------------------------------------------------------------------

    async def health(self, tenant: str | None = None) -> list[HealthReport]:
        """Every enabled plugin's health check (with the manifest's timeout), for one tenant or all."""
        store = self._require_store()
        tenants = [tenant] if tenant is not None else await self._db(store.tenants)
        reports: list[HealthReport] = []
        for t in tenants:
            validate_tenant(t)
            await self._ensure_tenant(t)
            rows = [r for r in await self._db(store.list, t) if r.enabled]
            checks = [self._health_one(t, r) for r in rows]
            reports.extend(await asyncio.gather(*checks))
        for report in reports:
            report.host = self.host_name
        return reports

    async def _health_one(self, tenant: str, row: TenantPlugin) -> HealthReport:
        inst = self._instances.get((tenant, row.plugin))
        if inst is None:
            return HealthReport(row.plugin, tenant, False, "", row.reason or "not running", row.state)
        if inst.life.state is not PluginState.ACTIVE:
            return HealthReport(row.plugin, tenant, False, "", inst.life.reason or inst.life.state.value,
                                inst.life.state.value)
        assert inst.record.manifest is not None
        timeout = inst.record.manifest.health_check.timeout
        try:
            async with asyncio.timeout(timeout):
                report = await inst.runner.health_check()
        except TimeoutError:
            return HealthReport(row.plugin, tenant, False, "", f"health check did not answer within {timeout:g}s",
                                inst.life.state.value)
        except Exception as exc:
            return HealthReport(row.plugin, tenant, False, "", describe(exc, inst.redactor), inst.life.state.value)
        healthy, problem = health_verdict(report, inst.redactor)
        if problem is not None:
            return HealthReport(row.plugin, tenant, False, "", problem, inst.life.state.value)
        detail = inst.redactor.text(str(report.get("detail", "")))
        error = None
        if not healthy:
            error = inst.redactor.text(unhealthy_reason(report, detail))
        return HealthReport(row.plugin, tenant, healthy, detail, error, inst.life.state.value)

    async def _health_loop(self) -> None:
        """While open: re-check health on each manifest's interval; retry failed plugins with backoff."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for inst in list(self._instances.values()):
                try:
                    if inst.life.state is PluginState.ERROR and now >= inst.retry_at:
                        await self._start(inst)
                    elif inst.life.state is PluginState.ACTIVE and now >= inst.next_health:
                        assert inst.record.manifest is not None
                        inst.next_health = now + inst.record.manifest.health_check.interval
                        report = await self._health_one(inst.tenant, inst.row)
                        if not report.healthy:
                            log.warning("plugin %s for tenant %s unhealthy: %s", inst.name, inst.tenant, report.error)
                except Exception:  # the loop must survive any one plugin
                    log.exception("health loop: plugin %s", inst.name)
