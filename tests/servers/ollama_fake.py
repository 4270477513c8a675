"""A loopback server speaking Ollama's HTTP API, for driving the real `ollama` SDK in tests and benchmarks.

Endpoints: GET /api/tags, POST /api/generate, /api/chat (NDJSON streams whose last line has `done: true` with
prompt_eval_count/eval_count) and /api/embed. Answers are deterministic (they echo the prompt; embeddings come
from the text's SHA-256). Failures use Ollama's error body `{"error": "..."}` with its status codes; it can also
answer slowly or break a stream after its first chunk. It counts requests.

Use it as a context manager (`with OllamaFake() as fake: fake.url`), with start()/stop(), or as a process:
`python tests/servers/ollama_fake.py [--port N]` prints its URL and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODELS = ("llama3.2:latest", "nomic-embed-text:latest")
DEFAULT_DIMENSIONS = 8
_CREATED_AT = "2026-01-01T00:00:00.000000Z"


def answer_for(prompt: str) -> str:
    """The answer the fake gives to a prompt (the last user message for /api/chat)."""
    return f"echo: {prompt}"


def chunks_for(answer: str) -> list[str]:
    """How the fake splits an answer into stream lines: one word (with its trailing space) per line."""
    return re.findall(r"\S+\s*", answer) or [answer]


def embedding_for(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The embedding the fake returns for `text` (values exact in binary floating point)."""
    digest = hashlib.sha256(text.encode()).digest()
    while len(digest) < dimensions:
        digest += hashlib.sha256(digest).digest()
    return [(b - 128) / 128 for b in digest[:dimensions]]


def count_tokens(text: str) -> int:
    """The fake's token count: whitespace-separated words."""
    return len(text.split())


def canonical(model: str) -> str:
    """Ollama's model naming: a name without a tag means `:latest`."""
    return model if ":" in model else f"{model}:latest"


@dataclass
class Faults:
    """How the fake misbehaves; change the attributes of `fake.faults` (or call `fake.reset()`) between calls."""

    status: int | None = None  # answer with this HTTP status and {"error": message}
    message: str = "internal error"  # the error text for `status`
    times: int | None = None  # how many requests fail before it answers normally again (None: all)
    delay: float = 0.0  # seconds to wait before answering
    break_stream: bool = False  # streams send their first line, then drop the connection
    models: tuple[str, ...] = DEFAULT_MODELS  # what /api/tags lists and requests may name


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


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

    def _read_json(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

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
        delay = fake.faults.delay
        if delay > 0 and fake._stopping.wait(delay):
            self.close_connection = True  # shutting down: drop the request
            return
        status = fake._take_fault()
        if status is not None:
            self._error(status, fake.faults.message)
            return
        route = (method, path)
        if route == ("GET", "/api/tags"):
            self._tags()
        elif route in {("POST", "/api/generate"), ("POST", "/api/chat"), ("POST", "/api/embed")}:
            if not isinstance(body, dict):
                self._error(400, "invalid request body")
                return
            model = str(body.get("model", ""))
            if not model:
                self._error(400, "model is required")
            elif canonical(model) not in fake.faults.models:
                self._error(404, f"model '{model}' not found")
            elif path == "/api/embed":
                self._embed(body)
            else:
                self._generate(body, chat=path == "/api/chat")
        elif route == ("GET", "/"):
            self.send_response(200)
            self.send_header("content-length", "17")
            self.end_headers()
            self.wfile.write(b"Ollama is running")
        else:
            self.send_response(404)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", "18")
            self.end_headers()
            self.wfile.write(b"404 page not found")

    def _tags(self) -> None:
        models = [
            {"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 2019393189,
             "digest": hashlib.sha256(m.encode()).hexdigest(),
             "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                         "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}
            for m in self.server.fake.faults.models
        ]
        self._send_json(200, {"models": models})

    def _generate(self, body: dict[str, Any], *, chat: bool) -> None:
        fake = self.server.fake
        model = str(body["model"])
        if chat:
            messages = body.get("messages") if isinstance(body.get("messages"), list) else []
            user = [str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            prompt = user[-1] if user else ""
            prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        else:
            prompt = str(body.get("prompt") or "")
            prompt_tokens = count_tokens(prompt) + count_tokens(str(body.get("system") or ""))
        parts = chunks_for(answer_for(prompt))
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        limit = options.get("num_predict")
        done_reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(parts):
            parts, done_reason = parts[:limit], "length"
        final = {"done": True, "done_reason": done_reason, "total_duration": 1000, "load_duration": 10,
                 "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 100, "eval_count": len(parts),
                 "eval_duration": 500}
        if not chat:
            final["context"] = [1, 2, 3]

        def line(text: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": _CREATED_AT}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            return {**out, "done": done}

        if body.get("stream") is False:
            self._send_json(200, {**line("".join(parts), True), **final})
            return
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, part in enumerate(parts):
            data = json.dumps(line(part, False)).encode() + b"\n"
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
            if fake.faults.break_stream and i == 0:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
        data = json.dumps({**line("", True), **final}).encode() + b"\n"
        self.wfile.write(b"%X\r\n%s\r\n0\r\n\r\n" % (len(data), data))

    def _embed(self, body: dict[str, Any]) -> None:
        fake = self.server.fake
        raw = body.get("input", "")
        texts = [str(t) for t in raw] if isinstance(raw, list) else [str(raw)]
        dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else fake.dimensions
        self._send_json(200, {
            "model": body["model"],
            "embeddings": [embedding_for(t, dims) for t in texts],
            "total_duration": 1000, "load_duration": 10,
            "prompt_eval_count": sum(count_tokens(t) for t in texts),
        })


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # 200 concurrent clients connect at once in the benchmark; 5 would drop SYNs
    fake: OllamaFake


@dataclass
class OllamaFake:
    """The fake Ollama server. `url` is the SDK's `host`; `faults` says how to misbehave."""

    models: Iterable[str] = DEFAULT_MODELS
    dimensions: int = DEFAULT_DIMENSIONS
    faults: Faults = field(default_factory=Faults)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)  # "POST /api/chat" -> n
    seen: collections.deque[Seen] = field(default_factory=lambda: collections.deque(maxlen=1000))
    total: int = 0

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        self.faults.models = self.models
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> OllamaFake:
        """Listen on 127.0.0.1 (a free port unless given) and serve in a daemon thread."""
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ollama-fake", daemon=True)
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

    def __enter__(self) -> OllamaFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The host to give the SDK: http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    address = url

    def reset(self) -> None:
        """Forget faults and counters; serve the constructor's models again."""
        with self._lock:
            self.faults = Faults(models=tuple(self.models))
            self.counts.clear()
            self.seen.clear()
            self.total = 0

    def fail(self, status: int, message: str = "internal error", *, times: int | None = None) -> None:
        """Answer the next `times` requests (all when None) with HTTP `status` and `{"error": message}`."""
        self.faults.status, self.faults.message, self.faults.times = status, message, times

    def count(self, path: str, method: str = "POST") -> int:
        """How many `method path` requests arrived."""
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
    """Serve in the foreground: print the URL on one line, stop when stdin reaches EOF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    fake = OllamaFake().start(args.port)
    try:
        print(fake.url, flush=True)
        sys.stdin.read()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
