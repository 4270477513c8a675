"""What a plugin class is: the lifecycle every plugin implements, and the AI provider extension of it.

A plugin class is constructed with no arguments; the host then awaits `initialize(config, context)`,
`activate()`, and later `deactivate()` and `cleanup()`. The defaults here make a minimal plugin short.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._context import PluginContext


class PluginType(enum.StrEnum):
    """The kinds of plugin a manifest's `plugin_type` may name."""

    AI_PROVIDER = "ai_provider"
    INTEGRATION = "integration"
    BUSINESS_LOGIC = "business_logic"
    UI_EXTENSION = "ui_extension"
    WORKFLOW = "workflow"
    NOTIFICATION = "notification"


class PluginInterface(ABC):  # noqa: B024 - every method has a sensible default; subclassing is what matters
    """Base class of every plugin. Override what your plugin needs; all five lifecycle methods are async."""

    config: dict[str, Any]
    context: PluginContext | None = None

    async def initialize(self, config: dict[str, Any], context: PluginContext) -> bool:
        """Receive the tenant's validated config and the plugin context; return False to refuse to start."""
        self.config = dict(config)
        self.context = context
        return True

    async def activate(self) -> bool:
        """Start serving hooks (open connections, start background work)."""
        return True

    async def deactivate(self) -> bool:
        """Stop serving hooks; the host may activate again later."""
        return True

    async def health_check(self) -> dict[str, Any]:
        """Report health as a dict with at least `healthy: bool`; `detail` explains it."""
        return {"healthy": True, "detail": "ok"}

    async def cleanup(self) -> bool:
        """Release everything before the plugin is unloaded."""
        return True


class AIProviderPlugin(PluginInterface):
    """A plugin that answers prompts and computes embeddings through some model service."""

    @abstractmethod
    async def generate_response(self, prompt: str, context: dict[str, Any]) -> str:
        """Return the model's complete answer to `prompt`."""

    @abstractmethod
    def generate_streaming_response(self, prompt: str, context: dict[str, Any]) -> AsyncIterator[str]:
        """Yield the model's answer to `prompt` chunk by chunk (an async generator)."""

    @abstractmethod
    async def generate_embeddings(self, texts: list[str]) -> list[list[float]]:
        """Return one embedding vector per text."""

    @abstractmethod
    async def validate_model_config(self, config: dict[str, Any]) -> bool:
        """Check that the configured model(s) exist on the server; raise a ProviderError naming what is wrong."""
