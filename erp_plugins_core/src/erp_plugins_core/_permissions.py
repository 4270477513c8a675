"""Permission names, which hook and service each one unlocks, and the per-tenant grant check."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ._errors import PermissionDenied
from ._hookspecs import hook_info

EVENTS_EMIT = "events.emit"
FILES_READ = "files.read"
NETWORK_EXTERNAL = "network.external"

#: Every permission a manifest may declare, with what it allows.
PERMISSIONS: dict[str, str] = {
    "ai.generate": "answer ai_request and ai_stream",
    "ai.embeddings": "answer ai_embedding",
    "email.send": "answer send_email",
    "files.upload": "answer upload_file",
    "calendar.read": "answer list_calendar_events",
    "calendar.write": "answer create_calendar_event",
    "notifications.send": "answer send_notification",
    "workflow.execute": "answer workflow_step",
    "ui.extend": "answer ui_components (data-only UI components)",
    NETWORK_EXTERNAL: "reach the network from the sandbox; a plugin that declares it gets the network only for "
    "tenants that grant it",
    EVENTS_EMIT: "emit events to the tenant's other plugins (PluginContext.emit_event)",
    FILES_READ: "read the host files named in the current call (PluginContext.get_service('files'))",
}

#: The namespaces of the core's permissions: a permission in one of them must be a core permission.
CORE_NAMESPACES = frozenset(p.split(".", 1)[0] for p in PERMISSIONS)


def is_plugin_permission(name: str) -> bool:
    """Whether `name` has the shape of a permission a plugin defines for its provided hooks (`<plugin>.<word>`)."""
    plugin, dot, word = name.partition(".")
    return bool(dot and re.fullmatch(r"[a-z][a-z0-9_]{1,62}", plugin) and re.fullmatch(r"[a-z][a-z0-9_.\-]*", word)
                and plugin not in CORE_NAMESPACES)


#: Host services available through PluginContext.get_service, and the permission each needs.
SERVICE_PERMISSIONS: dict[str, str] = {"files": FILES_READ}


def network_allowed(manifest: Any, granted: Iterable[str]) -> bool:
    """Whether a sandboxed plugin's worker gets the network for a tenant.

    `resources.network_access: true` asks for it; so does declaring `network.external` (the original design's
    way), and then the network is given only for tenants that granted `network.external`.
    """
    declares = NETWORK_EXTERNAL in manifest.permissions
    wants = bool(manifest.resources.network_access) or declares
    return wants and (not declares or NETWORK_EXTERNAL in set(granted))


def hook_permission(hook: str) -> str | None:
    """The permission a plugin needs to receive `hook`, or None when it needs none."""
    info = hook_info(hook)
    if info is None:
        raise KeyError(hook)
    return info.permission


def require(granted: Iterable[str], permission: str | None, *, plugin: str, tenant: str, action: str) -> None:
    """Raise PermissionDenied naming the permission when `granted` lacks it."""
    if permission is not None and permission not in granted:
        raise PermissionDenied(
            f"plugin {plugin!r} lacks permission {permission!r} for tenant {tenant!r} ({action}); "
            f"grant it with: erp-plugins enable {plugin} --tenant {tenant} --grant {permission}"
        )
