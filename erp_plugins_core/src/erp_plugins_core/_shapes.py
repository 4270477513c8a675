"""The JSON shapes of the contract (`list`, `config show`, `audit`, `events`, `jobs`), built once for the CLI
and the HTTP API.

Both print exactly what these functions return, so an HTTP answer and the CLI's `--json` never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._catalog import Catalog
    from ._record import PluginRecord
    from ._state import AuditEntry, TenantPlugin

__all__ = ["audit_rows", "config_shape", "plugin_row", "plugin_rows", "with_tenant", "work_list"]


def plugin_rows(catalog: Catalog, tenant: str | None = None,
                status: Mapping[str, TenantPlugin] | None = None) -> list[dict[str, Any]]:
    """`list [--tenant T] --json`: every discovered plugin; with `tenant`, its state for that tenant."""
    rows = [plugin_row(rec) for rec in catalog.records]
    return with_tenant(rows, tenant, status or {}) if tenant is not None else rows


def plugin_row(rec: PluginRecord) -> dict[str, Any]:
    """One plugin's row of `list --json` without any tenant's state: what the discovery cache keeps for `list`."""
    m = rec.manifest
    return {
        "name": rec.name,
        "version": m.version if m else rec.dist_version,
        "distribution": rec.distribution,
        "source": rec.source,  # distribution (an entry point) or folder (--plugins-dir / ERP_PLUGINS_PATH)
        "plugin_type": m.plugin_type.value if m else None,
        "api_version": m.api_version if m else None,
        "hooks": [h.name for h in m.hooks] if m else [],
        "provides_hooks": [h.name for h in m.provides_hooks] if m else [],  # hooks it defines for other plugins
        "permissions": list(m.permissions) if m else [],
        "sandboxed": m.security.sandbox if m else None,
        "valid": not rec.errors,
        "errors": list(rec.errors),
    }


def with_tenant(rows: list[dict[str, Any]], tenant: str,
                status: Mapping[str, TenantPlugin]) -> list[dict[str, Any]]:
    """`rows` (of `plugin_row`) with each plugin's state for `tenant` added; `status` maps plugin name to its row."""
    out = []
    for item in rows:
        row = status.get(item["name"])
        out.append({**item, "tenant": {
            "name": tenant,
            "enabled": bool(row and row.enabled),
            "state": row.state if row else "not enabled",
            "trusted": bool(row and row.trusted),
            "granted": list(row.granted) if row else [],
            "priority": row.priority if row else None,
            "reason": row.reason if row else None,
        }})
    return out


def config_shape(plugin: str, tenant: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """`config show --json`: the stored config, sensitive values already redacted by the host."""
    return {"plugin": plugin, "tenant": tenant, "config": dict(config)}


def audit_rows(entries: Iterable[AuditEntry]) -> list[dict[str, Any]]:
    """`audit --json`: one object per entry, in the order given."""
    return [{"time": e.time, "user": e.user, "tenant": e.tenant, "plugin": e.plugin, "action": e.action,
             "detail": e.detail} for e in entries]


def work_list(kind: str, backlog: Mapping[str, int], views: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`events --json` / `jobs --json`: `{backlog, events|jobs}`, the deliveries by state and the newest works.

    `kind` is "event" or "job"; each view is `job_view`'s shape (the contract's job shape plus kind and created).
    """
    return {"backlog": dict(backlog), f"{kind}s": [dict(v) for v in views]}
