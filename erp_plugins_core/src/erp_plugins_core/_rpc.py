"""The pipe protocol between the host and a sandboxed worker: length-prefixed msgpack frames, validated.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack encoding one map. Nothing is
ever unpickled; only plain values (None, bool, int, float, str, bytes, list, str-keyed map) cross, and every
message must have exactly the keys its type defines. The host treats anything else from a worker as a
protocol violation and kills the worker.

This module is imported by the worker too (loaded by file path, before the package), so it uses only the
standard library and msgpack.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import msgpack

#: Largest frame either side accepts (arguments, results and stream chunks must fit in one frame).
MAX_FRAME = 32 * 1024 * 1024
#: Deepest nesting of lists and maps accepted in a message.
MAX_DEPTH = 64
#: Largest chunk the files bridge moves per request.
MAX_READ = 4 * 1024 * 1024

HEADER = struct.Struct(">I")

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


class ProtocolViolation(Exception):
    """A frame that is too large, not msgpack, or not a message of the protocol."""


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolViolation(f"msgpack extension type {code} is not allowed")


def encode(msg: dict[str, Any]) -> bytes:
    """One frame (header and payload) for `msg`; ValueError when it exceeds MAX_FRAME."""
    payload = msgpack.packb(msg, use_bin_type=True, strict_types=False)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"message of {len(payload)} bytes exceeds the {MAX_FRAME // (1024 * 1024)} MiB frame limit")
    return HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    """The payload length a header announces; ProtocolViolation past MAX_FRAME."""
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolViolation(f"frame of {size} bytes exceeds the {MAX_FRAME // (1024 * 1024)} MiB limit")
    return size


def _check_plain(value: Any) -> None:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtocolViolation(f"message nested deeper than {MAX_DEPTH} levels")
        if item is None or isinstance(item, (bool, int, float, str, bytes)):
            continue
        if isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise ProtocolViolation("map keys must be strings")
                stack.append((v, depth + 1))
        else:
            raise ProtocolViolation(f"value of type {type(item).__name__} is not allowed")


def decode(payload: bytes, schema: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The message in `payload`, checked against `schema`; ProtocolViolation when it does not match."""
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_reject_ext, use_list=True, timestamp=0)
    except ProtocolViolation:
        raise
    except Exception as exc:  # msgpack raises several types for garbage; all mean the same here
        raise ProtocolViolation(f"frame is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolViolation(f"message is a {type(msg).__name__}, not a map")
    kind = msg.get("t")
    fields = schema.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolViolation(f"unknown message type {str(kind)[:40]!r}")
    if set(msg) != {"t", *fields}:
        raise ProtocolViolation(f"message {kind!r} has keys {sorted(msg)}; expected {sorted(['t', *fields])}")
    for key, types in fields.items():
        value = msg[key]
        if types is not _ANY and (not isinstance(value, types) or (types is _INT and isinstance(value, bool))):
            raise ProtocolViolation(f"message {kind!r}: {key} has type {type(value).__name__}")
    _check_plain(msg)
    error = msg.get("error")
    if isinstance(error, dict):
        if set(error) != set(ERROR_FIELDS) or not all(isinstance(error[k], t) for k, t in ERROR_FIELDS.items()):
            raise ProtocolViolation(f"message {kind!r}: malformed error map")
    return msg


def read_frame_blocking(fd: int) -> bytes | None:
    """The next frame's payload from a blocking fd, or None at end of file."""
    header = _read_exactly(fd, HEADER.size)
    if header is None:
        return None
    size = frame_length(header)
    payload = _read_exactly(fd, size)
    if payload is None:
        raise ProtocolViolation("pipe closed in the middle of a frame")
    return payload


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1024 * 1024))
        if not chunk:
            if remaining == size:
                return None
            raise ProtocolViolation("pipe closed in the middle of a frame")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to a blocking fd."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
