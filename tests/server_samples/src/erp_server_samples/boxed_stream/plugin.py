"""A sandboxed plugin for the server's tests: its endless stream logs each chunk and its end."""

import asyncio

from erp_plugins_core import PluginInterface


class BoxedStream(PluginInterface):
    async def answer(self, prompt: str, context: dict) -> str:
        return "boxed:" + prompt

    async def stream(self, prompt: str, context: dict):
        n = 0
        try:
            while prompt == "forever" or n < len(prompt.split()):
                if prompt == "forever":
                    self.context.log("info", "boxed_stream produced chunk", n=n)
                    await asyncio.sleep(0.05)
                    yield f"box{n} "
                else:
                    yield prompt.split()[n] + " "
                n += 1
        finally:
            self.context.log("info", "boxed_stream stream closed", produced=n)
