"""Health checks of the enabled plugins, and the loop that re-checks and retries them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from .._dispatch import describe
from .._health import health_verdict, unhealthy_reason
from .._lifecycle import PluginState
from .._state import (
    TenantPlugin,
    validate_tenant,
)
from ._support import (
    HostBase,
    log,
)


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



class HealthMixin(HostBase):
    """Health checks of the enabled plugins, and the loop that re-checks and retries them."""

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


