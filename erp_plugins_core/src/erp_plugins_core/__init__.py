"""erp-plugins-core: the plugin host of the ERP platform.

Plugins are found through the `erp_plugins` entry point group and their `plugin.yaml` manifests, run per
tenant within the permissions and limits they declare, and are called through named hooks dispatched by
pluggy. ERP code uses `PluginHost`; plugin authors subclass `PluginInterface` or `AIProviderPlugin`.
"""

from ._context import PluginContext
from ._dispatch import HookResult
from ._errors import (
    AllPluginsFailed,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    DependencyError,
    HookTimeout,
    IntegrityError,
    LifecycleError,
    ManifestError,
    ModelNotFoundError,
    NotImplementedYet,
    PermissionDenied,
    PluginError,
    PluginLoadError,
    ProviderError,
    ProviderTimeout,
    RateLimitError,
    SandboxError,
    StateError,
    StreamInterrupted,
    UnavailableError,
    UnknownHookError,
    UnknownPluginError,
)
from ._hookspecs import hookimpl
from ._host import HealthReport, PluginHost
from ._interface import AIProviderPlugin, PluginInterface, PluginMetadata, PluginType
from ._lifecycle import PluginState
from ._manifest import Manifest, load_manifest

__all__ = [
    "AIProviderPlugin",
    "AllPluginsFailed",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "DependencyError",
    "HealthReport",
    "HookResult",
    "HookTimeout",
    "IntegrityError",
    "LifecycleError",
    "Manifest",
    "ManifestError",
    "ModelNotFoundError",
    "NotImplementedYet",
    "PermissionDenied",
    "PluginContext",
    "PluginError",
    "PluginHost",
    "PluginInterface",
    "PluginLoadError",
    "PluginMetadata",
    "PluginState",
    "PluginType",
    "ProviderError",
    "ProviderTimeout",
    "RateLimitError",
    "SandboxError",
    "StateError",
    "StreamInterrupted",
    "UnavailableError",
    "UnknownHookError",
    "UnknownPluginError",
    "hookimpl",
    "load_manifest",
]
