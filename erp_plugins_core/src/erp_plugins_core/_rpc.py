"""The pipe protocol between the host and a sandboxed worker: length-prefixed msgpack frames, validated.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack encoding one map. Nothing is
ever unpickled; only plain values (None, bool, int, float, str, bytes, list, str-keyed map) cross, and every
message must have exactly the keys its type defines. The host treats anything else from a worker as a
protocol violation and kills the worker.

This module is imported by the worker too (loaded by file path, before the package, while the worker's cold
start is being timed), so it imports only `os` and msgpack at run time.
"""

from __future__ import annotations

import os

import msgpack

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the worker's cold start several ms; annotations are strings here anyway
    from typing import Any

#: Largest frame either side accepts (arguments, results and stream chunks must fit in one frame).
MAX_FRAME = 32 * 1024 * 1024
#: Deepest nesting of lists and maps accepted in a message.
MAX_DEPTH = 64
#: Largest chunk the files bridge moves per request.
MAX_READ = 4 * 1024 * 1024

#: Bytes of the big-endian length header in front of every payload.
HEADER_SIZE = 4
#: Largest single read from a pipe (pipes hold 64 KiB by default, 1 MiB when the host could enlarge them).
READ_SIZE = 1024 * 1024

_ANY = object()
_INT = (int,)
_STR = (str,)
_DICT = (dict,)
_LIST = (list,)
_BOOL = (bool,)

#: Messages the worker may send: type -> {key: allowed types}. Every key is required, no other key allowed.
FROM_WORKER: dict[str, dict[str, Any]] = {
    "hello": {"pid": _INT},
    "res": {"id": _INT, "ok": _BOOL, "value": _ANY, "error": (dict, type(None)), "usage": _DICT},
    "chunk": {"id": _INT, "value": _ANY},
    "breq": {"id": _INT, "call": _INT, "op": _STR, "args": _DICT},
    "note": {"call": _INT, "op": _STR, "args": _DICT},
}

#: Messages the host may send.
TO_WORKER: dict[str, dict[str, Any]] = {
    "req": {"id": _INT, "op": _STR, "args": _DICT, "user": _DICT, "files": _LIST},
    "credit": {"id": _INT, "n": _INT},
    "cancel": {"id": _INT},
    "bres": {"id": _INT, "ok": _BOOL, "value": _ANY, "error": (dict, type(None))},
}

#: Shape of the `error` map in `res` and `bres`.
ERROR_FIELDS: dict[str, Any] = {"type": _STR, "message": _STR, "kind": _STR, "retry_after": (int, float, type(None))}


_KEYS = {kind: frozenset({"t", *fields}) for schema in (FROM_WORKER, TO_WORKER) for kind, fields in schema.items()}


class ProtocolViolation(Exception):
    """A frame that is too large, not msgpack, or not a message of the protocol."""


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolViolation(f"msgpack extension type {code} is not allowed")


def new_packer() -> msgpack.Packer:
    """A reusable packer. `msgpack.packb` builds one (with a 256 KiB buffer) per call, which the hot path feels.

    A packer is not safe to share between threads: the host keeps one per worker (used on its event loop), the
    worker uses its one under its write lock.
    """
    return msgpack.Packer(use_bin_type=True, strict_types=False)


def encode(msg: dict[str, Any], packer: msgpack.Packer | None = None) -> bytes:
    """One frame (header and payload) for `msg`; ValueError when it exceeds MAX_FRAME."""
    if packer is None:
        payload = msgpack.packb(msg, use_bin_type=True, strict_types=False)
    else:
        payload = packer.pack(msg)
    size = len(payload)
    if size > MAX_FRAME:
        raise ValueError(f"message of {size} bytes exceeds the {MAX_FRAME // (1024 * 1024)} MiB frame limit")
    return size.to_bytes(HEADER_SIZE, "big") + payload


def frame_length(header: bytes) -> int:
    """The payload length a header announces; ProtocolViolation past MAX_FRAME."""
    size = int.from_bytes(header[:HEADER_SIZE], "big")
    if size > MAX_FRAME:
        raise ProtocolViolation(f"frame of {size} bytes exceeds the {MAX_FRAME // (1024 * 1024)} MiB limit")
    return size


class FrameReader:
    """Splits bytes read from a pipe, in whatever pieces they arrive, into frame payloads.

    Used on event loops (fed from non-blocking reads), so a frame arriving in several reads costs no waiting
    task. A header announcing more than MAX_FRAME is refused as soon as it is seen, so at most one frame is
    ever buffered.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def partial(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._buf)

    def want(self) -> int:
        """How many bytes to ask the next read for: the rest of the current frame, within [64 KiB, READ_SIZE]."""
        buf = self._buf
        if len(buf) < HEADER_SIZE:
            return 65536
        missing = HEADER_SIZE + int.from_bytes(buf[:HEADER_SIZE], "big") - len(buf)
        return min(max(missing, 65536), READ_SIZE)

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the frames `data` completes; ProtocolViolation for an oversized header.

        A read that holds exactly one whole frame (the usual case for requests and replies) costs one slice.
        """
        buf = self._buf
        if not buf and len(data) > HEADER_SIZE:
            size = int.from_bytes(data[:HEADER_SIZE], "big")
            if size == len(data) - HEADER_SIZE and size <= MAX_FRAME:
                return [data[HEADER_SIZE:]]
        if buf:
            buf += data
        out: list[bytes] = []
        pos = 0
        with memoryview(buf if buf else data) as view:  # released before the bytearray is resized below
            end = len(view)
            while end - pos >= HEADER_SIZE:
                size = int.from_bytes(view[pos:pos + HEADER_SIZE], "big")
                if size > MAX_FRAME:
                    raise ProtocolViolation(
                        f"frame of {size} bytes exceeds the {MAX_FRAME // (1024 * 1024)} MiB limit")
                stop = pos + HEADER_SIZE + size
                if stop > end:
                    break
                out.append(bytes(view[pos + HEADER_SIZE:stop]))
                pos = stop
            rest = None if buf or pos == end else bytes(view[pos:])
        if buf:
            del buf[:pos]
        elif rest is not None:
            buf += rest
        return out


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _check_map(value: dict[str, Any], depth: int) -> None:
    """Only plain values, string keys and at most MAX_DEPTH levels (msgpack yields exact types, no subclasses).

    Recursive (one call per nested map or list, none per scalar): about a third faster than a worklist on
    the small messages of the hot path, and MAX_DEPTH bounds the recursion.
    """
    scalars = _SCALARS
    for key, v in value.items():
        if type(key) is not str:
            raise ProtocolViolation("map keys must be strings")
        if type(v) not in scalars:
            _check_nested(v, depth)


def _check_list(value: list[Any], depth: int) -> None:
    """`_check_map` for a list's items."""
    scalars = _SCALARS
    for v in value:
        if type(v) not in scalars:
            _check_nested(v, depth)


def _check_nested(value: Any, depth: int) -> None:
    """A non-scalar inside a container at `depth`: a map or a list, not nested too deep; nothing else."""
    if depth + 1 >= MAX_DEPTH:
        raise ProtocolViolation(f"message nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind is dict:
        _check_map(value, depth + 1)
    elif kind is list:
        _check_list(value, depth + 1)
    else:
        raise ProtocolViolation(f"value of type {kind.__name__} is not allowed")


def _exact(types: Any) -> frozenset[type] | None:
    # msgpack yields exact types, so a set lookup replaces isinstance (and keeps bool out of int)
    return None if types is _ANY else frozenset(types)


#: Per message type: (key, exact types allowed) for every key whose type is fixed.
_CHECKS = {kind: tuple((k, _exact(t)) for k, t in fields.items() if t is not _ANY)
           for schema in (FROM_WORKER, TO_WORKER) for kind, fields in schema.items()}
_ERROR_CHECKS = tuple((k, frozenset(t)) for k, t in ERROR_FIELDS.items())
_ERROR_KEYS = frozenset(ERROR_FIELDS)
_unpackb = msgpack.unpackb


def decode(payload: bytes, schema: dict[str, dict[str, Any]], *, nested: bool = True) -> dict[str, Any]:
    """The message in `payload`, checked against `schema`; ProtocolViolation when it does not match.

    `nested=False` (the worker, reading its host) skips the walk over nested values (plain types, depth). That
    walk guards the host against a worker; a worker has nothing to guard from its own host, and the walk is
    about a tenth of the worker's path per call (3–5 µs). The type, keys and key types are still checked.
    """
    try:
        msg = _unpackb(payload, raw=False, strict_map_key=True, ext_hook=_reject_ext, use_list=True, timestamp=0)
    except ProtocolViolation:
        raise
    except Exception as exc:  # msgpack raises several types for garbage; all mean the same here
        raise ProtocolViolation(f"frame is not valid msgpack ({type(exc).__name__})") from None
    if type(msg) is not dict:
        raise ProtocolViolation(f"message is a {type(msg).__name__}, not a map")
    kind = msg.get("t")
    fields = schema.get(kind) if type(kind) is str else None
    if fields is None:
        raise ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")
    if msg.keys() != _KEYS[kind]:
        raise ProtocolViolation(f"message {kind!r} has keys {sorted(msg)}; expected {sorted(['t', *fields])}")
    for key, allowed in _CHECKS[kind]:
        if type(msg[key]) not in allowed:
            raise ProtocolViolation(f"message {kind!r}: {key} has type {type(msg[key]).__name__}")
    if nested:
        _check_map(msg, 0)
    error = msg.get("error")
    if error is not None:
        if error.keys() != _ERROR_KEYS or any(type(error[k]) not in t for k, t in _ERROR_CHECKS):
            raise ProtocolViolation(f"message {kind!r}: malformed error map")
    return msg


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to a blocking fd."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)[written:]
    while view:
        written = os.write(fd, view)
        view = view[written:]
