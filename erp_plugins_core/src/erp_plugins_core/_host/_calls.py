"""Dispatching hooks: call, first, and streams, with fallback in priority order."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .._context import current_user_context
from .._dispatch import (
    HookResult,
    Impl,
    StreamDeadline,
    bind_arguments,
    call_first,
    call_one,
    describe,
    finish_all,
    is_firstresult,
    open_stream,
    should_fall_back,
    start_all,
)
from .._errors import (
    AllPluginsFailed,
    StreamInterrupted,
    UnknownHookError,
)
from .._hookspecs import HOOKS, hook_info, hook_names
from .._state import validate_tenant
from ._support import (
    HostBase,
    _progress_cb,
)


class CallsMixin(HostBase):
    """Dispatching hooks: call, first, and streams, with fallback in priority order."""

    async def _impls(self, hook: str, tenant: str) -> list[Impl]:
        follower = self._follower
        if follower is not None and follower.stale and follower.due():
            await follower.catch_up()
        if hook not in HOOKS and self.catalog.hook(hook) is None:  # a core hook, or one a plugin provides
            raise UnknownHookError(f"no hook named {hook!r}; hooks: {', '.join(hook_names())}")
        if tenant not in self._started_tenants:
            validate_tenant(tenant)
            self._require_store()
            await self._ensure_tenant(tenant)
        disp = self._dispatchers.get(tenant)
        return disp.table(hook) if disp is not None else []

    async def call(
        self,
        hook: str,
        *,
        tenant: str,
        user_context: Mapping[str, Any] | None = None,
        progress: Callable[[str, int, int | None, str], None] | None = None,
        **kwargs: Any,
    ) -> list[HookResult]:
        """Call `hook` on every plugin active for `tenant` that implements it, concurrently.

        One HookResult per plugin; a plugin's exception, timeout or missing permission is its own result.
        """
        follower = self._follower
        if follower is not None and follower.stale and follower.due():
            await follower.catch_up()
        disp = self._dispatchers.get(tenant) if tenant in self._started_tenants and hook in HOOKS else None
        impls = disp.table(hook) if disp is not None else await self._impls(hook, tenant)
        args = bind_arguments(hook, kwargs)
        if not impls:
            return []
        # set only what the caller gave: a call made while handling another (an event) keeps its user
        t_user = current_user_context.set(dict(user_context)) if user_context is not None else None
        t_prog = _progress_cb.set(progress) if progress is not None else None
        try:
            if hook not in HOOKS and is_firstresult(hook):  # a provided firstresult hook: as `first`, in order
                results = await call_first(impls, hook, args)
            else:
                results, pending = start_all(impls, hook, args)
                if pending is not None:
                    await finish_all(pending, hook, results)
        finally:
            if t_user is not None:
                current_user_context.reset(t_user)
            if t_prog is not None:
                _progress_cb.reset(t_prog)
        for r in results:
            if not r.success:
                await self._check_gave_up(tenant, r.plugin)
        return results

    async def first(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """The first successful result, trying plugins in priority order (lower `--priority` first).

        Falls back to the next plugin on unavailable, timeout, rate limit, crash or missing permission;
        raises AllPluginsFailed naming every plugin's error otherwise or when all fail.
        """
        return (await self.first_result(hook, tenant=tenant, user_context=user_context, **kwargs)).result

    async def first_result(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None,
        plugin_type: str | None = None, **kwargs: Any
    ) -> HookResult:
        """As `first`, but the whole HookResult of the plugin that answered (its name, usage, duration).

        `plugin_type` (e.g. "ai_provider") limits it to plugins of that manifest type.
        """
        impls, args = await self._in_order(hook, tenant, plugin_type, kwargs)
        failures: list[HookResult] = []
        t_user = current_user_context.set(dict(user_context or {}))
        try:
            for impl in impls:
                result = await call_one(impl, hook, args)
                if result.success:
                    return result
                failures.append(result)
                await self._check_gave_up(tenant, result.plugin)
                if not should_fall_back(result.exception):
                    break
        finally:
            current_user_context.reset(t_user)
        raise self._all_failed(hook, tenant, failures)

    @staticmethod
    def _all_failed(hook: str, tenant: str, failures: list[HookResult]) -> AllPluginsFailed:
        if not failures:
            err = AllPluginsFailed(f"no plugin active for tenant {tenant!r} implements {hook}")
        else:
            err = AllPluginsFailed(
                f"{hook} failed for tenant {tenant!r}: " + "; ".join(f"{r.plugin}: {r.error}" for r in failures)
            )
        err.results = failures  # type: ignore[attr-defined]
        return err

    async def stream(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Chunks from the first plugin (in priority order) that starts streaming.

        A plugin that fails before its first chunk is skipped for the next; one that fails after it raises
        StreamInterrupted: its partial output is never continued with another plugin's text.
        """
        tagged = self.stream_tagged(hook, tenant=tenant, user_context=user_context, **kwargs)
        try:
            async for _plugin, chunk in tagged:
                yield chunk
        finally:
            await tagged.aclose()  # a consumer that stopped early stops the plugin's stream too

    async def _in_order(self, hook: str, tenant: str, plugin_type: str | None,
                        kwargs: dict[str, Any]) -> tuple[list[Impl], dict[str, Any]]:
        """The plugins `first` and streams try, in priority order (of one manifest type), and the bound arguments."""
        impls = await self._impls(hook, tenant)
        if plugin_type is not None:
            impls = self._of_type(impls, plugin_type)
        return impls, bind_arguments(hook, kwargs)

    def _of_type(self, impls: list[Impl], plugin_type: str) -> list[Impl]:
        """The implementations whose plugin's manifest says `plugin_type`."""
        out = []
        for impl in impls:
            rec = self.catalog.get(impl.plugin)
            if rec is not None and rec.manifest is not None and rec.manifest.plugin_type.value == plugin_type:
                out.append(impl)
        return out

    async def stream_tagged(
        self, hook: str, *, tenant: str, user_context: Mapping[str, Any] | None = None,
        plugin_type: str | None = None, **kwargs: Any
    ) -> AsyncIterator[tuple[str, Any]]:
        """As `stream`, each chunk with the name of the plugin that produced it: `(plugin, chunk)`.

        `plugin_type` (e.g. "ai_provider") limits it to plugins of that manifest type.
        """
        if (info := hook_info(hook)) is not None and not info.streaming:
            raise UnknownHookError(f"{hook} is not a streaming hook; use call() or first()")
        impls, args = await self._in_order(hook, tenant, plugin_type, kwargs)
        failures: list[HookResult] = []
        t_user = current_user_context.set(dict(user_context or {}))
        try:
            for impl in impls:
                if impl.denied is not None:
                    failures.append(HookResult(impl.plugin, False, error=impl.denied, error_kind="permission"))
                    continue
                start = time.perf_counter()
                try:
                    iterator, chunk = await open_stream(impl, hook, args)
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    failures.append(HookResult(impl.plugin, False, None, describe(exc, impl.redactor),
                                               time.perf_counter() - start, exception=exc))
                    if not should_fall_back(exc):
                        break
                    continue
                count = 0
                deadline = StreamDeadline(impl, hook)
                try:
                    while True:
                        yield impl.plugin, impl.redactor.redact(chunk)
                        count += 1
                        try:
                            chunk = await deadline.next(iterator)
                        except StopAsyncIteration:
                            return
                        except Exception as exc:
                            raise StreamInterrupted(
                                f"{impl.plugin} failed after {count} chunk(s) of {hook}: "
                                f"{describe(exc, impl.redactor)}; the partial answer is not continued by another plugin"
                            ) from exc
                finally:
                    deadline.close()
                    # the consumer stopped early or the stream ended: let the plugin (or its worker) stop too
                    aclose = getattr(iterator, "aclose", None)
                    if aclose is not None:
                        with contextlib.suppress(Exception):
                            await aclose()
        finally:
            current_user_context.reset(t_user)
        raise self._all_failed(hook, tenant, failures)


