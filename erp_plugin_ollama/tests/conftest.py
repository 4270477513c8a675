"""Fixtures: a loopback fake Ollama server and a factory for initialized OllamaProvider instances."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from erp_plugin_ollama.plugin import OllamaProvider  # noqa: E402
from erp_plugins_core._context import PluginContext, current_usage  # noqa: E402
from erp_plugins_core._redact import Redactor  # noqa: E402
from tests.servers.ollama_fake import OllamaFake  # noqa: E402

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
    return PluginContext(tenant_id="t", plugin="local_llm_provider", config=config, granted=GRANTED,
                         bridge=Bridge(), redactor=Redactor())


@pytest.fixture
def fake() -> Iterator[OllamaFake]:
    with OllamaFake() as server:
        yield server


@pytest.fixture
def usage() -> Iterator[dict[str, int]]:
    """The dict PluginContext.record_usage adds to during the test (as the dispatcher sets it per call)."""
    counts: dict[str, int] = {}
    token = current_usage.set(counts)
    yield counts
    current_usage.reset(token)


Factory = Callable[..., Awaitable[OllamaProvider]]


@pytest.fixture
async def provider_factory(fake: OllamaFake) -> AsyncIterator[Factory]:
    """`await make(**config_overrides)`: an initialized, activated provider talking to `fake`; cleaned up after."""
    made: list[OllamaProvider] = []

    async def make(**overrides: Any) -> OllamaProvider:
        config: dict[str, Any] = {"model": "llama3.2", "host": fake.url, "timeout": 5}
        config.update(overrides)
        config = {k: v for k, v in config.items() if v is not None}
        plugin = OllamaProvider()
        made.append(plugin)
        assert await plugin.initialize(config, make_context(config)) is True
        assert await plugin.activate() is True
        return plugin

    yield make
    for plugin in made:
        await plugin.cleanup()


@pytest.fixture
async def provider(provider_factory: Factory) -> OllamaProvider:
    return await provider_factory()
