"""What a worker sends the host besides replies: replies routed to their calls, stream chunks, notes (progress,
log lines under a budget) and bridge requests (the call's files, events) served through the plugin's context.

Everything here runs on messages `_rpc` has already validated; a message that breaks the protocol's rules
raises `ProtocolViolation`, which ends the worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from typing import Any

from .. import _rpc
from .._context import PluginContext
from .._discovery import PluginRecord
from .._errors import PluginError, SandboxError
from ._process import LOG_BURST, LOG_RATE, _End, _Worker

log = logging.getLogger("erp_plugins.sandbox")

#: Bridge requests a worker may have in flight at once.
_MAX_BRIDGE_TASKS = 64


class WorkerBridge:
    """The part of `SandboxRunner` that handles what its worker sends."""

    record: PluginRecord
    tenant: str
    _context: PluginContext | None

    def _handle(self, w: _Worker, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        if kind == "hello":
            if w.hello.done():
                raise _rpc.ProtocolViolation("second hello")
            w.hello.set_result(None)
            return
        if not w.hello.done():
            raise _rpc.ProtocolViolation(f"{kind!r} before hello")
        if kind == "res":
            call = w.calls.pop(msg["id"], None)
            if call is None:
                if msg["id"] >= w.next_id:
                    raise _rpc.ProtocolViolation(f"reply to call {msg['id']}, which was never made")
                return
            if msg["error"] is not None and msg["error"]["kind"] == "died":
                raise _rpc.ProtocolViolation("worker may not report kind 'died'")
            if call.touch:
                w.last_used = time.monotonic()
            if w.slot is not None and not w.calls:
                w.slot.idle_now()  # a call waiting for a slot may take this worker's
            if call.queue is not None:
                call.put(_End(msg))
            elif not call.future.done():
                call.future.set_result(msg)
        elif kind == "chunk":
            call = w.calls.get(msg["id"])
            if call is None:
                if msg["id"] >= w.next_id:
                    raise _rpc.ProtocolViolation(f"chunk for call {msg['id']}, which was never made")
                return
            if call.queue is None:
                raise _rpc.ProtocolViolation(f"chunk for call {msg['id']}, which is not a stream")
            if call.credit <= 0:
                raise _rpc.ProtocolViolation("stream chunk sent without credit (backpressure ignored)")
            call.credit -= 1
            call.put(msg["value"])
        elif kind == "breq":
            if len(w.bridge_tasks) >= _MAX_BRIDGE_TASKS:
                raise _rpc.ProtocolViolation(f"more than {_MAX_BRIDGE_TASKS} bridge requests in flight")
            call = w.calls.get(msg["call"])
            ctx = (call.ctx if call is not None and call.ctx is not None else contextvars.Context()).copy()
            task = asyncio.get_running_loop().create_task(self._bridge(w, msg, call is not None), context=ctx)
            w.bridge_tasks.add(task)
            task.add_done_callback(w.bridge_tasks.discard)
        elif kind == "note":
            self._note(w, msg)

    def _note(self, w: _Worker, msg: dict[str, Any]) -> None:
        op, args = msg["op"], msg["args"]
        call = w.calls.get(msg["call"])
        ctx = call.ctx if call is not None and call.ctx is not None else contextvars.Context()
        context = self._context
        if op == "progress":
            done, total, message = args.get("done"), args.get("total"), args.get("message")
            if not (isinstance(done, int) and (total is None or isinstance(total, int)) and isinstance(message, str)):
                raise _rpc.ProtocolViolation("malformed progress note")
            if context is not None:
                ctx.copy().run(context.progress, done, total, message)
        elif op == "log":
            level, message, fields = args.get("level"), args.get("message"), args.get("fields")
            if not (isinstance(level, int) and isinstance(message, str) and isinstance(fields, dict)):
                raise _rpc.ProtocolViolation("malformed log note")
            dropped = w.log_budget.take()
            if dropped is None:
                if w.log_budget.dropped == 1:
                    log.warning("plugin %r (tenant %r) logs more than %d messages at once or %g a second; the rest "
                                "are dropped", self.record.name, self.tenant, LOG_BURST, LOG_RATE)
                return
            if dropped:
                log.warning("plugin %r (tenant %r): %d log messages were dropped", self.record.name, self.tenant,
                            dropped)
            fields = {k: v for k, v in fields.items() if k not in {"level", "message"} and k.isidentifier()}
            if context is not None:
                ctx.copy().run(context.log, level, message, **fields)
            else:
                log.log(level, "%s", self._redactor.redact(message))
        else:
            raise _rpc.ProtocolViolation(f"unknown note {op[:40]!r}")

    async def _bridge(self, w: _Worker, msg: dict[str, Any], in_call: bool) -> None:
        reply: dict[str, Any] = {"t": "bres", "id": msg["id"], "ok": True, "value": None, "error": None}
        try:
            if not in_call:
                raise SandboxError("no hook call of this plugin is in progress")
            if self._context is None:
                raise SandboxError("the plugin is not initialized")
            reply["value"] = await self._bridge_op(msg["op"], msg["args"])
        except Exception as exc:  # every failure goes back to the plugin as its error
            reply.update(ok=False, error={"type": type(exc).__name__ if isinstance(exc, PluginError | OSError)
                                          else "SandboxError", "message": str(exc), "kind": "bridge",
                                          "retry_after": None})
        if not w.dead:
            try:
                w.send(reply)
            except (SandboxError, ValueError):
                pass

    async def _bridge_op(self, op: str, args: dict[str, Any]) -> Any:
        assert self._context is not None
        if op == "files.size":
            path = args.get("path")
            if not isinstance(path, str):
                raise SandboxError("files.size needs a path")
            return self._context.get_service("files").size(path)
        if op == "files.read":
            path, offset, size = args.get("path"), args.get("offset"), args.get("size")
            if not (isinstance(path, str) and isinstance(offset, int) and isinstance(size, int)
                    and offset >= 0 and 0 <= size <= _rpc.MAX_READ):
                raise SandboxError("files.read needs path, offset >= 0 and 0 <= size <= 4 MiB")
            with self._context.get_service("files").open(path) as fh:
                return os.pread(fh.fileno(), size, offset)
        if op == "emit":
            event_type, data = args.get("event_type"), args.get("data")
            if not (isinstance(event_type, str) and isinstance(data, dict)):
                raise SandboxError("emit needs event_type (str) and data (dict)")
            await self._context.emit_event(event_type, data)
            return None
        raise SandboxError(f"unknown bridge operation {op[:40]!r}")

