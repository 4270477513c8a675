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
import collections
import contextlib
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_KEY = "sk-test-fake-0123456789abcdef"
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
DEFAULT_DIMENSIONS = 8


def answer_for(prompt: str) -> str:
    """The chat answer the fake gives to a last user message `prompt`."""
    return f"echo: {prompt}"


def chunks_for(answer: str) -> list[str]:
    """How the fake splits an answer into stream deltas: one word (with its trailing space) per chunk."""
    return re.findall(r"\S+\s*", answer) or [answer]


def embedding_for(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The embedding the fake returns for `text`; every value is exact in float32, so base64 round-trips."""
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dimensions:
        digest += hashlib.sha256(digest).digest()
    return [(b - 128) / 128 for b in digest[:dimensions]]


def count_tokens(text: str) -> int:
    """The fake's token count: whitespace-separated words."""
    return len(text.split())


@dataclass
class Faults:
    """How the fake misbehaves; change the attributes of `fake.faults` (or call `fake.reset()`) between calls."""

    status: int | None = None  # answer with this HTTP error (401, 404, 429, 500, ...)
    retry_after: str | None = None  # `retry-after` header sent with a failure
    times: int | None = None  # how many requests fail before the fake answers normally again (None: all)
    delay: float = 0.0  # seconds to wait before answering (slow server)
    break_stream: bool = False  # streams send their first chunk, then drop the connection
    models: tuple[str, ...] = DEFAULT_MODELS  # the models GET /v1/models offers and requests may name


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep test output clean."""

    def setup(self) -> None:
        super().setup()
        self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        self.server.fake._connections.discard(self.connection)
        super().finish()

    # --- plumbing -------------------------------------------------------------------------------------

    def _read_json(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", f"req_{self.server.fake.total}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, status: int, *, model: str = "", key: str = "", headers: dict[str, str] | None = None
    ) -> None:
        kind, code, message = _ERROR_BODIES.get(status, ("server_error", "error", f"HTTP {status}"))
        body = {"error": {"message": message.format(model=model, key=key), "type": kind, "param": None, "code": code}}
        self._send_json(status, body, headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    # --- dispatch -------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._guarded("GET")

    def do_POST(self) -> None:
        self._guarded("POST")

    def _guarded(self, method: str) -> None:
        try:
            self._handle(method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. closed a stream early)

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        body = self._read_json() if method == "POST" else None
        path = self.path.split("?", 1)[0]
        fake._record(Seen(method, path, {k.lower(): v for k, v in self.headers.items()}, body))
        model = body.get("model", "") if isinstance(body, dict) else ""

        delay = fake.faults.delay
        if delay > 0 and fake._stopping.wait(delay):
            self.close_connection = True  # shutting down: drop the request
            return
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
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        base = {**base, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include_usage else {}
        deltas = [{"role": "assistant", "content": "", "refusal": None}] + [{"content": p} for p in parts]
        for i, delta in enumerate(deltas):
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            event = {**base, "choices": [choice], **extra}
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
            if fake.faults.break_stream and i == 1:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
        final = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}], **extra}
        self._chunk(b"data: " + json.dumps(final).encode() + b"\n\n")
        if include_usage:
            self._chunk(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # 200 concurrent clients connect at once in the benchmark; 5 would drop SYNs
    fake: OpenAIFake


@dataclass
class OpenAIFake:
    """The fake OpenAI service. `url` is the SDK's `base_url` (ending in /v1); `faults` says how to misbehave."""

    api_key: str = DEFAULT_KEY
    models: Iterable[str] = DEFAULT_MODELS
    dimensions: int = DEFAULT_DIMENSIONS
    faults: Faults = field(default_factory=Faults)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)  # "POST /v1/chat/completions" -> n
    seen: collections.deque[Seen] = field(default_factory=lambda: collections.deque(maxlen=1000))
    total: int = 0

    def __post_init__(self) -> None:
        self.faults.models = tuple(self.models)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self, port: int = 0) -> OpenAIFake:
        """Listen on 127.0.0.1 (a free port unless given) and serve in a daemon thread."""
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="openai-fake", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and every open connection (like a server that died)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> OpenAIFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake is not started")
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base_url to give the SDK: http://127.0.0.1:PORT/v1"""
        return f"{self.address}/v1"

    # --- faults and counters --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget faults and counters; serve the constructor's models again."""
        with self._lock:
            self.faults = Faults(models=tuple(self.models))
            self.counts.clear()
            self.seen.clear()
            self.total = 0

    def fail(self, status: int, *, retry_after: str | None = None, times: int | None = None) -> None:
        """Answer the next `times` requests (all when None) with HTTP `status` and OpenAI's error body."""
        self.faults.status, self.faults.retry_after, self.faults.times = status, retry_after, times

    def count(self, path: str, method: str = "POST") -> int:
        """How many `method path` requests arrived (authorized or not)."""
        return self.counts[f"{method} {path}"]

    def last(self, path: str) -> Seen:
        """The most recent request to `path`."""
        for seen in reversed(self.seen):
            if seen.path == path:
                return seen
        raise LookupError(f"no request to {path} was seen")

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.total += 1
            self.counts[f"{seen.method} {seen.path}"] += 1
            self.seen.append(seen)

    def _take_fault(self) -> int | None:
        with self._lock:
            faults = self.faults
            if faults.status is None or faults.times == 0:
                return None
            if faults.times is not None:
                faults.times -= 1
            return faults.status


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground: print the base URL on one line, stop when stdin reaches EOF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=DEFAULT_KEY)
    args = parser.parse_args(argv)
    fake = OpenAIFake(api_key=args.api_key).start(args.port)
    try:
        print(fake.url, flush=True)
        sys.stdin.read()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
