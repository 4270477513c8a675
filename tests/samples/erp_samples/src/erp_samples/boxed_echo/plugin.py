"""A sandboxed plugin: echoes, streams, and reports where it runs."""

import os

from erp_plugins_core import PluginInterface


class BoxedEcho(PluginInterface):
    async def echo(self, prompt: str, context: dict) -> str:
        if prompt == "whoami":
            return f"uid={os.getuid()} pid={os.getpid()}"
        if prompt == "crash":
            os._exit(7)
        return "boxed:" + prompt

    async def stream(self, prompt: str, context: dict):
        for word in prompt.split():
            yield word + " "
