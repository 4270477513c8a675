"""A trusted plugin for the server's tests: its answers show the config it got and the call's files."""

import asyncio
import hashlib

from erp_plugins_core import PluginInterface


class WebTool(PluginInterface):
    async def answer(self, prompt: str, context: dict) -> str:
        if prompt == "secret":
            return "the key is " + self.config["api_key"]  # redacted by the host
        self.context.record_usage(prompt_tokens=len(prompt.split()), completion_tokens=2)
        return f"{self.config['greeting']} {prompt} ({self.config['mode']})"

    async def stream(self, prompt: str, context: dict):
        n = 0
        try:
            while prompt == "forever" or n < len(prompt.split()):
                if prompt == "forever":
                    self.context.log("info", "web_tool produced chunk", n=n)
                    await asyncio.sleep(0.05)
                    yield f"tick{n} "
                else:
                    if prompt.split()[n] == "break":
                        raise RuntimeError("web_tool broke mid-stream")
                    yield prompt.split()[n] + " "
                n += 1
        finally:
            self.context.log("info", "web_tool stream closed", produced=n)

    async def embed(self, texts: list) -> list:
        return [[float(len(t)), 1.0, 0.5] for t in texts]

    async def send(self, to: str, subject: str, body: str, attachments: list) -> str:
        if to == "nobody":
            raise ValueError("no such recipient: nobody")
        files = self.context.get_service("files")
        out = []
        for path in attachments:
            with files.open(path) as fh:
                out.append(hashlib.sha256(fh.read()).hexdigest())
        return f"sent to {to}: " + ",".join(out)
