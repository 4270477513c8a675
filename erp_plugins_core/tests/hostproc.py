"""A PluginHost in a process of its own, driven line by line over stdin/stdout (for multi-process tests).

Commands (one JSON array a line): ["call", hook, tenant, {args}], ["first", hook, tenant, {args}],
["enable", plugin, tenant, {config}, grant|null], ["disable", plugin, tenant], ["health", tenant], ["quit"].
Each answer is one JSON line: {"ok": ...} or {"error": "..."}. "ready" is printed once the host is open.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from erp_plugins_core import PluginHost


async def main(location: str, host_name: str) -> None:
    loop = asyncio.get_running_loop()
    async with PluginHost(location, health_loop=False, host_name=host_name) as host:
        print(json.dumps("ready"), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            try:
                out: Any = await run(host, cmd)
            except SystemExit:
                return
            except Exception as exc:
                print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
                continue
            print(json.dumps({"ok": out}, default=str), flush=True)


async def run(host: PluginHost, cmd: list[Any]) -> Any:
    op = cmd[0]
    if op == "call":
        return [[r.plugin, r.success, r.result, r.error] for r in await host.call(cmd[1], tenant=cmd[2], **cmd[3])]
    if op == "first":
        return await host.first(cmd[1], tenant=cmd[2], **cmd[3])
    if op == "enable":
        row = await host.enable(cmd[1], tenant=cmd[2], config=cmd[3], grant=cmd[4], trust=True)
        return row.state
    if op == "disable":
        await host.disable(cmd[1], tenant=cmd[2])
        return None
    if op == "health":
        return [r.to_json() for r in await host.health(cmd[1])]
    raise SystemExit


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
