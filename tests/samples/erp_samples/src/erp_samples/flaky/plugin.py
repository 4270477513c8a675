"""A trusted plugin that fails on demand: the prompt says how."""

import asyncio

from erp_plugins_core import PluginInterface


class Flaky(PluginInterface):
    async def answer(self, prompt: str, context: dict) -> str:
        if prompt == "hang":
            await asyncio.sleep(60)
        if prompt == "raise":
            raise RuntimeError("flaky failed on purpose")
        return "flaky:" + prompt
