"""Helpers for the ollama plugin tests: the fake server and a PluginContext factory (on the core's test helpers)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from erp_plugin_ollama.plugin import OllamaProvider  # noqa: E402
from erp_plugins_core import PluginContext  # noqa: E402
from erp_plugins_core.pytest_plugin import RecordingBridge, plugin_context  # noqa: E402
from tests.servers.ollama_fake import OllamaFake  # noqa: E402

__all__ = ["GRANTED", "Bridge", "OllamaProvider", "OllamaFake", "make_context"]

GRANTED = frozenset({"ai.generate", "ai.embeddings"})
Bridge = RecordingBridge


def make_context(config: dict[str, Any]) -> PluginContext:
    """A context for local_llm_provider with the AI permissions (its config holds no secrets)."""
    return plugin_context("local_llm_provider", config, granted=GRANTED)
