"""Fixtures: a loopback Google fake, and google_services initialized against it with a test host bridge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from google_testkit import ALL_PERMISSIONS, Bridge, secrets_of

from erp_plugin_google.plugin import GoogleServicesPlugin
from erp_plugins_core.pytest_plugin import plugin_context
from tests.servers.google_fake import GoogleFake


@pytest.fixture
def fake() -> Iterator[GoogleFake]:
    with GoogleFake() as server:
        yield server
        assert server.violations == [], server.violations


Factory = Callable[..., Any]


@pytest.fixture
async def make_plugin(fake: GoogleFake) -> AsyncIterator[Factory]:
    """`await make_plugin(**config)`: an initialized plugin (and its bridge) talking to the fake."""
    made: list[GoogleServicesPlugin] = []

    async def factory(
        *, granted: frozenset[str] = ALL_PERMISSIONS, credentials: dict[str, Any] | None = None, **config: Any
    ) -> tuple[GoogleServicesPlugin, Bridge]:
        cfg: dict[str, Any] = {"root_url": fake.url}
        if "service_account_file" not in config:
            cfg["credentials_file"] = json.dumps(credentials or fake.user_credentials())
        cfg.update(config)
        bridge = Bridge()
        context = plugin_context("google_services", cfg, granted=granted, secrets=secrets_of(cfg), bridge=bridge)
        plugin = GoogleServicesPlugin()
        plugin.resume_backoff = 0.0
        assert await plugin.initialize(cfg, context) is True
        assert await plugin.activate() is True
        made.append(plugin)
        return plugin, bridge

    yield factory
    for plugin in made:
        await plugin.deactivate()
        await plugin.cleanup()
