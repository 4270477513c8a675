"""Server-sent events whose producer is cancelled the moment the client goes away.

Starlette's StreamingResponse notices a disconnect only when it next writes (ASGI 2.4); a plugin that is
thinking between two chunks would go on. `EventStream` listens for `http.disconnect` while it streams and
cancels the producer at once; closing the producer's async generator closes the plugin's stream (and tells a
sandboxed worker to stop). A slow client only slows its own task: the server's send waits for that socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Scope, Send

log = logging.getLogger("erp_plugins.server")

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
]


def event(name: str | None, data: Any) -> bytes:
    """One SSE event: `event: name` (when given) and one `data:` line of JSON (or text, as OpenAI's [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), default=str)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {text}\n\n".encode()


class EventStream:
    """An ASGI response sending the bytes an async iterator yields, cancelled when the client disconnects."""

    def __init__(self, source: AsyncIterator[bytes], *, closing: bytes = b"",
                 extra_headers: list[tuple[bytes, bytes]] | None = None, on_disconnect: Any = None) -> None:
        """`closing`: the last event sent when the server stops while the stream runs."""
        self.source = source
        self.closing = closing
        self.headers = HEADERS + (extra_headers or [])
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the source runs in this task (host streams keep context variables that must be reset where they
        # were set); a listener task cancels this task when the client disconnects
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        task = asyncio.current_task()
        assert task is not None
        disconnected = False

        async def listen() -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    task.cancel()
                    return

        listener = asyncio.ensure_future(listen())
        try:
            async for chunk in self.source:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            task.uncancel()
            if not disconnected:  # the server is stopping (uvicorn's graceful timeout): end the stream cleanly
                log.info("stream ended: server shutting down path=%s", scope.get("path"))
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": self.closing, "more_body": False})
        except OSError:  # the client went away while we wrote
            disconnected = True
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            aclose = getattr(self.source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()  # closes the plugin's stream, wherever it runs
        if disconnected:
            log.info("stream cancelled: client disconnected path=%s", scope.get("path"))
            if self.on_disconnect is not None:
                self.on_disconnect()
