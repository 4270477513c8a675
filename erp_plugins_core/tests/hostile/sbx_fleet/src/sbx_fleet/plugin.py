# ruff: noqa: ASYNC230 - small files, written inline
"""A plugin that writes each lifecycle step to /data/steps.log, so a test sees what a worker ran and when it
was stopped; each instance has its own `boot` token, so a test can tell a new worker from the old one."""

from __future__ import annotations

import asyncio
import os
import uuid

from erp_plugins_core._interface import PluginInterface


def _step(text: str) -> None:
    with open("/data/steps.log", "a") as fh:
        fh.write(text + "\n")


class Plugin(PluginInterface):
    def __init__(self) -> None:
        super().__init__()
        self.boot = uuid.uuid4().hex
        self.config: dict = {}

    async def initialize(self, config: dict, context) -> bool:
        await super().initialize(config, context)
        self.config = dict(config)
        _step(f"initialize {config.get('greeting')}")
        if config.get("fail_initialize"):
            raise RuntimeError("initialize refused by config")
        return True

    async def activate(self) -> bool:
        _step("activate")
        return True

    async def deactivate(self) -> bool:
        _step("deactivate")
        if self.config.get("hang_deactivate"):
            await asyncio.sleep(3600)
        return True

    async def cleanup(self) -> bool:
        _step("cleanup")
        return True

    async def stream(self, prompt: str, context: dict):
        for i in range(int(context.get("n", 3))):
            await asyncio.sleep(float(context.get("gap", 0)))
            yield f"{prompt}-{i}"

    async def answer(self, prompt: str, context: dict) -> str:
        if prompt == "boot":
            return self.boot
        if prompt == "config":
            return str(self.config.get("greeting"))
        if prompt.startswith("sleep:"):
            await asyncio.sleep(float(prompt[6:]))
            return "slept"
        if prompt == "steps":
            with open("/data/steps.log") as fh:
                return fh.read()
        return f"{self.config.get('greeting')} {prompt} {os.getpid()}"
