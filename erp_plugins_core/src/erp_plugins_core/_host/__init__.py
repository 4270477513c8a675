"""PluginHost: the Python API ERP code uses, tying the catalog, the state store, lifecycles and dispatch together.

One module per part of it: `_plugin_host` (opening, closing), `_instances` (starting and stopping one instance),
`_admin` (enable, disable, config, status), `_following` (applying other processes' changes), `_calls` (hooks,
fallback, streams), `_events` (durable events and jobs), `_checks` (health), `_support` (what they share).
"""

from __future__ import annotations

from .._jobs._service import MAX_EVENT_DEPTH
from ._checks import HealthReport
from ._plugin_host import PluginHost
from ._support import (
    DEFAULT_PRIORITY,
    HOST_NAME_ENV,
    UNSAFE_NO_SANDBOX_ENV,
    Instance,
    data_root,
    default_host_name,
    unsafe_no_sandbox,
)

__all__ = [
    "DEFAULT_PRIORITY",
    "HOST_NAME_ENV",
    "HealthReport",
    "Instance",
    "MAX_EVENT_DEPTH",
    "PluginHost",
    "UNSAFE_NO_SANDBOX_ENV",
    "data_root",
    "default_host_name",
    "unsafe_no_sandbox",
]
