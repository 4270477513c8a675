"""A well-behaved plugin: answers, streams, reads the call's files, emits events, logs and reports progress."""

from __future__ import annotations

import asyncio
import hashlib
import os

from erp_plugins_core._interface import PluginInterface


class Plugin(PluginInterface):
    async def answer(self, prompt: str, context: dict) -> str:
        ctx = self.context
        if prompt == "whoami":
            return f"{ctx.tenant_id}:{dict(ctx.user_context)}"
        if prompt == "config":
            return f"{ctx.get_config('greeting')}"
        if prompt == "secret-error":
            raise ValueError(f"bad key {ctx.get_config('api_key')}")
        if prompt == "bridge":
            ctx.progress(1, 2, "half")
            ctx.log("info", f"using key {ctx.get_config('api_key')}", step="bridge")
            await ctx.emit_event("sbx.hello", {"from": "sbx_good"})
            ctx.record_usage(prompt_tokens=3, completion_tokens=4)
            return "bridged"
        if prompt == "pid":
            return str(os.getpid())
        if prompt == "env":
            return repr(sorted(os.environ))
        if prompt.startswith("sleep:"):
            await asyncio.sleep(float(prompt[6:]))
            return "slept"
        if prompt == "boom":
            raise RuntimeError("boom")
        return f"{ctx.get_config('greeting', 'hello')} {prompt}"

    async def stream(self, prompt: str, context: dict):
        for i in range(int(context.get("n", 5))):
            yield f"{prompt}-{i}"

    async def send(self, to: str, subject: str, body: str, attachments: list) -> str:
        files = self.context.get_service("files")
        digests = []
        for path in attachments:
            with files.open(path) as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(0)
                h = hashlib.sha256()
                while chunk := fh.read(1024 * 1024):
                    h.update(chunk)
                digests.append(f"{size}:{h.hexdigest()}")
        return ",".join(digests)

    async def upload(self, file_path: str, folder_id: str | None) -> str:
        # folder_id names a path the call did not pass: the host must refuse it
        with self.context.get_service("files").open(folder_id or file_path) as fh:
            return fh.read(16).decode()

    async def on_event(self, event_type: str, data: dict) -> None:
        return None
