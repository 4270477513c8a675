"""erp-plugins-core: the plugin host of the ERP platform.

Plugins are found through the `erp_plugins` entry point group and their `plugin.yaml` manifests, run per
tenant within the permissions and limits they declare, and are called through named hooks dispatched by
pluggy. ERP code uses `PluginHost`; plugin authors subclass `PluginInterface` or `AIProviderPlugin`.
"""

from __future__ import annotations

from importlib import import_module

# `typing` is not imported at run time: it would be most of what `import erp_plugins_core` and the command line's
# cached `list` cost (type checkers treat a module-level TYPE_CHECKING like typing's)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._chat import ChatRequest
    from ._context import PluginContext
    from ._dispatch import HookResult
    from ._errors import (
        AllPluginsFailed,
        AuthenticationError,
        BadRequestError,
        ConfigError,
        DependencyError,
        HookArgumentError,
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
    from ._interface import AIProviderPlugin, PluginInterface, PluginType
    from ._jobs import EventChainTooDeep, JobNotFound, JobSettings
    from ._lifecycle import PluginState
    from ._manifest import Manifest, load_manifest
    from ._metadata import PluginMetadata
    from ._redact import redact_url

#: Public name -> the submodule defining it. Imported on first use, so `import erp_plugins_core` (and the
#: command line, which needs little of it) does not pay for the host, pydantic models and asyncio up front.
_EXPORTS: dict[str, str] = {
    "ChatRequest": "._chat",
    "PluginContext": "._context",
    "HookResult": "._dispatch",
    **dict.fromkeys(
        [
            "AllPluginsFailed", "AuthenticationError", "BadRequestError", "ConfigError", "DependencyError",
            "HookArgumentError", "HookTimeout", "IntegrityError", "LifecycleError", "ManifestError",
            "ModelNotFoundError",
            "NotImplementedYet", "PermissionDenied", "PluginError", "PluginLoadError", "ProviderError",
            "ProviderTimeout", "RateLimitError", "SandboxError", "StateError", "StreamInterrupted",
            "UnavailableError", "UnknownHookError", "UnknownPluginError",
        ],
        "._errors",
    ),
    "hookimpl": "._hookspecs",
    "HealthReport": "._host",
    "PluginHost": "._host",
    "EventChainTooDeep": "._jobs",
    "JobNotFound": "._jobs",
    "JobSettings": "._jobs",
    "AIProviderPlugin": "._interface",
    "PluginInterface": "._interface",
    "PluginMetadata": "._metadata",
    "PluginType": "._interface",
    "PluginState": "._lifecycle",
    "Manifest": "._manifest",
    "load_manifest": "._manifest",
    "redact_url": "._redact",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "AIProviderPlugin",
    "AllPluginsFailed",
    "AuthenticationError",
    "BadRequestError",
    "ChatRequest",
    "ConfigError",
    "DependencyError",
    "EventChainTooDeep",
    "HealthReport",
    "HookArgumentError",
    "HookResult",
    "HookTimeout",
    "IntegrityError",
    "JobNotFound",
    "JobSettings",
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
    "redact_url",
]
