# ruff: noqa: ASYNC230 - small files, read inline
"""A plugin that writes, reads and lists its /data directory as the prompt says (both sbx_files plugins)."""

from __future__ import annotations

import os

from erp_plugins_core._interface import PluginInterface

DATA = "/data"


class Plugin(PluginInterface):
    async def files(self, prompt: str, context: dict) -> str:
        """`write:<name>:<text>`, `read:<name>` or `list`; names are relative to /data."""
        kind, _, rest = prompt.partition(":")
        if kind == "write":
            name, _, text = rest.partition(":")
            with open(os.path.join(DATA, name), "w") as fh:
                fh.write(text)
            return "written"
        if kind == "read":
            with open(os.path.join(DATA, rest)) as fh:
                return fh.read()
        if kind == "list":
            return ",".join(sorted(os.listdir(DATA)))
        raise ValueError(f"unknown request {prompt!r}")
