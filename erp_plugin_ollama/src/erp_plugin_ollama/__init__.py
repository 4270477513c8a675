"""Ollama (local LLM) provider plugin for the ERP plugin host.

The plugin class lives in `erp_plugin_ollama.plugin` (the entry point names it); importing this package does
not import the `ollama` SDK, so discovery and `erp-plugins list` stay cheap.
"""

from __future__ import annotations

__all__ = ["PLUGIN_NAME", "__version__"]

__version__ = "0.1.0"
PLUGIN_NAME = "local_llm_provider"
