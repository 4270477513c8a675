"""Enable, disable and what an administrator reads: records, config, status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .._catalog import ACCEPTED_FINDINGS, acceptance_key
from .._config import redacted, to_stored, validate_config
from .._discovery import PluginRecord
from .._errors import (
    DependencyError,
    LifecycleError,
    PermissionDenied,
    PluginError,
    SandboxError,
    UnknownPluginError,
)
from .._follow import applying
from .._lifecycle import Lifecycle, PluginState
from .._state import (
    AuditEntry,
    StateTransaction,
    TenantPlugin,
    validate_tenant,
)
from ._support import (
    DEFAULT_PRIORITY,
    UNSAFE_NO_SANDBOX_ENV,
    HostBase,
    Instance,
    unsafe_no_sandbox,
)


class AdminMixin(HostBase):
    """Enable, disable and what an administrator reads: records, config, status."""

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
            from .._sandbox import sandbox_available

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
                    self._forget_targets(tenant)
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
        from .._scan import scan_distribution

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
            self._forget_targets(tenant)
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


