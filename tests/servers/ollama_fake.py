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
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

if __package__:
    from ._echo import DEFAULT_DIMENSIONS, answer_for, chunks_for, count_tokens, embedding_for
    from ._loopback import RecordingFake, RecordingHandler, Seen, serve_until_stdin_closes
else:  # run as a script: python tests/servers/ollama_fake.py
    from _echo import DEFAULT_DIMENSIONS, answer_for, chunks_for, count_tokens, embedding_for
    from _loopback import RecordingFake, RecordingHandler, Seen, serve_until_stdin_closes

__all__ = ["DEFAULT_DIMENSIONS", "DEFAULT_MODELS", "Faults", "OllamaFake", "Seen", "answer_for", "canonical",
           "chunks_for", "count_tokens", "embedding_for", "main"]

DEFAULT_MODELS = ("llama3.2:latest", "nomic-embed-text:latest")
_CREATED_AT = "2026-01-01T00:00:00.000000Z"


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


class _Handler(RecordingHandler):
    json_content_type = "application/json; charset=utf-8"

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _handle(self, method: str) -> None:
        fake = self.server.fake
        received = self._receive(method)
        if received is None:
            return
        body, path = received
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
        self._start_chunked("application/x-ndjson")
        for i, part in enumerate(parts):
            self._chunk(json.dumps(line(part, False)).encode() + b"\n")
            if fake.faults.break_stream and i == 0:
                self._break_connection()
                return
        self._chunk(json.dumps({**line("", True), **final}).encode() + b"\n")
        self._end_chunks()

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


@dataclass
class OllamaFake(RecordingFake):
    """The fake Ollama server. `url` (also `address`) is the SDK's `host`; `faults` says how to misbehave.

    It counts what it receives: `counts` ("POST /api/chat" -> n), `seen` (the last 1000 requests), `total`.
    """

    models: Iterable[str] = DEFAULT_MODELS
    dimensions: int = DEFAULT_DIMENSIONS
    faults: Faults = field(default_factory=Faults)

    handler = _Handler
    thread_name = "ollama-fake"

    def __post_init__(self) -> None:
        super().__init__()

    def fail(self, status: int, message: str = "internal error", *, times: int | None = None) -> None:
        """Answer the next `times` requests (all when None) with HTTP `status` and `{"error": message}`."""
        self.faults.status, self.faults.message, self.faults.times = status, message, times


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground: print the URL on one line, stop when stdin reaches EOF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    return serve_until_stdin_closes(OllamaFake(), args.port)


if __name__ == "__main__":
    raise SystemExit(main())
