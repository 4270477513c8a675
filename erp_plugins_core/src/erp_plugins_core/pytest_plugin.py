"""pytest fixtures for plugin authors, registered through erp-plugins-core's `pytest11` entry point.

- `erp_state`: path of a fresh state file in the test's tmp folder; the test also gets a fresh secret key in
  `ERP_PLUGINS_SECRET_KEY` and `ERP_PLUGINS_STATE` pointing at the file, so nothing touches the user's files.
- `erp_host` (async, needs pytest-asyncio): an opened `PluginHost` on that state, closed after the test.
- `erp_enable`: `await erp_enable(name, tenant="t", config={...}, grant=None, trust=False)` enables a plugin
  on `erp_host` and returns its stored row.
- `erp_conformance`: `await erp_conformance(name, config={...})` runs the checks every plugin must pass
  (see `erp_plugins_core._conformance`) and fails the test listing every problem.

Helpers for unit tests that call a plugin's methods directly, without a host:

- `plugin_context(plugin, config, granted=..., secrets=...)`: a real `PluginContext` for `initialize`, whose bridge
  is a `RecordingBridge` unless one is given;
- `RecordingBridge`: the host side of that context; keeps emitted events and progress reports, serves `files`.

`--erp-unsafe-no-sandbox` runs sandboxed plugins in the test's process (development only, for machines
without bubblewrap). Imports of the host are deferred, so merely having the plugin installed costs pytest
nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._conformance import ConformanceReport
    from ._context import ContextBridge, PluginContext
    from ._host import PluginHost
    from ._state import TenantPlugin

__all__ = ["RecordingBridge", "plugin_context"]

UNSAFE_OPTION = "--erp-unsafe-no-sandbox"

try:
    import pytest_asyncio

    _async_fixture: Callable[..., Any] = pytest_asyncio.fixture
    _HAVE_ASYNCIO = True
except ImportError:  # the fixtures that need an event loop say so when used
    _async_fixture = pytest.fixture
    _HAVE_ASYNCIO = False


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("erp-plugins", "erp-plugins fixtures")
    group.addoption(
        UNSAFE_OPTION,
        action="store_true",
        default=False,
        help="Run sandboxed plugins in the test process (sets ERP_PLUGINS_UNSAFE_NO_SANDBOX=1; development only).",
    )


@pytest.fixture
def erp_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """A fresh state file path for this test, with a fresh secret key in the environment."""
    from cryptography.fernet import Fernet

    from ._host import UNSAFE_NO_SANDBOX_ENV
    from ._secrets import KEY_ENV, KEY_FILE_ENV

    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode("ascii"))
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    path = tmp_path / "erp-plugins-state.db"
    monkeypatch.setenv("ERP_PLUGINS_STATE", str(path))
    if request.config.getoption(UNSAFE_OPTION):
        monkeypatch.setenv(UNSAFE_NO_SANDBOX_ENV, "1")
    return path


if _HAVE_ASYNCIO:

    @_async_fixture
    async def erp_host(erp_state: Path) -> AsyncIterator[PluginHost]:
        """An opened PluginHost on `erp_state` (no health loop), closed after the test."""
        from ._catalog import Catalog
        from ._host import PluginHost

        host = PluginHost(erp_state, catalog=Catalog.load(), tenants=[], health_loop=False)
        await host.open()
        try:
            yield host
        finally:
            await host.close()

else:

    @pytest.fixture
    def erp_host(erp_state: Path) -> Any:
        """Needs pytest-asyncio; fails with how to get it."""
        raise pytest.UsageError(
            "the erp_host fixture needs pytest-asyncio: pip install pytest-asyncio, and set asyncio_mode = \"auto\" "
            "under [tool.pytest.ini_options]"
        )


@pytest.fixture
def erp_enable(erp_host: PluginHost) -> Callable[..., Awaitable[TenantPlugin]]:
    """`await erp_enable(name, tenant="t", config=None, grant=None, trust=False, priority=None)` on erp_host."""

    async def enable(
        name: str,
        tenant: str = "t",
        config: Mapping[str, Any] | None = None,
        grant: list[str] | None = None,
        trust: bool = False,
        priority: int | None = None,
    ) -> TenantPlugin:
        return await erp_host.enable(
            name, tenant=tenant, config=dict(config or {}), grant=grant, trust=trust, priority=priority
        )

    return enable


@pytest.fixture
def erp_conformance(erp_state: Path) -> Callable[..., Awaitable[ConformanceReport]]:
    """`await erp_conformance(name, config=None)`: fails the test unless the plugin passes every conformance check."""
    from ._conformance import assert_conformance

    return assert_conformance


@pytest.fixture
def erp_usage() -> Iterator[dict[str, int]]:
    """The dict `PluginContext.record_usage` adds to during the test, as the dispatcher sets one per call."""
    from ._context import current_usage

    counts: dict[str, int] = {}
    token = current_usage.set(counts)
    yield counts
    current_usage.reset(token)


class RecordingBridge:
    """The host side of a test PluginContext: records what the plugin emits and reports, serves the files service.

    `events` holds `(event_type, data)` per `context.emit_event`, `progress_calls` holds `(done, total, message)`
    per `context.progress`. `get_service("files")` is the host's real FilesService (reading only the paths the
    current call allows: set `erp_plugins_core._services.current_call_files` as the dispatcher does); any other
    name raises KeyError. Subclass it to record or serve more.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.progress_calls: list[tuple[int, int | None, str]] = []

    def get_service(self, name: str) -> Any:
        if name == "files":
            from ._services import FilesService

            return FilesService()
        raise KeyError(name)

    async def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append((event_type, data))

    def progress(self, done: int, total: int | None, message: str) -> None:
        self.progress_calls.append((done, total, message))


def plugin_context(
    plugin: str,
    config: Mapping[str, Any],
    *,
    tenant: str = "t",
    granted: Iterable[str] = (),
    secrets: Iterable[str] | None = None,
    bridge: ContextBridge | None = None,
) -> PluginContext:
    """A PluginContext for calling `plugin`'s `initialize(config, context)` in a test, as the host would build it.

    `granted` are the permissions the tenant granted; `secrets` the values its logs must redact (pass the config's
    secret values, e.g. `[config["api_key"]]`: nothing is redacted unless named); `bridge` defaults to a new
    RecordingBridge (pass your own to look at the events and progress afterwards).
    """
    from ._context import PluginContext
    from ._redact import Redactor

    return PluginContext(
        tenant_id=tenant,
        plugin=plugin,
        config=config,
        granted=frozenset(granted),
        bridge=bridge if bridge is not None else RecordingBridge(),
        redactor=Redactor(secrets or ()),
    )
