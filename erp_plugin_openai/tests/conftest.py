"""Fixtures for this plugin's tests (helpers live in openai_testkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from openai_testkit import OpenAIFake, OpenAIProvider, make_context


@pytest.fixture
def fake() -> Iterator[OpenAIFake]:
    with OpenAIFake() as server:
        yield server


Factory = Callable[..., Awaitable[OpenAIProvider]]


@pytest.fixture
async def provider_factory(fake: OpenAIFake) -> AsyncIterator[Factory]:
    """`await make(**config_overrides)`: an initialized, activated provider talking to `fake`; cleaned up after."""
    made: list[OpenAIProvider] = []

    async def make(**overrides: Any) -> OpenAIProvider:
        config: dict[str, Any] = {"api_key": fake.api_key, "base_url": fake.url, "max_retries": 0, "timeout": 5}
        config.update(overrides)
        config = {k: v for k, v in config.items() if v is not None}
        plugin = OpenAIProvider()
        made.append(plugin)
        assert await plugin.initialize(config, make_context(config)) is True
        assert await plugin.activate() is True
        return plugin

    yield make
    for plugin in made:
        await plugin.cleanup()


@pytest.fixture
async def provider(provider_factory: Factory) -> OpenAIProvider:
    return await provider_factory()
