"""PluginContext: what a running plugin may ask of the host, gated by the tenant's grants.

The same class serves plugins in the host's process and in a sandboxed worker; only the `bridge` differs
(direct calls here, RPC to the host there).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from ._permissions import EVENTS_EMIT, SERVICE_PERMISSIONS, require
from ._redact import Redactor

#: The user on whose behalf the current hook call runs (set by the dispatcher for each call).
current_user_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "erp_plugins_user_context", default=MappingProxyType({})
)

#: Usage counters (tokens, bytes) a plugin reports during the current hook call; the dispatcher reads them.
current_usage: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "erp_plugins_usage", default=None
)


class ContextBridge(Protocol):
    """How a context reaches the host: services, events and progress."""

    def get_service(self, name: str) -> Any: ...

    def emit_event(self, event_type: str, data: dict[str, Any]) -> Awaitable[None]: ...

    def progress(self, done: int, total: int | None, message: str) -> None: ...


class PluginContext:
    """The host as one plugin instance sees it, for one tenant."""

    __slots__ = ("tenant_id", "plugin", "_config", "_granted", "_bridge", "_logger", "_redactor")

    def __init__(
        self,
        *,
        tenant_id: str,
        plugin: str,
        config: Mapping[str, Any],
        granted: frozenset[str],
        bridge: ContextBridge,
        redactor: Redactor,
        logger: logging.Logger | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.plugin = plugin
        self._config = dict(config)
        self._granted = granted
        self._bridge = bridge
        self._redactor = redactor
        self._logger = logger or logging.getLogger(f"erp_plugins.plugin.{plugin}")

    def __repr__(self) -> str:
        return f"PluginContext(plugin={self.plugin!r}, tenant_id={self.tenant_id!r})"

    @property
    def granted(self) -> frozenset[str]:
        """The permissions this tenant granted the plugin."""
        return self._granted

    @property
    def user_context(self) -> Mapping[str, Any]:
        """Who the current hook call runs for, as ERP code passed it (`{}` when it passed nothing)."""
        return current_user_context.get()

    def get_config(self, key: str, default: Any = None) -> Any:
        """One value of this tenant's config for the plugin (secrets resolved), or `default`."""
        return self._config.get(key, default)

    def get_service(self, name: str) -> Any:
        """A host service by name (see SERVICE_PERMISSIONS); refused without its permission."""
        if name not in SERVICE_PERMISSIONS:
            raise KeyError(f"no host service named {name!r}; available: {', '.join(sorted(SERVICE_PERMISSIONS))}")
        require(self._granted, SERVICE_PERMISSIONS[name], plugin=self.plugin, tenant=self.tenant_id,
                action=f"get_service({name!r})")
        return self._bridge.get_service(name)

    def log(self, level: str | int, message: str, **fields: Any) -> None:
        """Log through the plugin's own logger, with structured fields; secret values are redacted."""
        lvl = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
        if not isinstance(lvl, int):
            lvl = logging.INFO
        clean = {k: self._redactor.redact(v) for k, v in fields.items()}
        self._logger.log(
            lvl,
            self._redactor.redact(str(message)),
            extra={"plugin": self.plugin, "tenant": self.tenant_id, "fields": clean},
        )

    async def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        """Deliver an event to `on_event` of the tenant's active plugins; needs `events.emit`."""
        require(self._granted, EVENTS_EMIT, plugin=self.plugin, tenant=self.tenant_id,
                action=f"emit_event({event_type!r})")
        await self._bridge.emit_event(event_type, data)

    def progress(self, done: int, total: int | None = None, message: str = "") -> None:
        """Report progress of a long call (bytes uploaded, items processed); shown by the CLI."""
        self._bridge.progress(done, total, message)

    def record_usage(self, **counts: int) -> None:
        """Report usage of the current call (e.g. prompt_tokens=12); it appears as `HookResult.usage`."""
        usage = current_usage.get()
        if usage is None:
            return
        for key, value in counts.items():
            if isinstance(value, int) and not isinstance(value, bool):
                usage[key] = usage.get(key, 0) + value


ProgressCallback = Callable[[str, int, "int | None", str], None]
