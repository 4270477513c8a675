"""What every loopback fake server shares: serving on 127.0.0.1 in a daemon thread, stopping like a server that died,
quiet stdlib handlers without Nagle's delay, and (for the AI fakes) request counting and fault budgets.

A fake subclasses `LoopbackFake` (or `RecordingFake`) and names its handler class, which subclasses
`LoopbackHandler` (or `RecordingHandler`) and implements `_handle(method)` for GET and POST.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol, Self


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FaultBudget(Protocol):
    """The part of a fake's `faults` that `RecordingFake` uses: which status to fail with, how often, how slowly,
    and which models to serve; its class must be constructible from `models` alone (for `reset()`)."""

    status: int | None
    times: int | None
    delay: float
    models: tuple[str, ...]


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server that never waits for its handler threads and takes many connections at once."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # 200 concurrent clients connect at once in the benchmark; 5 would drop SYNs
    fake: LoopbackFake


class LoopbackHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler plumbing: no Nagle delay (else 44 ms a call), no log lines, tracked connections."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    json_content_type: ClassVar[str] = "application/json"
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep test output clean."""

    def setup(self) -> None:
        super().setup()
        self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        self.server.fake._connections.discard(self.connection)
        super().finish()

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
        """Answer one request; subclasses route here."""
        raise NotImplementedError

    def _read_json(self) -> Any:
        """The request body parsed as JSON (None when empty or not JSON)."""
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", self.json_content_type)
        self.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_chunked(self, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Send a 200 whose body follows in chunks (`_chunk`, then `_end_chunks`)."""
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _break_connection(self) -> None:
        """Flush what was sent and drop the connection mid-answer, as a crashing server would."""
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


class LoopbackFake:
    """Serves `handler` on 127.0.0.1 in a daemon thread: `with Fake() as fake: fake.url`, or start()/stop()."""

    handler: ClassVar[type[LoopbackHandler]]
    thread_name: ClassVar[str] = "loopback-fake"

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> Self:
        """Listen on 127.0.0.1 (a free port unless given) and serve in a daemon thread."""
        self._stopping.clear()
        self._server = LoopbackServer(("127.0.0.1", port), self.handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake is not started: use it as a context manager or call start() first")
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What to give the client; the address unless a fake serves under a prefix."""
        return self.address


class RecordingFake(LoopbackFake):
    """A fake that counts and keeps the requests it receives and fails a budget of them (`faults.status/times`).

    Subclasses hold `models` and `faults` (a FaultBudget) before calling `__init__`, which makes `faults` serve the
    models (a dataclass subclass calls it from `__post_init__`).
    """

    models: Iterable[str]
    faults: FaultBudget

    def __init__(self) -> None:
        super().__init__()
        self.models = tuple(self.models)
        self.faults.models = self.models
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()  # "POST /api/chat" -> n
        self.seen: collections.deque[Seen] = collections.deque(maxlen=1000)
        self.total = 0

    def reset(self) -> None:
        """Forget faults and counters; serve the constructor's models again."""
        with self._lock:
            self.faults = type(self.faults)(models=tuple(self.models))  # type: ignore[call-arg]
            self.counts.clear()
            self.seen.clear()
            self.total = 0

    def count(self, path: str, method: str = "POST") -> int:
        """How many `method path` requests arrived (answered or failed)."""
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
        """The status to fail this request with, spending one of `faults.times`; None to answer normally."""
        with self._lock:
            faults = self.faults
            if faults.status is None or faults.times == 0:
                return None
            if faults.times is not None:
                faults.times -= 1
            return faults.status


class RecordingHandler(LoopbackHandler):
    """A handler of a RecordingFake: `_receive` reads, records and delays each request before it is answered."""

    server: LoopbackServer

    @property
    def fake(self) -> RecordingFake:
        fake = self.server.fake
        assert isinstance(fake, RecordingFake)
        return fake

    def _receive(self, method: str) -> tuple[Any, str] | None:
        """(JSON body, path without query) of the request, recorded; None when the fake stopped during `delay`."""
        fake = self.fake
        body = self._read_json() if method == "POST" else None
        path = self.path.split("?", 1)[0]
        fake._record(Seen(method, path, {k.lower(): v for k, v in self.headers.items()}, body))
        delay = fake.faults.delay
        if delay > 0 and fake._stopping.wait(delay):
            self.close_connection = True  # shutting down: drop the request
            return None
        return body, path


def serve_until_stdin_closes(fake: LoopbackFake, port: int = 0) -> int:
    """Serve in the foreground for another process: print the URL on one line, stop when stdin reaches EOF."""
    fake.start(port)
    try:
        print(fake.url, flush=True)
        sys.stdin.read()
    finally:
        fake.stop()
    return 0
