"""Exception classes of the host: every error a user sees is one of these, with a message they can act on."""

from __future__ import annotations


class PluginError(Exception):
    """Base class of every error raised by erp-plugins."""


class ManifestError(PluginError):
    """A plugin.yaml is unreadable, too large, or does not match the manifest model."""


class DependencyError(PluginError):
    """A plugin or distribution dependency is missing, mismatched or part of a cycle."""


class LifecycleError(PluginError):
    """A plugin was asked to make a state transition its current state does not allow."""


class ConfigError(PluginError):
    """A tenant's config for a plugin does not match the plugin's config_schema."""


class PermissionDenied(PluginError):
    """The tenant has not granted the permission an action needs."""


class UnknownPluginError(PluginError):
    """No discovered plugin has the given name."""


class UnknownHookError(PluginError):
    """No hook of the contract has the given name."""


class HookArgumentError(PluginError, TypeError):
    """A hook was called with unknown, missing or mistyped arguments (also a TypeError, as Python would raise)."""


class StateError(PluginError):
    """The state store cannot be opened, read or written."""


class SandboxError(PluginError):
    """A sandboxed worker could not start, or died, or broke the protocol."""


class IntegrityError(PluginError):
    """Installed files differ from the distribution's RECORD or from the approved lock."""


class HookTimeout(PluginError):
    """A hook call took longer than the plugin's resources.timeout."""


class AllPluginsFailed(PluginError):
    """`PluginHost.first` or `stream` found no plugin that succeeded; the message lists each plugin's error."""


class StreamInterrupted(PluginError):
    """A stream failed after its first chunk; it is not continued with another plugin's output."""


# --- Provider errors: what plugins map their SDK's exceptions to. -------------------------------------------


class ProviderError(PluginError):
    """Base class of errors a provider plugin reports about the remote service it talks to.

    `fallback` says whether `PluginHost.first`/`stream` should try the next plugin after this error.
    """

    fallback: bool = False
    kind: str = "provider"


class AuthenticationError(ProviderError):
    """The service refused the credentials (bad or revoked key, expired token)."""

    kind = "authentication"


class RateLimitError(ProviderError):
    """The service asked us to slow down; `retry_after` is seconds to wait when it said."""

    fallback = True
    kind = "rate_limit"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    """The service did not answer within the configured timeout."""

    fallback = True
    kind = "timeout"


class BadRequestError(ProviderError):
    """The service rejected the request itself (bad parameter, prompt too long)."""

    kind = "bad_request"


class ModelNotFoundError(ProviderError):
    """The requested model, folder, calendar or other named resource does not exist."""

    kind = "not_found"


class UnavailableError(ProviderError):
    """The service is unreachable or failing (connection refused, 5xx)."""

    fallback = True
    kind = "unavailable"


class NotImplementedYet(PluginError):
    """A hook the plugin declares but whose implementation has not been written yet."""


class PluginLoadError(PluginError):
    """A plugin's code could not be imported or constructed, or is not a PluginInterface."""
