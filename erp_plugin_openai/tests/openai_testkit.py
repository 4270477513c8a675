"""Helpers for the openai plugin tests: the fake server, a recording bridge and a PluginContext factory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from erp_plugin_openai.plugin import OpenAIProvider  # noqa: E402
from erp_plugins_core._context import PluginContext, current_usage  # noqa: E402
from erp_plugins_core._redact import Redactor  # noqa: E402
from tests.servers.openai_fake import OpenAIFake  # noqa: E402

__all__ = ["GRANTED", "Bridge", "OpenAIProvider", "OpenAIFake", "current_usage", "make_context"]

GRANTED = frozenset({"ai.generate", "ai.embeddings"})


class Bridge:
    """The host side of a PluginContext, reduced to recording what the plugin asks for."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.progress_calls: list[tuple[int, int | None, str]] = []

    def get_service(self, name: str) -> Any:
        raise KeyError(name)

    async def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append((event_type, data))

    def progress(self, done: int, total: int | None, message: str) -> None:
        self.progress_calls.append((done, total, message))


def make_context(config: dict[str, Any]) -> PluginContext:
    secrets = [config["api_key"]] if isinstance(config.get("api_key"), str) else []
    return PluginContext(tenant_id="t", plugin="openai_provider", config=config, granted=GRANTED,
                         bridge=Bridge(), redactor=Redactor(secrets))
