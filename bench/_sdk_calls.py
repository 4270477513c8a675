"""The SDK calls the AI provider benchmark compares against, with the parameters the plugins send.

Imported by `bench_ai_providers.py` for its reference side (the SDK called directly in the benchmark's process),
and also run whole as the program of its "floor" side: a bare process started with the plugin's own bubblewrap
command line, interpreter and runtime site, that makes the same calls for the benchmark over a raw
length-prefixed pipe (fd 0 in, fd 1 out). The floor is what any out-of-process plugin must pay here, with none
of the host's RPC machinery (no msgpack, no validation, no task per call). So this file imports only the
standard library, when asked one SDK, and the worker's `new_loop` (so it runs the workers' event loop).

    python -I -S -B -c "$(cat bench/_sdk_calls.py)" <site dir> <auto|asyncio>  (the workers' event loop)
    then frames: a JSON config {"provider", "url", "api_key"}, then b"c" (one call: one frame back), b"s" (one
    stream: a frame per chunk, then an empty frame) or b"b<N>" (N concurrent calls: an empty frame back), until
    fd 0 closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

PROMPT = "Summarise invoice 4711 for the customer."
ANSWER = f"echo: {PROMPT}"  # what both fakes answer (tests/servers/_echo.py answer_for)
API_KEY = "sk-test-fake-0123456789abcdef"  # the OpenAI fake's default key
TIMEOUT = 30.0  # the SDKs' request timeout, the same on every side
TEMPERATURE = 0.7  # both plugins' default, sent by every side
OPENAI_MODEL = "gpt-4o-mini"
OLLAMA_MODEL = "llama3.2"


@dataclass
class SdkCalls:
    """One provider's SDK client: a chat call, a chat stream of content pieces, and how to close the client."""

    call: Callable[[], Awaitable[str]]
    stream: Callable[[], AsyncIterator[str]]
    close: Callable[[], Awaitable[object]]
    call_text: str
    stream_text: str


def openai_calls(url: str, api_key: str = API_KEY) -> SdkCalls:
    import openai

    client = openai.AsyncOpenAI(api_key=api_key, base_url=url, timeout=TIMEOUT, max_retries=0)
    messages = [{"role": "user", "content": PROMPT}]

    async def call() -> str:
        completion = await client.chat.completions.create(model=OPENAI_MODEL, messages=messages,
                                                          temperature=TEMPERATURE)
        return completion.choices[0].message.content or ""

    async def stream() -> AsyncIterator[str]:
        chunks = await client.chat.completions.create(model=OPENAI_MODEL, messages=messages, temperature=TEMPERATURE,
                                                      stream=True, stream_options={"include_usage": True})
        async with chunks:
            async for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content

    return SdkCalls(call, stream, client.close,
                    "AsyncOpenAI(...).chat.completions.create(model, messages, temperature)",
                    "the same with stream=True, stream_options={include_usage: True}, content deltas")


def ollama_calls(url: str, api_key: str = "") -> SdkCalls:  # api_key unused: Ollama has none (same signature)
    import ollama

    client = ollama.AsyncClient(host=url, timeout=TIMEOUT)
    messages = [{"role": "user", "content": PROMPT}]
    options = {"temperature": TEMPERATURE}

    async def call() -> str:
        response = await client.chat(model=OLLAMA_MODEL, messages=messages, options=options, stream=False)
        return response.message.content or ""

    async def stream() -> AsyncIterator[str]:
        async for part in await client.chat(model=OLLAMA_MODEL, messages=messages, options=options, stream=True):
            if part.message is not None and part.message.content:
                yield part.message.content

    async def close() -> None:
        close = getattr(client, "close", None)
        await (close() if close is not None else client._client.aclose())

    return SdkCalls(call, stream, close, "ollama.AsyncClient(...).chat(model, messages, options, stream=False)",
                    "the same with stream=True, message contents")


CALLS = {"openai": openai_calls, "ollama": ollama_calls}


# --- the floor: these calls in a bare process, over a raw pipe --------------------------------------------------


async def serve() -> None:
    """Answer the benchmark's frames on fds 0/1 until fd 0 closes (see the module docstring)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))

    def send(data: bytes) -> None:
        os.write(1, len(data).to_bytes(4, "big") + data)

    async def receive() -> bytes:
        return await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big"))

    config = json.loads(await receive())
    sdk = CALLS[config["provider"]](config["url"], config["api_key"])
    try:
        while True:
            try:
                op = await receive()
            except asyncio.IncompleteReadError:
                return
            if op == b"c":
                send((await sdk.call()).encode())
            elif op.startswith(b"b"):  # a burst of concurrent calls, so the SDK's pool grows as the others' do
                await asyncio.gather(*(sdk.call() for _ in range(int(op[1:]))))
                send(b"")
            else:
                async for piece in sdk.stream():
                    send(piece.encode())
                send(b"")
    finally:
        await sdk.close()


if __name__ == "__main__":
    site, kind = sys.argv[1], sys.argv[2]
    sys.path.insert(0, site)  # the runtime site, as the worker adds it (the interpreter runs with -I -S)
    sys.path.insert(0, os.path.join(site, "erp_plugins_core"))
    from _worker import new_loop  # the worker's own choice of event loop (ERP_PLUGINS_SANDBOX_LOOP)

    with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
        runner.run(serve())
