"""Helpers for the openai plugin tests: the fake server and a PluginContext factory (on the core's test helpers)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from erp_plugin_openai.plugin import OpenAIProvider  # noqa: E402
from erp_plugins_core import PluginContext  # noqa: E402
from erp_plugins_core.pytest_plugin import RecordingBridge, plugin_context  # noqa: E402
from tests.servers.openai_fake import OpenAIFake  # noqa: E402

__all__ = ["GRANTED", "Bridge", "OpenAIProvider", "OpenAIFake", "make_context"]

GRANTED = frozenset({"ai.generate", "ai.embeddings"})
Bridge = RecordingBridge


def make_context(config: dict[str, Any]) -> PluginContext:
    """A context for openai_provider with the AI permissions; the config's api_key is redacted."""
    secrets = [config["api_key"]] if isinstance(config.get("api_key"), str) else []
    return plugin_context("openai_provider", config, granted=GRANTED, secrets=secrets)
