"""The templates a `WorkerFleet` keeps, and whether sandboxed workers are forked from templates at all.

A `TemplatePool` (one per `WorkerFleet`) keeps a template per key (plugin, version, runtime site, network,
limits, data root) while any runner of that key is loaded, so a reaped tenant's next call forks instead of
starting Python. A new runtime site (the plugin's files changed) is a new key; the old template ends with its
last runner. When a template cannot start, its runners start plain workers: for good when the template said
why (the plugin's import failed or started threads), else for a minute (bubblewrap or the machine failed it).
A template that says later that it cannot fork safely (a preload started a thread) is not started again.

On by default where the per-tenant uid design applies (the host runs as root); `ERP_PLUGINS_SANDBOX_TEMPLATES=0`
turns templates off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from .._errors import SandboxError
from ._template import Template

if TYPE_CHECKING:
    from ._runner import SandboxRunner

log = logging.getLogger("erp_plugins.sandbox")

#: Seconds a plugin whose template could not start has its workers started afresh before it is tried again.
RETRY_AFTER = 60.0
#: Environment variable: `0` turns worker templates off; `1`/`auto` (the default) uses them as root.
ENV = "ERP_PLUGINS_SANDBOX_TEMPLATES"


def templates_wanted() -> bool:
    """Whether sandboxed workers are forked from templates (ERP_PLUGINS_SANDBOX_TEMPLATES; as root only)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "off", "no", "false"):
        return False
    if value not in ("", "1", "on", "yes", "true", "auto"):
        raise SandboxError(f"{ENV}={value[:40]!r} is not understood; set it to 1 (fork tenants' workers from a "
                           "per-plugin template, the default as root) or 0 (start each worker afresh)")
    return os.geteuid() == 0


class TemplatePool:
    """A fleet's templates by key, each kept while a runner of its key is loaded; see the module docstring."""

    def __init__(self) -> None:
        self._templates: dict[tuple[Any, ...], asyncio.Future[Template | None]] = {}
        self._users: dict[tuple[Any, ...], set[int]] = {}
        self._broken: dict[tuple[Any, ...], float] = {}  # key -> loop time until which its workers start afresh

    async def template_for(self, runner: SandboxRunner) -> Template | None:
        """The running template for `runner` (started if need be), or None: the runner starts a plain worker."""
        key = runner.template_key()
        loop = asyncio.get_running_loop()
        if self._broken.get(key, -math.inf) > loop.time():
            return None
        self._users.setdefault(key, set()).add(id(runner))
        fut = self._templates.get(key)
        if fut is not None and fut.done() and fut.result() is not None and fut.result().failure:
            self._broken[key] = math.inf  # it said it cannot fork safely: a new one would say it again
            return None
        if fut is None or (fut.done() and (fut.result() is None or fut.result().dead)):
            fut = self._templates[key] = asyncio.get_running_loop().create_future()
            template = Template(key, runner.record.name)
            try:
                await template.start(runner)
            except (SandboxError, OSError, TimeoutError) as exc:
                # what the template said of the plugin holds for good; anything else is tried again later
                retry = math.inf if template.failure else RETRY_AFTER
                self._broken[key] = loop.time() + retry
                log.info("plugin %r: no worker template (%s); its workers start afresh%s", runner.record.name,
                         exc, "" if template.failure else f" for {RETRY_AFTER:g} s")
                fut.set_result(None)
                return None
            except BaseException:
                if self._templates.get(key) is fut:
                    del self._templates[key]
                fut.set_result(None)
                await template.close()
                raise
            if self._templates.get(key) is not fut:  # released or closed while it started: not kept
                fut.set_result(None)
                await template.close()
                return None
            fut.set_result(template)
        return await asyncio.shield(fut)

    async def release(self, runner: SandboxRunner) -> None:
        """`runner` was closed: its key's template ends once no runner of the key is left."""
        key = runner.template_key()
        users = self._users.get(key)
        if users is None:
            return
        users.discard(id(runner))
        if not users:
            del self._users[key]
            fut = self._templates.pop(key, None)
            if fut is not None and fut.done() and fut.result() is not None:
                await fut.result().close()

    def running(self) -> list[Template]:
        return [f.result() for f in self._templates.values() if f.done() and f.result() is not None
                and not f.result().dead]

    async def close(self) -> None:
        for template in self.running():
            await template.close()
        self._templates.clear()
        self._users.clear()
