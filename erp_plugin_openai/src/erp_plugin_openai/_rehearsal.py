"""A rehearsal of the plugin's calls at import: each SDK call this plugin makes runs once, against answers
written here, in memory.

Why: the SDK builds much of its machinery on a process's first calls, not at import (pydantic validators of
generic pages and nested models, the type hints of request parameters, the HTTP client's code paths): ≈ 40 ms
at a new process's first `initialize` and first answer. Done once per plugin, before any tenant exists, a
sandboxed worker forked from the plugin's template (erp-plugins-core) inherits it ready. There is no network,
no tenant, no config and no secret here: the HTTP client's transport is the HTTP library's own in-memory
`MockTransport`, answering from this module.

It runs only where no event loop is running: in the template, which imports the plugin before it serves; not in
a plain worker or an in-process host, which import the plugin from their running loop and pay those costs at
their first call, as they would have anyway. It never raises: a rehearsal that fails only leaves the SDK cold.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from typing import Any

import openai
from openai.pagination import AsyncPage
from openai.types import Model

#: `models.list` asks pydantic for `AsyncPage[Model]`, a class pydantic builds on demand and caches weakly: held
#: here, it is built once per process (≈ 6 ms) instead of at each new worker's first `initialize`.
MODEL_PAGE = AsyncPage[Model]
#: The config of the rehearsal: not a tenant's, and no real key (the transport never leaves this process).
CONFIG: dict[str, Any] = {"api_key": "rehearsal", "base_url": "http://rehearsal.invalid/v1", "model": "rehearsal",
                          "embedding_model": "rehearsal-embedding", "max_retries": 0}
_USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
_MESSAGE = {"role": "assistant", "content": "ready"}


def http_library() -> Any:
    """The HTTP library under this SDK version (httpx2 in newer ones, httpx before), from its client class."""
    return importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.partition(".")[0])


def _answer(request: Any) -> Any:
    """The OpenAI API's answer shapes, as small as the SDK accepts."""
    lib = http_library()
    path = request.url.path
    if path.endswith("/models"):
        model = {"object": "model", "created": 0, "owned_by": "rehearsal"}
        return lib.Response(200, json={"object": "list", "data": [{"id": CONFIG["model"], **model},
                                                                  {"id": CONFIG["embedding_model"], **model}]})
    if path.endswith("/embeddings"):
        return lib.Response(200, json={"object": "list", "model": CONFIG["embedding_model"], "usage": _USAGE,
                                       "data": [{"object": "embedding", "index": 0, "embedding": "AAAAAA=="}]})
    if path.endswith("/chat/completions"):
        base = {"id": "rehearsal", "created": 0, "model": CONFIG["model"]}
        if json.loads(request.content).get("stream"):
            chunks = [{**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": _MESSAGE, "finish_reason": None}]},
                      {**base, "object": "chat.completion.chunk", "choices": [], "usage": _USAGE}]
            body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return lib.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())
        return lib.Response(200, json={**base, "object": "chat.completion", "usage": _USAGE, "choices": [
            {"index": 0, "message": _MESSAGE, "finish_reason": "stop"}]})
    return lib.Response(404, json={"error": {"message": f"no rehearsal answer for {path}"}})


async def _calls(plugin: Any) -> list[str]:
    """Every call the plugin makes, in the order a tenant's worker makes them; what each returned, shortened."""
    done = [f"initialize {await plugin.initialize(dict(CONFIG), None)}"]
    try:
        done.append(f"answer {await plugin.generate_response('ready?', {})}")
        done.append(f"stream {''.join([part async for part in plugin.generate_streaming_response('ready?', {})])}")
        done.append(f"embeddings {len(await plugin.generate_embeddings(['ready?']))}")
        done.append(f"health {(await plugin.health_check())['healthy']}")
    finally:
        await plugin.cleanup()
    return done


def rehearse(plugin_class: type) -> list[str] | None:
    """Run the calls of a new `plugin_class` instance whose HTTP client answers from memory; what they returned,
    or None when skipped (an event loop is running here) or failed."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return None

    class Rehearsal(plugin_class):  # type: ignore[misc, valid-type]
        def _http_client(self) -> Any:
            return openai.DefaultAsyncHttpxClient(transport=http_library().MockTransport(_answer), trust_env=False)

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_calls(Rehearsal()))
    except Exception:  # noqa: BLE001 - an optimization only: the SDK stays cold, the plugin works as before
        return None
    finally:
        try:  # the SDK reads the platform in a thread of the loop's executor: joined, so a template may fork
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
