"""Calling hook implementations: argument binding, per-plugin timeouts, error isolation and usage, one
HookResult per plugin (the dispatch module on its own, with real functions and coroutines)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from erp_plugins_core._context import current_usage
from erp_plugins_core._dispatch import Impl, StreamDeadline, TenantDispatcher, bind_arguments, call_all, call_one
from erp_plugins_core._errors import HookTimeout
from erp_plugins_core._hookspecs import HOOKS
from erp_plugins_core._redact import Redactor
from erp_plugins_core._services import current_call_files

ARGS = {"prompt": "hello", "context": {"locale": "de-DE"}}


def impl(name: str, function: Any, *, timeout: float = 5.0, argnames: tuple[str, ...] = ("prompt", "context"),
         denied: str | None = None, secrets: tuple[str, ...] = ()) -> Impl:
    return Impl(name, function, argnames, timeout, 100, denied, Redactor(secrets),
                takes_all=len(argnames) == len(HOOKS["ai_request"].argnames))


def count(n: int) -> None:
    usage = current_usage.get()
    assert usage is not None
    usage["tokens"] = usage.get("tokens", 0) + n


# --- argument binding ---------------------------------------------------------------------------------------


def test_bind_gives_every_argument_and_fresh_defaults() -> None:
    first = bind_arguments("ai_request", {"prompt": "p"})
    assert first == {"prompt": "p", "context": {}}
    first["context"]["x"] = 1
    assert bind_arguments("ai_request", {"prompt": "p"}) == {"prompt": "p", "context": {}}
    given = {"prompt": "p", "context": {"a": 1}}
    assert bind_arguments("ai_request", given) is given  # complete and well typed: taken as it is


def test_bind_checks_names_not_just_the_count() -> None:
    with pytest.raises(TypeError, match="unknown argument"):
        bind_arguments("upload_file", {"file_path": "/x", "folder": None})  # folder_id may be None, but not absent


class _StrSubclass(str):
    pass


def test_bind_accepts_subclasses_of_the_accepted_types() -> None:
    bound = bind_arguments("ai_request", {"prompt": _StrSubclass("p"), "context": {}})
    assert type(bound["prompt"]) is _StrSubclass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": 1, "context": {}}, "hook ai_request argument prompt must be str, got int"),
        ({"prompt": "p", "context": []}, "hook ai_request argument context must be dict, got list"),
        ({"prompt": "p", "context": {}, "extra": 1}, "unknown argument(s): extra"),
        ({"context": {}}, "hook ai_request needs argument(s): prompt"),
        ({"texts": ["a", 2]}, "hook ai_embedding argument texts must be list of strings, got list"),
    ],
)
def test_bind_names_what_is_wrong(kwargs: dict[str, Any], message: str) -> None:
    hook = "ai_embedding" if "texts" in kwargs else "ai_request"
    with pytest.raises(TypeError) as info:
        bind_arguments(hook, kwargs)
    assert message in str(info.value)


# --- plain functions ----------------------------------------------------------------------------------------


async def test_plain_functions_each_get_a_result_in_order_with_usage_and_redaction() -> None:
    seen: list[dict[str, Any]] = []

    def echo(prompt: str, context: dict) -> str:
        seen.append({"prompt": prompt, "context": context})
        count(3)
        return f"{prompt} with key sk-secret-1"

    def only_prompt(prompt: str) -> dict:
        return {"len": len(prompt)}

    def broken(prompt: str, context: dict) -> str:
        raise ValueError("no luck with sk-secret-1")

    results = await call_all(
        [impl("a", echo, secrets=("sk-secret-1",)), impl("b", only_prompt, argnames=("prompt",)),
         impl("c", broken, secrets=("sk-secret-1",)), impl("d", echo, denied="permission 'ai.generate' missing")],
        "ai_request", bind_arguments("ai_request", ARGS),
    )
    assert [r.plugin for r in results] == ["a", "b", "c", "d"]
    assert results[0].success and results[0].result == "hello with key ***" and results[0].usage == {"tokens": 3}
    assert results[1].success and results[1].result == {"len": 5} and results[1].usage is None
    assert not results[2].success and results[2].error == "ValueError: no luck with ***"
    assert results[2].error_kind == "exception" and isinstance(results[2].exception, ValueError)
    assert results[3].error_kind == "permission" and results[3].error == "permission 'ai.generate' missing"
    assert seen == [{"prompt": "hello", "context": {"locale": "de-DE"}}]  # the denied one was not called
    assert current_usage.get() is None and current_call_files.get() == frozenset()


async def test_usage_belongs_to_the_plain_function_that_recorded_it() -> None:
    def records(n: int) -> Any:
        def run(prompt: str, context: dict) -> str:
            count(n)
            return prompt

        return run

    async def later(prompt: str, context: dict) -> str:
        count(7)
        await asyncio.sleep(0)
        return "later"

    def silent(prompt: str, context: dict) -> str:
        return prompt

    results = await call_all([impl("a", records(2)), impl("b", silent), impl("c", records(4)), impl("d", later),
                              impl("e", records(1)), impl("f", silent)], "ai_request", ARGS)
    assert [r.usage for r in results] == [{"tokens": 2}, None, {"tokens": 4}, {"tokens": 7}, {"tokens": 1}, None]


def test_dispatch_calls_positionally_only_when_the_signature_is_the_hooks() -> None:
    class Plugin:
        def exact(self, prompt: str, context: dict) -> str:
            return f"{prompt}|{context}"

        def swapped(self, context: dict, prompt: str) -> str:
            return f"{prompt}|{context}"

        def extra(self, prompt: str, context: dict, more: int = 1) -> str:
            return f"{prompt}|{context}"

        def keywords(self, *, prompt: str, context: dict) -> str:
            return f"{prompt}|{context}"

    plugin = Plugin()
    disp = TenantDispatcher("acme")
    for name in ("exact", "swapped", "extra", "keywords"):
        disp.register(name, {"ai_request": getattr(plugin, name)}, priority=100, timeout=5.0,
                      granted=frozenset({"ai.generate"}), redactor=Redactor())
    table = {i.plugin: i for i in disp.table("ai_request")}
    assert {name: i.positional for name, i in table.items()} == {
        "exact": True, "swapped": False, "extra": False, "keywords": False}
    results = asyncio.run(call_all(list(table.values()), "ai_request", bind_arguments("ai_request", dict(ARGS))))
    assert {r.plugin: r.result for r in results} == dict.fromkeys(table, "hello|{'locale': 'de-DE'}")


async def test_a_plain_function_returning_an_awaitable_or_a_stream_is_awaited() -> None:
    async def later() -> str:
        await asyncio.sleep(0)
        return "later"

    async def chunks():
        for c in ("a", "b", "c"):
            yield c

    results = await call_all([impl("a", lambda prompt, context: later()), impl("b", lambda prompt, context: chunks())],
                             "ai_request", ARGS)
    assert [(r.success, r.result) for r in results] == [(True, "later"), (True, "abc")]


# --- async implementations ----------------------------------------------------------------------------------


async def test_async_plugins_run_concurrently_with_their_own_usage() -> None:
    async def slow(prompt: str, context: dict) -> str:
        count(1)
        await asyncio.sleep(1.0)
        count(1)
        return prompt.upper()

    async def fast(prompt: str, context: dict) -> str:
        count(5)
        return prompt

    start = time.perf_counter()
    results = await call_all([impl(f"s{i}", slow) for i in range(5)] + [impl("f", fast)], "ai_request", ARGS)
    elapsed = time.perf_counter() - start
    # one after another would take 5 s; margins are wide so a loaded machine cannot fail this
    assert elapsed < 3.0, f"the five slow plugins did not run concurrently ({elapsed:.2f} s)"
    assert [(r.success, r.result, r.usage) for r in results] == [(True, "HELLO", {"tokens": 2})] * 5 + [
        (True, "hello", {"tokens": 5})
    ]
    assert all(0.9 < r.duration_s < 3.0 for r in results[:5])
    assert results[5].duration_s < 0.9  # its own end, not the slowest plugin's


async def test_each_plugin_has_its_own_timeout_and_a_timed_out_one_is_cancelled() -> None:
    cancelled: list[str] = []

    def sleeper(name: str, seconds: float) -> Any:
        async def run(prompt: str, context: dict) -> str:
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise
            return name

        return run

    async def fails(prompt: str, context: dict) -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    start = time.perf_counter()
    results = await call_all(
        [impl("short", sleeper("short", 5), timeout=0.1), impl("ok", sleeper("ok", 0.5), timeout=3.0),
         impl("long", sleeper("long", 5), timeout=1.5), impl("err", fails)],
        "ai_request", ARGS,
    )
    elapsed = time.perf_counter() - start
    by = {r.plugin: r for r in results}
    assert [r.plugin for r in results] == ["short", "ok", "long", "err"]
    assert by["short"].error_kind == "timeout" and "within 0.1s" in (by["short"].error or "")
    assert 0.08 < by["short"].duration_s < 1.2  # cancelled at its own deadline, not at the longest (1.5 s)
    assert by["ok"].success and by["ok"].result == "ok"
    assert by["long"].error_kind == "timeout" and "within 1.5s" in (by["long"].error or "")
    assert by["err"].error == "RuntimeError: boom"
    assert sorted(cancelled) == ["long", "short"]
    assert 1.4 < elapsed < 4.5


async def test_cancelling_the_caller_cancels_every_running_plugin() -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    def waiter(i: int) -> Any:
        async def run(prompt: str, context: dict) -> str:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(i)
                raise
            return "never"

        return run

    call = asyncio.ensure_future(call_all([impl(str(i), waiter(i)) for i in range(3)], "ai_request", ARGS))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0)
    assert sorted(cancelled) == [0, 1, 2]


async def test_a_self_timed_implementation_is_left_to_time_itself() -> None:
    async def slow(prompt: str, context: dict) -> str:
        await asyncio.sleep(0.2)
        return "done"

    timed = impl("proxy", slow, timeout=0.05)
    timed.self_timed = True  # as a sandbox proxy is: it enforces the timeout (and kills its worker) itself
    assert (await call_one(timed, "ai_request", ARGS)).result == "done"
    assert (await call_one(impl("plain", slow, timeout=0.05), "ai_request", ARGS)).error_kind == "timeout"


async def test_one_async_plugin_times_out_in_the_callers_task() -> None:
    async def hang(prompt: str, context: dict) -> str:
        await asyncio.sleep(5)
        return "late"

    result = await call_one(impl("hang", hang, timeout=0.05), "ai_request", ARGS)
    assert result.error_kind == "timeout" and not result.success


# --- stream idle deadline -----------------------------------------------------------------------------------


async def _chunks(delays: list[float]):
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield i


async def _consume(deadline: StreamDeadline, iterator: Any, pause: float = 0.0) -> list[int]:
    got = []
    try:
        while True:
            got.append(await deadline.next(iterator))
            await asyncio.sleep(pause)
    except StopAsyncIteration:
        return got
    finally:
        deadline.close()


async def test_stream_deadline_is_per_chunk_not_for_the_whole_stream() -> None:
    deadline = StreamDeadline(impl("s", None, timeout=0.3), "ai_stream")
    assert await _consume(deadline, _chunks([0.1] * 6)) == list(range(6))  # 0.6 s in all, 0.1 s per chunk


async def test_stream_deadline_ignores_the_consumers_own_time() -> None:
    deadline = StreamDeadline(impl("s", None, timeout=0.2), "ai_stream")
    assert await _consume(deadline, _chunks([0.0] * 3), pause=0.35) == [0, 1, 2]


async def test_stream_deadline_times_out_a_stalled_chunk_and_cancels_it() -> None:
    cancelled = asyncio.Event()

    async def stalls():
        yield 0
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield 1

    deadline = StreamDeadline(impl("stall", None, timeout=0.2), "ai_stream")
    iterator = stalls()
    start = time.perf_counter()
    assert await deadline.next(iterator) == 0
    with pytest.raises(HookTimeout, match="stall did not answer ai_stream within 0.2s"):
        await deadline.next(iterator)
    assert 0.15 < time.perf_counter() - start < 3.0 and cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    deadline.close()


async def test_stream_deadline_leaves_an_outside_cancellation_alone() -> None:
    deadline = StreamDeadline(impl("s", None, timeout=5.0), "ai_stream")
    task = asyncio.ensure_future(_consume(deadline, _chunks([0.0, 10.0])))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
