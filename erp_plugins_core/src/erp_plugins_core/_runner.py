"""The seam between the host and a plugin's code: a runner runs one plugin instance for one tenant.

`InProcessRunner` imports the plugin into the host's process (trusted plugins only). The sandbox's runner
(`_sandbox.SandboxRunner`) runs it in a bubblewrap worker and crosses a pipe. The host, the lifecycle and
dispatch only ever talk to this interface, so where the code runs is decided in one place
(`PluginHost._make_runner`).

Any call may be cancelled by the host (a hook's `resources.timeout`, a health check's timeout, shutdown);
a runner must then leave nothing running: the sandbox kills its worker.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ._context import PluginContext
from ._discovery import PluginRecord
from ._errors import PluginLoadError
from ._hookspecs import PROJECT, hook_info
from ._interface import PluginInterface

LIFECYCLE_METHODS = ("activate", "deactivate", "cleanup")


class PluginRunner(ABC):
    """Runs one plugin instance for one tenant, in process or in a worker."""

    sandboxed: bool = False
    #: Whether `hook_function`'s functions enforce `resources.timeout` on every call themselves (from the start
    #: of the call, worker restarts included), so dispatch adds no timer of its own to a lone call.
    times_its_calls: bool = False

    def __init__(self, record: PluginRecord, tenant: str) -> None:
        self.record = record
        self.tenant = tenant

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.record.name!r}, tenant={self.tenant!r})"

    @abstractmethod
    async def load(self) -> None:
        """Import the plugin class (or start the worker that does) and construct it with no arguments."""

    @abstractmethod
    async def initialize(self, config: dict[str, Any], context: PluginContext) -> bool:
        """Call the instance's `initialize(config, context)`; `context` serves the plugin's requests."""

    @abstractmethod
    async def lifecycle(self, method: str) -> bool:
        """Call `activate`, `deactivate` or `cleanup` on the instance."""

    @abstractmethod
    async def health_check(self) -> dict[str, Any]:
        """Call the instance's `health_check()`."""

    @abstractmethod
    def hook_function(self, hook: str, method: str) -> Callable[..., Any]:
        """The callable registered with pluggy as this plugin's implementation of `hook`.

        It takes the hook's arguments by keyword and returns the result, an awaitable of it, or (for
        streaming hooks) an async iterator.
        """

    @abstractmethod
    async def close(self) -> None:
        """Drop the instance (stop the worker); the runner may be loaded again afterwards."""

    async def warm(self) -> None:  # noqa: B027 (a no-op is the right default)
        """Be ready to answer at once: a runner that starts lazily starts now (in process: nothing to do)."""

    def in_flight(self) -> int:
        """Calls running in the instance now, where the runner can tell (a sandbox can; in process: 0).

        A host that retires an instance (disabled or changed by another process) waits for these to end.
        """
        return 0


class InProcessRunner(PluginRunner):
    """Runs a trusted plugin inside the host's process."""

    def __init__(self, record: PluginRecord, tenant: str) -> None:
        super().__init__(record, tenant)
        self.instance: PluginInterface | None = None

    async def load(self) -> None:
        rec = self.record
        try:
            if rec.folder is not None:
                from ._folders import prepare_import

                prepare_import(rec)  # its folder becomes the package erp_folder_plugins.<name>
            module = importlib.import_module(rec.module)
            cls = getattr(module, rec.attr)
        except Exception as exc:  # any failure of third-party import code is that plugin's failure
            raise PluginLoadError(
                f"plugin {rec.name!r}: cannot import {rec.entry_point}: {type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(cls, type) and issubclass(cls, PluginInterface)):
            raise PluginLoadError(
                f"plugin {rec.name!r}: {rec.entry_point} is not a subclass of erp_plugins_core.PluginInterface"
            )
        try:
            instance = cls()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {rec.name!r}: {rec.entry_point}() failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._check_hooks(instance)
        self.instance = instance

    def _check_hooks(self, instance: PluginInterface) -> None:
        """Every manifest hook names an existing method, and every @hookimpl method is in the manifest."""
        assert self.record.manifest is not None
        declared = {h.method for h in self.record.manifest.hooks}
        for entry in self.record.manifest.hooks:
            if not callable(getattr(instance, entry.method, None)):
                info = hook_info(entry.name)
                provider = f" (a hook plugin {info.provider!r} provides)" if info and info.provider else ""
                raise PluginLoadError(
                    f"plugin {self.record.name!r}: plugin.yaml hooks: {entry.name}{provider} names method "
                    f"{entry.method!r}, which {type(instance).__name__} does not have"
                )
        for name, member in inspect.getmembers(type(instance), callable):
            if hasattr(member, f"{PROJECT}_impl") and name not in declared:
                raise PluginLoadError(
                    f"plugin {self.record.name!r}: method {name} is marked @hookimpl but plugin.yaml does not "
                    f"list it under hooks; add {{name: <hook>, method: {name}}}"
                )

    def _require(self) -> PluginInterface:
        if self.instance is None:
            raise PluginLoadError(f"plugin {self.record.name!r} is not loaded")
        return self.instance

    async def initialize(self, config: dict[str, Any], context: PluginContext) -> bool:
        return await self._require().initialize(config, context)

    async def lifecycle(self, method: str) -> bool:
        if method not in LIFECYCLE_METHODS:
            raise ValueError(f"unknown lifecycle method {method!r}")
        return await getattr(self._require(), method)()

    async def health_check(self) -> dict[str, Any]:
        return await self._require().health_check()

    def hook_function(self, hook: str, method: str) -> Callable[..., Any]:
        return getattr(self._require(), method)

    async def close(self) -> None:
        self.instance = None
