"""Calls and streams to a worker: the hook proxies pluggy registers, requests, timeouts, results and errors.

The hot path: a warm hook call is one coroutine between the caller and the reply (`call_proxy` inlines
`_call`), and its timeout is the worker's shared watchdog rather than a timer per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

from .. import _errors
from .._context import current_usage, current_user_context
from .._discovery import PluginRecord
from .._errors import HookTimeout, PluginError, SandboxError
from .._hookspecs import hook_info
from .._manifest import Manifest
from .._redact import Redactor
from .._services import current_call_files
from ._process import STREAM_WINDOW, _Call, _End, _Expired, _Worker


class PluginRaised(PluginError):
    """A sandboxed plugin raised an exception that is not one of erp_plugins_core's; `remote_type` names it."""

    def __init__(self, remote_type: str, message: str) -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type



class WorkerProxy:
    """The part of `SandboxRunner` that sends calls and streams to its worker and turns replies into results."""

    record: PluginRecord
    tenant: str
    manifest: Manifest
    _worker: _Worker | None
    _failed: str | None
    _redactor: Redactor

    def hook_function(self, hook: str, method: str) -> Callable[..., Any]:
        info = hook_info(hook)  # a core hook, or one a plugin provides
        assert info is not None, hook
        sig = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in info.argnames]
        )
        runner = self
        names = tuple(info.argnames)
        name_set = frozenset(names)

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            # the two exact shapes callers use, without inspect's general binder (5% of a warm call)
            if not kwargs and len(args) == len(names):
                return dict(zip(names, args, strict=True))
            if not args and kwargs.keys() == name_set:
                return kwargs
            return dict(sig.bind(*args, **kwargs).arguments)

        if info.streaming:

            def stream_proxy(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                return runner._stream(hook, method, bind(args, kwargs), contextvars.copy_context())

            proxy: Callable[..., Any] = stream_proxy
        else:

            what = f"hook {hook}"

            async def call_proxy(*args: Any, **kwargs: Any) -> Any:
                # `_call` inlined: one coroutine between the caller and the reply
                seconds = runner.manifest.resources.timeout
                w = runner._worker
                if w is None or w.dead or runner._failed is not None:
                    w, seconds = await runner._restart_within(seconds, what)
                ctx = contextvars.copy_context()
                call = runner._begin(w, "hook", {"method": method, "kwargs": bind(args, kwargs)}, what, seconds, ctx)
                try:
                    msg = await call.future
                except (_Expired, asyncio.CancelledError) as exc:
                    await runner._abandon(w, exc, what, seconds)
                if w.template is not None:  # the first call of a worker forked from a template not taught yet
                    runner._teach(w)
                return runner._result(msg, what, ctx)

            proxy = call_proxy
        proxy.__signature__ = sig  # type: ignore[attr-defined]
        proxy.__name__ = f"{self.record.name}_{hook}"
        proxy.__qualname__ = proxy.__name__
        proxy.__doc__ = f"Sandboxed {self.record.name}.{method} for tenant {self.tenant} (hook {hook})."
        return proxy

    # --- calls --------------------------------------------------------------------------------------------

    async def _request(self, op: str, args: dict[str, Any], *, what: str, seconds: float,
                       ctx: contextvars.Context | None = None, touch: bool = True) -> Any:
        """`_call` on the running worker, started (or restarted) first if need be, all within `seconds`."""
        w = self._worker
        if w is None or w.dead or self._failed is not None:
            w, seconds = await self._restart_within(seconds, what)
        return await self._call(w, op, args, what=what, seconds=seconds, ctx=ctx, touch=touch)

    async def _call(self, w: _Worker | None, op: str, args: dict[str, Any], *, what: str, seconds: float,
                    ctx: contextvars.Context | None = None, touch: bool = True) -> Any:
        assert w is not None
        call = self._begin(w, op, args, what, seconds, ctx, touch)
        try:
            msg = await call.future
        except (_Expired, asyncio.CancelledError) as exc:
            await self._abandon(w, exc, what, seconds)
        return self._result(msg, what, ctx)

    def _begin(self, w: _Worker, op: str, args: dict[str, Any], what: str, seconds: float,
               ctx: contextvars.Context | None, touch: bool = True) -> _Call:
        """Send a request and arm its timeout; its reply resolves the returned call's future.

        Synchronous, so the hook proxy awaits the future itself: every coroutine level between a caller and
        the reply costs a warm round trip measurably. `touch=False` (health checks): its end is not use of the
        worker, so it keeps no idle worker alive.
        """
        user, files = self._call_scope(ctx)
        call = w.new_call(what, ctx, touch=touch)
        try:
            w.send({"t": "req", "id": call.id, "op": op, "args": args, "user": user, "files": files})
        except (ValueError, TypeError) as exc:
            w.calls.pop(call.id, None)
            raise SandboxError(f"plugin {self.record.name!r}: {what}: arguments cannot be sent: {exc}") from None
        w.watch(call, seconds)
        return call

    async def _abandon(self, w: _Worker, exc: BaseException, what: str, seconds: float) -> NoReturn:
        """A call timed out (`_Expired`) or was cancelled: kill its worker, wait until it is reaped, raise."""
        if isinstance(exc, _Expired):
            self._kill(w, f"{what} timed out after {seconds:g} s")
            await self._reap(w)
            raise HookTimeout(
                f"plugin {self.record.name!r}: {what} timed out after {seconds:g} s; its worker was killed and "
                "restarts on the next call"
            ) from None
        self._kill(w, f"{what} was cancelled")
        await self._reap(w)
        raise exc

    def _call_scope(self, ctx: contextvars.Context | None) -> tuple[dict[str, Any], list[str]]:
        if ctx is None:
            return {}, []
        user = ctx.get(current_user_context, {})
        files = sorted(ctx.get(current_call_files, frozenset()))
        return (dict(user) if isinstance(user, dict) else dict(user.items())), files

    def _result(self, msg: dict[str, Any], what: str, ctx: contextvars.Context | None) -> Any:
        usage = ctx.get(current_usage, None) if ctx is not None else None
        if usage is not None:
            for key, value in msg["usage"].items():
                if isinstance(value, int) and not isinstance(value, bool):
                    usage[key] = usage.get(key, 0) + value
        if msg["ok"]:
            return msg["value"]
        raise self._error(msg["error"], what)

    def _error(self, err: dict[str, Any], what: str) -> Exception:
        name, kind, typ = self.record.name, err["kind"], err["type"]
        message = self._redactor.redact(err["message"])
        if kind == "died":
            return SandboxError(message)
        if kind == "memory":
            return SandboxError(
                f"plugin {name!r}: {what} ran out of memory (MemoryError at its memory_limit "
                f"{self.manifest.resources.memory_limit})"
            )
        if kind == "access":
            return SandboxError(f"plugin {name!r}: {what} was refused access by the sandbox: {typ}: {message}")
        if kind == "plugin":
            cls = getattr(_errors, typ, None)
            if isinstance(cls, type) and issubclass(cls, PluginError):
                if cls is _errors.RateLimitError:
                    return _errors.RateLimitError(message, retry_after=err["retry_after"])
                try:
                    return cls(message)
                except TypeError:
                    pass
        return PluginRaised(typ, message)

    async def _stream(self, hook: str, method: str, kwargs: dict[str, Any],
                      ctx: contextvars.Context) -> AsyncIterator[Any]:
        timeout = self.manifest.resources.timeout
        what = f"hook {hook}"
        w = self._worker
        if w is None or w.dead or self._failed is not None:
            w, _ = await self._restart_within(timeout, what)
        user, files = self._call_scope(ctx)
        call = w.new_call(what, ctx, stream=True)
        assert call.queue is not None
        w.send({"t": "req", "id": call.id, "op": "stream", "user": user, "files": files,
                "args": {"method": method, "kwargs": kwargs, "window": STREAM_WINDOW}})
        finished = False
        consumed = 0
        queue = call.queue
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not queue:
                    waiter = call.waiter = loop.create_future()
                    w.watch(call, timeout)
                    try:
                        await waiter
                    except _Expired:
                        waiter = None
                    finally:
                        call.waiter = call.deadline = None
                    if waiter is not None:
                        continue
                    self._kill(w, f"{what} sent nothing for {timeout:g} s")
                    await self._reap(w)
                    finished = True
                    raise HookTimeout(
                        f"plugin {self.record.name!r}: {what} sent nothing for {timeout:g} s; its worker was "
                        "killed and restarts on the next call"
                    )
                item = queue.popleft()
                if isinstance(item, _End):
                    finished = True
                    self._result(item.msg, what, ctx)
                    return
                yield item
                consumed += 1
                if consumed >= STREAM_WINDOW // 2 and not w.dead:
                    call.credit += consumed
                    w.send({"t": "credit", "id": call.id, "n": consumed})
                    consumed = 0
        except asyncio.CancelledError:
            finished = True
            self._kill(w, f"{what} was cancelled")
            await self._reap(w)
            raise
        finally:
            if not finished and not w.dead:
                try:
                    w.send({"t": "cancel", "id": call.id})
                except SandboxError:
                    pass

