"""Fixtures for this plugin's tests (helpers live in ollama_testkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from ollama_testkit import OllamaFake, OllamaProvider, make_context


@pytest.fixture
def fake() -> Iterator[OllamaFake]:
    with OllamaFake() as server:
        yield server


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
