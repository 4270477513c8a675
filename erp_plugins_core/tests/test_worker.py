"""The worker's call handling, in process: eager start on Python 3.11, current task, cancellation, contexts.

The worker normally runs sandboxed (see test_sandbox.py); here its `Worker` runs on the test's event loop
with `send` captured, so the order of events around a call's first step can be checked exactly.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import msgpack
import pytest
import sniffio

from erp_plugins_core import _rpc, _worker

probe: contextvars.ContextVar[str] = contextvars.ContextVar("probe", default="unset")


class Plugin:
    """Hook methods that record what they see."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.release = asyncio.Event()

    async def quick(self) -> str:
        self.seen.append(asyncio.current_task())
        return "quick"

    async def suspends(self) -> bool:
        first = asyncio.current_task()
        self.seen.append(sniffio.current_async_library())
        await asyncio.sleep(0)
        return first is not None and first is asyncio.current_task()

    async def waits(self) -> str:
        await self.release.wait()
        return "released"

    async def sets(self, value: str) -> str:
        before = probe.get()
        probe.set(value)
        await asyncio.sleep(0)
        return f"{before}->{probe.get()}"

    def plain(self) -> int:
        return 7


@pytest.fixture(params=["emulated", "native"] if sys.version_info >= (3, 12) else ["emulated"])
async def worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> _worker.Worker:
    """A Worker on the running loop with a loaded Plugin; `worker.sent` collects its replies."""
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(_worker, "rpc", _rpc)
    monkeypatch.setattr(_worker, "send", sent.append)
    w = _worker.Worker(asyncio.get_running_loop())
    if request.param == "emulated":
        w.eager = False  # the Python 3.11 emulation, on any version
    w.instance = Plugin()
    w.sent = sent  # type: ignore[attr-defined]
    return w


async def start(worker: _worker.Worker, *msgs: dict[str, Any]) -> list[dict[str, Any]]:
    """Start calls from a loop callback, as the worker's pipe reader does; the replies sent by then."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[dict[str, Any]]] = loop.create_future()

    def callback() -> None:
        for msg in msgs:
            worker.start_call(msg)
        done.set_result(list(worker.sent))

    loop.call_soon(callback)
    return await done


def req(call: int, method: str, **kwargs: Any) -> dict[str, Any]:
    return {"t": "req", "id": call, "op": "hook", "user": {}, "files": [],
            "args": {"method": method, "kwargs": kwargs}}


async def test_a_call_that_does_not_suspend_replies_at_once_from_a_current_task(worker: _worker.Worker) -> None:
    # the reply was sent before the callback that started the call returned
    reply = {"t": "res", "id": 1, "ok": True, "value": "quick", "usage": {}, "error": None}
    assert await start(worker, req(1, "quick")) == [reply]
    assert worker.tasks == {}
    (task,) = worker.instance.seen
    assert isinstance(task, asyncio.Task)
    assert asyncio.current_task() is not task  # entered for the first step only
    await task  # the Task ends without running the call again
    assert len(worker.sent) == 1


async def test_a_plain_function_hook_replies_at_once(worker: _worker.Worker) -> None:
    assert (await start(worker, req(1, "plain")))[0]["value"] == 7


async def test_a_call_that_suspends_keeps_its_task(worker: _worker.Worker) -> None:
    assert await start(worker, req(2, "suspends")) == []
    task = worker.tasks[2]
    await task
    assert worker.sent == [{"t": "res", "id": 2, "ok": True, "value": True, "usage": {}, "error": None}]
    assert worker.instance.seen == ["asyncio"]  # sniffio found the Task before the first suspension
    assert worker.tasks == {}


async def test_cancel_before_the_tasks_first_step_reaches_the_call(worker: _worker.Worker) -> None:
    loop = asyncio.get_running_loop()
    started: asyncio.Future[asyncio.Task[Any]] = loop.create_future()

    def callback() -> None:  # a request and its cancel in one batch: the Task has not run yet
        worker.start_call(req(3, "waits"))
        started.set_result(worker.tasks[3])
        worker.cancel_call(3)

    loop.call_soon(callback)
    task = await started
    await asyncio.wait([task])
    (reply,) = worker.sent
    assert reply["ok"] is False and reply["error"]["kind"] == "cancelled"
    assert worker.tasks == {}


async def test_cancel_after_the_task_took_over(worker: _worker.Worker) -> None:
    await start(worker, req(4, "waits"))
    task = worker.tasks[4]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    worker.cancel_call(4)
    await asyncio.wait([task])
    assert worker.sent[0]["error"]["kind"] == "cancelled"


async def test_a_released_call_finishes_in_its_task(worker: _worker.Worker) -> None:
    await start(worker, req(5, "waits"))
    task = worker.tasks[5]
    worker.instance.release.set()
    await task
    assert worker.sent[0]["value"] == "released"


async def test_each_call_has_its_own_context(worker: _worker.Worker) -> None:
    probe.set("caller")
    await start(worker, req(6, "sets", value="a"), req(7, "sets", value="b"))
    assert probe.get() == "caller"  # the first steps ran in the calls' own contexts
    await asyncio.gather(worker.tasks[6], worker.tasks[7])
    assert sorted(m["value"] for m in worker.sent) == ["caller->a", "caller->b"]


async def test_an_error_in_the_first_step_is_the_calls_error(worker: _worker.Worker) -> None:
    (reply,) = await start(worker, req(8, "missing_method"))
    assert reply["ok"] is False and reply["error"]["type"] == "AttributeError"


async def test_a_reply_that_cannot_be_sent_fails_the_task(worker: _worker.Worker, monkeypatch) -> None:
    def broken(msg: dict[str, Any]) -> None:
        raise BrokenPipeError("host went away")

    monkeypatch.setattr(_worker, "send", broken)
    await start(worker, req(9, "quick"))
    (task,) = worker.instance.seen
    with pytest.raises(BrokenPipeError):
        await task


async def test_a_call_started_inside_a_task_runs_in_its_own(worker: _worker.Worker) -> None:
    worker.start_call(req(10, "suspends"))  # not from a loop callback: no eager step
    assert worker.sent == []
    await worker.tasks[10]
    assert worker.sent[0]["value"] is True


# --- the protocol's checks -----------------------------------------------------------------------------


def test_decode_checks_every_level() -> None:
    def message(value: Any) -> bytes:
        return msgpack.packb({"t": "chunk", "id": 1, "value": value}, use_bin_type=True)

    ok: Any = [None, True, 1, 1.5, "s", b"b", {"k": [{"j": []}]}]
    assert _rpc.decode(message(ok), _rpc.FROM_WORKER)["value"] == ok
    deep: Any = "x"
    for i in range(_rpc.MAX_DEPTH + 1):
        deep = [deep] if i % 2 else {"k": deep}
    for bad, match in [
        ({b"bytes-key": 1}, "map keys must be strings"),
        ([{"k": {b"nested-bytes-key": 1}}], "map keys must be strings"),
        ([1, msgpack.Timestamp(0, 0)], "Timestamp is not allowed"),
        (deep, "nested deeper"),
    ]:
        with pytest.raises(_rpc.ProtocolViolation, match=match):
            _rpc.decode(message(bad), _rpc.FROM_WORKER)


def test_frame_reader_splits_frames_however_they_arrive() -> None:
    frames = [_rpc.encode({"t": "cancel", "id": i}) for i in range(3)]
    data = b"".join(frames)
    for cut in range(len(data) + 1):
        reader = _rpc.FrameReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == [f[4:] for f in frames]
        assert not reader.partial
    reader = _rpc.FrameReader()
    assert reader.feed(frames[0]) == [frames[0][4:]]  # one whole frame
    with pytest.raises(_rpc.ProtocolViolation, match="exceeds"):
        _rpc.FrameReader().feed((_rpc.MAX_FRAME + 1).to_bytes(4, "big") + b"x")
