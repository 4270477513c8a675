"""What the host's parts share: settings read from the environment, one running instance, and
the bridge through which a plugin's context reaches the host.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._catalog import Catalog
from .._context import PluginContext
from .._discovery import PluginRecord
from .._dispatch import TenantDispatcher
from .._errors import ConfigError
from .._follow import StateFollower
from .._lifecycle import Lifecycle
from .._redact import Redactor
from .._runner import PluginRunner
from .._services import FilesService
from .._state import (
    StateStore,
    TenantPlugin,
)

if TYPE_CHECKING:
    from ._plugin_host import PluginHost

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
    from .._state import default_host_name as hostname_pid

    return hostname_pid()


WARM_UP_ENV = "ERP_PLUGINS_WARM_UP"


def warm_up_wanted() -> bool:
    """`$ERP_PLUGINS_WARM_UP`: whether hosts start every tenant's plugins in the background once open."""
    value = os.environ.get(WARM_UP_ENV, "").strip().lower()
    if value in ("", "0", "off", "no", "false"):
        return False
    if value in ("1", "on", "yes", "true"):
        return True
    raise ConfigError(f"{WARM_UP_ENV}={value[:40]!r} is not understood; set it to 1 (start every tenant's plugins "
                      "in the background once a host opens) or 0 (start them on their first call, the default)")


def unsafe_no_sandbox() -> bool:
    """True when the development-only opt-out runs sandboxed plugins in the host's process."""
    return os.environ.get(UNSAFE_NO_SANDBOX_ENV, "") == "1"


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



class HostBase:
    """The state every part of PluginHost reads and writes (set up in `PluginHost.__init__`)."""

    store: StateStore | None
    host_name: str
    _state_arg: Any
    _catalog: Catalog | None
    _restore: list[str]
    _instances: dict[tuple[str, str], Instance]
    _dispatchers: dict[str, TenantDispatcher]
    _started_tenants: set[str]
    _starting_tenants: set[str]
    _tenant_locks: dict[str, asyncio.Lock]
    _fleet: Any
    _fleet_args: dict[str, Any]
    _follower: StateFollower | None
    _retiring: set[asyncio.Task[None]]
