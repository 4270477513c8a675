"""A loopback server speaking OpenAI's REST protocol, for driving the real `openai` SDK in tests and benchmarks.

It answers deterministically (the answer echoes the last user message; embeddings are derived from the text's
SHA-256), checks the bearer key, counts requests, and can be told to fail the way the real service does:
401/404/429/500 with OpenAI's error body, slow answers, and streams that break after their first chunk.

Use it as a context manager (`with OpenAIFake() as fake: fake.url`), with start()/stop(), or as a process:
`python tests/servers/openai_fake.py [--port N] [--api-key KEY]` prints its base URL and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

if __package__:
    from ._echo import DEFAULT_DIMENSIONS, answer_for, chunks_for, count_tokens, embedding_for
    from ._loopback import RecordingFake, RecordingHandler, Seen, serve_until_stdin_closes
else:  # run as a script: python tests/servers/openai_fake.py
    from _echo import DEFAULT_DIMENSIONS, answer_for, chunks_for, count_tokens, embedding_for
    from _loopback import RecordingFake, RecordingHandler, Seen, serve_until_stdin_closes

__all__ = ["DEFAULT_DIMENSIONS", "DEFAULT_KEY", "DEFAULT_MODELS", "Faults", "OpenAIFake", "Seen", "answer_for",
           "chunks_for", "count_tokens", "embedding_for", "main"]

DEFAULT_KEY = "sk-test-fake-0123456789abcdef"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")


@dataclass
class Faults:
    """How the fake misbehaves; change the attributes of `fake.faults` (or call `fake.reset()`) between calls."""

    status: int | None = None  # answer with this HTTP error (401, 404, 429, 500, ...)
    retry_after: str | None = None  # `retry-after` header sent with a failure
    times: int | None = None  # how many requests fail before the fake answers normally again (None: all)
    delay: float = 0.0  # seconds to wait before answering (slow server)
    break_stream: bool = False  # streams send their first chunk, then drop the connection
    models: tuple[str, ...] = DEFAULT_MODELS  # the models GET /v1/models offers and requests may name


_ERROR_BODIES: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_request", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided: {key}."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country not supported."),
    404: ("invalid_request_error", "model_not_found",
          "The model `{model}` does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for {model} on requests per min (RPM)."),
    500: ("server_error", "server_error", "The server had an error while processing your request."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded, please try again later."),
}


class _Handler(RecordingHandler):
    # --- plumbing -------------------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        super()._send_json(status, payload, {"x-request-id": f"req_{self.server.fake.total}", **(headers or {})})

    def _send_error(
        self, status: int, *, model: str = "", key: str = "", headers: dict[str, str] | None = None
    ) -> None:
        kind, code, message = _ERROR_BODIES.get(status, ("server_error", "error", f"HTTP {status}"))
        body = {"error": {"message": message.format(model=model, key=key), "type": kind, "param": None, "code": code}}
        self._send_json(status, body, headers)

    # --- dispatch -------------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        received = self._receive(method)
        if received is None:
            return
        body, path = received
        model = body.get("model", "") if isinstance(body, dict) else ""
        auth = self.headers.get("authorization", "")
        if auth != f"Bearer {fake.api_key}":
            given = auth.removeprefix("Bearer ")
            # The real service masks the key; the fake echoes it whole so tests prove plugins never repeat it.
            self._send_error(401, key=given)
            return
        status = fake._take_fault()
        if status is not None:
            headers = {"retry-after": fake.faults.retry_after} if fake.faults.retry_after is not None else None
            self._send_error(status, model=model or "gpt-4o-mini", headers=headers)
            return

        route = (method, path)
        if route == ("GET", "/v1/models"):
            self._models()
        elif route == ("POST", "/v1/chat/completions"):
            self._chat(body)
        elif route == ("POST", "/v1/embeddings"):
            self._embeddings(body)
        else:
            error = {"message": f"Invalid URL ({method} {path})", "type": "invalid_request_error",
                     "param": None, "code": None}
            self._send_json(404, {"error": error})

    # --- endpoints ------------------------------------------------------------------------------------

    def _models(self) -> None:
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for m in self.server.fake.faults.models]
        self._send_json(200, {"object": "list", "data": data})

    def _chat(self, body: Any) -> None:
        fake = self.server.fake
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error(400)
            return
        model = str(body.get("model", ""))
        if model not in fake.faults.models:
            self._send_error(404, model=model)
            return
        messages = body["messages"]
        user = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        parts = chunks_for(answer_for(str(user[-1]) if user else ""))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and len(parts) > limit:
            parts, finish = parts[:limit], "length"
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(parts),
                 "total_tokens": prompt_tokens + len(parts)}
        base = {"id": f"chatcmpl-{fake.total}", "created": int(time.time()), "model": model,
                "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(parts), "refusal": None},
                      "logprobs": None, "finish_reason": finish}
            self._send_json(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start_chunked("text/event-stream; charset=utf-8", {"cache-control": "no-cache"})
        base = {**base, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include_usage else {}
        deltas = [{"role": "assistant", "content": "", "refusal": None}] + [{"content": p} for p in parts]
        for i, delta in enumerate(deltas):
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            event = {**base, "choices": [choice], **extra}
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            if fake.faults.break_stream and i == 1:
                self._break_connection()
                return
        final = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}], **extra}
        self._chunk(b"data: " + json.dumps(final).encode() + b"\n\n")
        if include_usage:
            self._chunk(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._end_chunks()

    def _embeddings(self, body: Any) -> None:
        fake = self.server.fake
        if not isinstance(body, dict) or "input" not in body:
            self._send_error(400)
            return
        model = str(body.get("model", ""))
        if model not in fake.faults.models:
            self._send_error(404, model=model)
            return
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else fake.dimensions
        data = []
        for i, text in enumerate(texts):
            vector = embedding_for(str(text), dims)
            value: Any = vector
            if body.get("encoding_format") == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(count_tokens(str(t)) for t in texts)
        self._send_json(200, {"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@dataclass
class OpenAIFake(RecordingFake):
    """The fake OpenAI service. `url` is the SDK's `base_url` (ending in /v1); `faults` says how to misbehave.

    It counts what it receives, authorized or not: `counts` ("POST /v1/chat/completions" -> n), `seen` (the last
    1000 requests), `total`.
    """

    api_key: str = DEFAULT_KEY
    models: Iterable[str] = DEFAULT_MODELS
    dimensions: int = DEFAULT_DIMENSIONS
    faults: Faults = field(default_factory=Faults)

    handler = _Handler
    thread_name = "openai-fake"

    def __post_init__(self) -> None:
        super().__init__()

    @property
    def url(self) -> str:
        """The base_url to give the SDK: http://127.0.0.1:PORT/v1"""
        return f"{self.address}/v1"

    def fail(self, status: int, *, retry_after: str | None = None, times: int | None = None) -> None:
        """Answer the next `times` requests (all when None) with HTTP `status` and OpenAI's error body."""
        self.faults.status, self.faults.retry_after, self.faults.times = status, retry_after, times


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground: print the base URL on one line, stop when stdin reaches EOF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=DEFAULT_KEY)
    args = parser.parse_args(argv)
    return serve_until_stdin_closes(OpenAIFake(api_key=args.api_key), args.port)


if __name__ == "__main__":
    raise SystemExit(main())
