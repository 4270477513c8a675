"""Dispatch: one tenant's hook implementations, registered with pluggy and called concurrently, each isolated.

pluggy holds the specs and validates every implementation against them (argument names, `specname` from
the manifest). Calling is ours: raw pluggy runs implementations one after another and stops at the first
exception; here every implementation runs concurrently under its plugin's `resources.timeout`, and each
one's outcome becomes a `HookResult`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ._arguments import POSITIONAL, info_of, positional
from ._arguments import bind_arguments as bind_arguments  # re-exported: callers bind through dispatch
from ._context import current_usage
from ._errors import HookTimeout, PermissionDenied, PluginError, ProviderError, SandboxError
from ._hookspecs import HOOKS, PROJECT, HookSpecs, hook_info, provided_specs
from ._redact import Redactor
from ._results import RESULT_CHECKS, check_results
from ._services import allowed_files, current_call_files

_perf = time.perf_counter


@dataclass(slots=True)
class HookResult:
    """One plugin's outcome of one hook call."""

    plugin: str
    success: bool
    result: Any = None
    error: str | None = None
    duration_s: float = 0.0
    error_kind: str | None = None  # timeout, permission, provider kinds (rate_limit, ...), exception, sandbox
    usage: dict[str, int] | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON shape of the contract (`call --json`), with the extra keys."""
        return {
            "plugin": self.plugin,
            "success": self.success,
            "result": self.result,
            "error": self.error,
            "duration_s": round(self.duration_s, 6),
            "error_kind": self.error_kind,
            "usage": self.usage,
        }


@dataclass(slots=True)
class Impl:
    """One plugin's implementation of one hook for one tenant, with what dispatch needs to call it."""

    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    timeout: float
    priority: int
    denied: str | None  # why the tenant may not call it (missing permission), else None
    redactor: Redactor
    takes_all: bool = False  # takes every argument of the hook, so bound arguments are passed as they are
    positional: bool = False  # takes exactly the hook's arguments, positionally in spec order (the fast call)
    self_timed: bool = False  # enforces `timeout` itself (a sandbox proxy): a lone call needs no timer of ours


def error_kind(exc: BaseException) -> str:
    """A short machine-readable name for what went wrong."""
    if isinstance(exc, (HookTimeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, PermissionDenied):
        return "permission"
    if isinstance(exc, ProviderError):
        return exc.kind
    if isinstance(exc, SandboxError):
        return "sandbox"
    return "exception"


def describe(exc: BaseException, redactor: Redactor) -> str:
    """One line naming what went wrong, secrets redacted."""
    if isinstance(exc, PluginError):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return redactor.text(" ".join(text.split()))


def should_fall_back(exc: BaseException | None) -> bool:
    """Whether `first`/`stream` try the next plugin after `exc`.

    A provider's verdict on the request itself (bad key, bad request, unknown model) would be the same
    elsewhere or needs the administrator; everything else (unavailable, timeout, rate limit, a crash, a
    missing permission) moves on to the next plugin.
    """
    if isinstance(exc, ProviderError):
        return exc.fallback
    return True


class _Manager(pluggy.PluginManager):
    """A PluginManager that takes hook implementations from manifest entries instead of decorators."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        specnames: Mapping[str, str] = getattr(plugin, "_erp_specnames", {})
        if name not in specnames:
            return None
        method = getattr(plugin, name)
        opts: dict[str, Any] = dict(getattr(method, f"{PROJECT}_impl", None) or {})
        opts["specname"] = specnames[name]
        return opts  # type: ignore[return-value]


class _Adapter:
    """The object registered with pluggy for one plugin instance: one attribute per manifest hook."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self._erp_specnames = {f"impl_{hook}": hook for hook in functions}
        for hook, fn in functions.items():
            setattr(self, f"impl_{hook}", fn)


def _call_names(function: Callable[..., Any], hook: str) -> tuple[tuple[str, ...], bool]:
    """The hook arguments `function` takes by name (all of them when it takes **kwargs), and whether its
    parameters are exactly the hook's arguments in spec order, so it can be called positionally as pluggy does
    (a keyword call costs several times more).

    Read with `inspect.signature`, which honours a proxy's `__signature__` (pluggy 1.7 no longer does).
    """
    spec = info_of(hook).argnames
    params = list(inspect.signature(function).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return spec, False
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    positional = tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD) == spec and len(params) == len(spec)
    return tuple(a for a in spec if a in named), positional


class TenantDispatcher:
    """The hooks of one tenant's active plugins."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self._pm = _Manager(PROJECT)
        self._pm.add_hookspecs(HookSpecs)
        self._meta: dict[str, tuple[int, float, frozenset[str], Redactor, bool]] = {}
        self._tables: dict[str, list[Impl]] = {}
        self._provided: set[str] = set()  # plugins' own hooks whose specs were added

    def _add_provided_specs(self, plugin: str, hooks: list[str]) -> None:
        """Add the specs of the plugins' own hooks `hooks` use (pluggy's add_hookspecs, from manifests alone)."""
        infos = []
        for hook in hooks:
            if hook in HOOKS or hook in self._provided:
                continue
            info = hook_info(hook)
            if info is None:
                raise PluginError(f"plugin {plugin!r}: hook {hook!r} is neither a core hook nor provided by an "
                                  "installed plugin (provides_hooks)")
            infos.append(info)
        if infos:
            self._pm.add_hookspecs(provided_specs(infos))
            self._provided.update(i.name for i in infos)

    def register(
        self,
        plugin: str,
        functions: Mapping[str, Callable[..., Any]],
        *,
        priority: int,
        timeout: float,
        granted: frozenset[str],
        redactor: Redactor,
        self_timed: bool = False,
    ) -> None:
        """Add a plugin's hook functions (hook name → callable); pluggy validates them against the specs.

        `self_timed`: the functions enforce `timeout` themselves (see `PluginRunner.times_its_calls`).
        """
        self.unregister(plugin)
        self._add_provided_specs(plugin, list(functions))
        try:
            self._pm.register(_Adapter(functions), name=plugin)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {plugin!r}: {exc}") from None
        self._meta[plugin] = (priority, timeout, granted, redactor, self_timed)
        self._tables.clear()

    def unregister(self, plugin: str) -> None:
        """Remove a plugin's hooks (no-op when absent)."""
        if self._pm.get_plugin(plugin) is not None:
            self._pm.unregister(name=plugin)
        self._meta.pop(plugin, None)
        self._tables.clear()

    def plugins(self) -> list[str]:
        return list(self._meta)

    def table(self, hook: str) -> list[Impl]:
        """The implementations of `hook`, in priority order (lower first), built once per registration change."""
        table = self._tables.get(hook)
        if table is not None:
            return table
        caller = getattr(self._pm.hook, hook, None)
        if caller is None:  # a provided hook no active plugin of this tenant implements
            return []
        info = info_of(hook)
        permission = info.permission
        impls = []
        # pluggy calls the last registered first; keep that order among equal priorities
        for order, hi in enumerate(reversed(caller.get_hookimpls())):
            priority, timeout, granted, redactor, self_timed = self._meta[hi.plugin_name]
            denied = None
            if permission is not None and permission not in granted:
                denied = (
                    f"permission {permission!r} is not granted to {hi.plugin_name} for tenant {self.tenant!r}; "
                    f"grant it with: erp-plugins enable {hi.plugin_name} --tenant {self.tenant} --grant {permission}"
                )
            names, positional = _call_names(hi.function, hook)
            impls.append(
                (priority, order, Impl(hi.plugin_name, hi.function, names, timeout, priority, denied, redactor,
                                       takes_all=len(names) == len(info.argnames), positional=positional,
                                       self_timed=self_timed))
            )
        table = [i for _, _, i in sorted(impls, key=lambda t: (t[0], t[1]))]
        self._tables[hook] = table
        return table


# --- Calling --------------------------------------------------------------------------------------------


def _failure(impl: Impl, exc: BaseException, start: float) -> HookResult:
    return HookResult(impl.plugin, False, None, describe(exc, impl.redactor), _perf() - start, error_kind(exc),
                      None, exc)


def _denied(impl: Impl) -> HookResult:
    return HookResult(impl.plugin, False, None, impl.denied, 0.0, "permission", None,
                      PermissionDenied(impl.denied or ""))


def _timeout_error(impl: Impl, hook: str) -> HookTimeout:
    return HookTimeout(
        f"{impl.plugin} did not answer {hook} within {impl.timeout:g}s (its resources.timeout); the call was cancelled"
    )


def _kwargs(impl: Impl, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The bound hook arguments `impl` takes (all of them, as they are, when it takes every one)."""
    if impl.takes_all and len(kwargs) == len(impl.argnames):
        return kwargs
    return {k: kwargs[k] for k in impl.argnames if k in kwargs}


async def _finish(impl: Impl, hook: str, awaitable: Any, usage: dict[str, int], start: float) -> HookResult:
    """Await one async implementation under its plugin's timeout, in the caller's task."""
    current_usage.set(usage)
    try:
        if impl.self_timed:
            out = await awaitable
        else:
            async with asyncio.timeout(impl.timeout):
                out = await awaitable
    except TimeoutError:
        return _failure(impl, _timeout_error(impl, hook), start)
    except Exception as exc:
        return _failure(impl, exc, start)
    return HookResult(impl.plugin, True, impl.redactor.redact(out), None, _perf() - start, None, usage or None)


async def _drain(stream: Any) -> Any:
    """All chunks of a stream: joined when they are strings, else as a list."""
    chunks = [chunk async for chunk in stream]
    return "".join(chunks) if all(isinstance(c, str) for c in chunks) else chunks


#: Result types that are certainly not awaitable or streams, so the common plain result skips those checks.
_PLAIN_RESULTS = frozenset({str, dict, list, tuple, int, float, bool, bytes, type(None)})


def _pending(out: Any) -> Any:
    """What is left to await of a plugin's return value: its awaitable, a stream's joined chunks, or None."""
    if inspect.isawaitable(out):
        return out
    if hasattr(out, "__aiter__"):  # a streaming hook called through call(): its chunks joined
        return _drain(out)
    return None


async def _gather(waiting: list[tuple[int, Impl, Any, dict[str, int], float]], hook: str,
                  results: list[HookResult | None]) -> None:
    """Await several implementations concurrently, each in its own task and under its own timeout.

    Instead of a wrapper task and a timeout context per plugin, the plugins' own tasks report to one
    waiter, which a timer also wakes at the next plugin's deadline (once in all when they share a timeout). A
    plugin past its deadline has its task cancelled, which cancels what it awaits (a sandboxed proxy's
    worker call), and gets a timeout result.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tasks: list[asyncio.Future[Any]] = []
    ends: dict[asyncio.Future[Any], float] = {}  # when each task finished (its duration's end)

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def finished(task: asyncio.Future[Any]) -> None:
        ends[task] = _perf()
        if len(ends) == len(tasks):
            wake()

    now = loop.time()
    deadlines = [now + impl.timeout for _, impl, _, _, _ in waiting]
    for _, _, awaitable, usage, _ in waiting:
        current_usage.set(usage)  # the task copies the context: each plugin counts its own usage
        task = loop.create_task(awaitable) if inspect.iscoroutine(awaitable) else asyncio.ensure_future(awaitable)
        tasks.append(task)
    for task in tasks:
        task.add_done_callback(finished)
    timed_out: set[int] = set()
    try:
        while len(ends) < len(tasks):
            now = loop.time()
            live: list[float] = []
            for j, task in enumerate(tasks):
                if task.done() or j in timed_out:
                    continue
                if deadlines[j] <= now:
                    task.cancel()
                    timed_out.add(j)
                else:
                    live.append(deadlines[j])
            # a timer at the next deadline rather than asyncio.wait's own future, callbacks and timeout
            timer = loop.call_at(min(live), wake) if live else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
            waiter = loop.create_future()
    except BaseException:  # the caller was cancelled: so is every plugin still running
        for task in tasks:
            task.cancel()
        raise
    for j, ((i, impl, _, usage, start), task) in enumerate(zip(waiting, tasks, strict=True)):
        if task.cancelled():
            if j not in timed_out:  # not our doing (the plugin cancelled itself): pass it on, as awaiting it would
                raise asyncio.CancelledError
            result = _failure(impl, _timeout_error(impl, hook), start)
        elif (exc := task.exception()) is not None:
            result = _failure(impl, exc, start)
        else:
            result = HookResult(impl.plugin, True, impl.redactor.redact(task.result()), None, 0.0, None,
                                usage or None)
        result.duration_s = ends[task] - start
        results[i] = result


def _call_files(hook: str, kwargs: dict[str, Any]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for a in info_of(hook).file_args:
        out |= allowed_files(kwargs.get(a))
    return out


_NO_FILES: frozenset[str] = frozenset()

#: The hooks that take file paths (their files become the call's allowed files).
_FILE_HOOKS = frozenset(hook for hook, info in HOOKS.items() if info.file_args)


@dataclass(slots=True)
class Pending:
    """The async implementations `start_all` started, for `finish_all` to await."""

    waiting: list[tuple[int, Impl, Any, dict[str, int], float]]  # (result index, impl, awaitable, usage, start)
    files: frozenset[str]


def start_all(impls: list[Impl], hook: str, kwargs: dict[str, Any]) -> tuple[list[HookResult | None], Pending | None]:
    """Call every implementation: plain ones run to completion, async ones are started. `kwargs` are bound.

    Returns the results in `impls` order, None where an async implementation is still running, and what
    `finish_all` must await (None when nothing is). Split from the awaiting so that a call whose plugins are all
    plain costs no coroutine of its own. Plain functions of trusted in-process plugins cannot be interrupted by
    a timeout; sandboxed plugins' functions are always async proxies, so their timeout always holds.

    This is the hot path: a positional call where the signature allows it, one clock reading per plugin (a
    duration runs from the end of the previous plugin's call), and one usage dict for the call, replaced only
    after a plugin recorded usage into it or kept it for its async part.
    """
    files = _call_files(hook, kwargs) if hook in _FILE_HOOKS else _NO_FILES
    results: list[HookResult | None] = []
    waiting: list[tuple[int, Impl, Any, dict[str, int], float]] = []
    usage: dict[str, int] = {}
    t_usage = current_usage.set(usage)
    t_files = current_call_files.set(files) if files else None
    args: tuple[Any, ...] | None = None
    try:
        start = _perf()
        for impl in impls:
            if impl.denied is not None:
                results.append(_denied(impl))
                continue
            pending = None
            try:
                if impl.positional:
                    if args is None:
                        args = (POSITIONAL.get(hook) or positional(hook))(kwargs)
                    out = impl.function(*args)
                else:
                    out = impl.function(**(kwargs if impl.takes_all else _kwargs(impl, kwargs)))
            except Exception as exc:
                results.append(_failure(impl, exc, start))
                end = _perf()
            else:
                if type(out) not in _PLAIN_RESULTS and (pending := _pending(out)) is not None:
                    waiting.append((len(results), impl, pending, usage, start))
                    results.append(None)
                    end = _perf()
                else:
                    end = _perf()
                    results.append(HookResult(impl.plugin, True, impl.redactor.redact(out), None, end - start, None,
                                              usage or None))
            if usage or pending is not None:  # this plugin keeps the dict: the next one gets its own
                usage = {}
                current_usage.set(usage)
            start = end
    finally:
        current_usage.reset(t_usage)
        if t_files is not None:
            current_call_files.reset(t_files)
    if not waiting and (hook in RESULT_CHECKS or hook not in HOOKS):
        check_results(hook, results)  # type: ignore[arg-type]
    return results, (Pending(waiting, files) if waiting else None)


async def finish_all(pending: Pending, hook: str, results: list[HookResult | None]) -> list[HookResult]:
    """Await what `start_all` started, each under its plugin's timeout, filling in `results`."""
    waiting = pending.waiting
    t_usage = current_usage.set(None)
    t_files = current_call_files.set(pending.files)
    try:
        if len(waiting) == 1:
            i, impl, awaitable, usage, start = waiting[0]
            results[i] = await _finish(impl, hook, awaitable, usage, start)
        else:
            await _gather(waiting, hook, results)
    finally:
        current_usage.reset(t_usage)
        current_call_files.reset(t_files)
    if hook in RESULT_CHECKS or hook not in HOOKS:
        check_results(hook, results)  # type: ignore[arg-type]
    return results  # type: ignore[return-value]


async def call_all(impls: list[Impl], hook: str, kwargs: dict[str, Any]) -> list[HookResult]:
    """Every implementation concurrently; one HookResult each, in `impls` order. `kwargs` are bound arguments."""
    results, pending = start_all(impls, hook, kwargs)
    if pending is not None:
        await finish_all(pending, hook, results)
    return results  # type: ignore[return-value]


async def call_one(impl: Impl, hook: str, kwargs: dict[str, Any]) -> HookResult:
    """One implementation (used by `first`), in the caller's task.

    `call_all`'s body rather than a call to it: a coroutine level fewer between the caller and the plugin,
    which a sandboxed call feels (its reply resumes every level, with the code cold after the wait).
    """
    results, pending = start_all([impl], hook, kwargs)
    if pending is not None:
        await finish_all(pending, hook, results)
    return results[0]  # type: ignore[return-value]


def is_firstresult(hook: str) -> bool:
    """Whether a call of `hook` stops at the first plugin that answers (a provided hook's `firstresult`)."""
    info = hook_info(hook)
    return info is not None and info.firstresult


async def call_first(impls: list[Impl], hook: str, kwargs: dict[str, Any]) -> list[HookResult]:
    """Implementations one at a time in priority order until one succeeds, as `PluginHost.first` tries them
    (stopping early, too, at an error another plugin would repeat); the results of those tried."""
    results = []
    for impl in impls:
        result = await call_one(impl, hook, kwargs)
        results.append(result)
        if result.success or not should_fall_back(result.exception):
            break
    return results


async def open_stream(impl: Impl, hook: str, kwargs: dict[str, Any]) -> tuple[AsyncIterator[Any], Any]:
    """Start a streaming implementation and wait for its first chunk (under its timeout).

    Returns the iterator and the first chunk; raises what the plugin raised, or HookTimeout.
    StopAsyncIteration means the stream ended without any chunk.
    """
    if impl.self_timed:
        return await _open(impl, hook, kwargs)
    try:
        async with asyncio.timeout(impl.timeout):
            return await _open(impl, hook, kwargs)
    except TimeoutError:
        raise _timeout_error(impl, hook) from None


async def _open(impl: Impl, hook: str, kwargs: dict[str, Any]) -> tuple[AsyncIterator[Any], Any]:
    out = impl.function(**_kwargs(impl, kwargs))
    if inspect.isawaitable(out):
        out = await out
    if not hasattr(out, "__anext__"):
        if not hasattr(out, "__aiter__"):
            raise PluginError(
                f"{impl.plugin} returned {type(out).__name__} for {hook}; a streaming hook must return "
                "an async iterator (write it as an async generator)"
            )
        out = out.__aiter__()
    return out, await out.__anext__()


class StreamDeadline:
    """The idle timeout of one stream: each chunk must come within the plugin's `resources.timeout` of asking.

    `asyncio.timeout()` around every chunk costs about 7 µs (a Timeout, a timer in the loop's heap, its
    cancellation), which a token-by-token stream pays per token. This keeps one timer for the whole stream,
    re-armed only when it fires early, so a chunk costs a clock read. On expiry it cancels the task waiting for
    the chunk and turns that cancellation into HookTimeout, as `asyncio.timeout()` does (an outside
    cancellation stays a cancellation).
    """

    __slots__ = ("_impl", "_hook", "_loop", "_handle", "_asked", "_task", "_expired")

    def __init__(self, impl: Impl, hook: str) -> None:
        self._impl = impl
        self._hook = hook
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._asked: float | None = None  # when the chunk being waited for was asked for; None between chunks
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    async def next(self, iterator: AsyncIterator[Any]) -> Any:
        """The next chunk of `iterator`; HookTimeout when it does not come in time."""
        self._asked = self._loop.time()
        self._task = asyncio.current_task()
        if self._handle is None:
            self._handle = self._loop.call_at(self._asked + self._impl.timeout, self._fire)
        try:
            return await iterator.__anext__()
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if self._task is not None and self._task.uncancel() == 0:
                    raise _timeout_error(self._impl, self._hook) from None
            raise
        finally:
            self._asked = None

    def _fire(self) -> None:
        self._handle = None
        if self._asked is None:  # between chunks: the consumer's own time does not count
            return
        due = self._asked + self._impl.timeout
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._fire)
        elif self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()

    def close(self) -> None:
        """Drop the timer (the stream ended or was abandoned)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
