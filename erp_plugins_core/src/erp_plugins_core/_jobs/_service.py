"""What a PluginHost does with events and jobs: pick the target plugins, store through the engine, and run
units with the host's checks (still enabled, still granted) when a worker takes them.

The host keeps one JobService and delegates `emit`, `submit`, `job` and `run_jobs` to it. With the embedded
SQLite state an open host also delivers in the background (the contract's "open hosts also run them"). As in
the host, state-store calls run in a thread, except on `emit`'s path with SQLite: a WAL read of the change feed's
head, and the event's one-row commit when no other connection holds the write lock (see OutboxEngine.store_event);
the event loop never waits for a lock.

The target plugins of an event or job are those enabled for the tenant as this host sees the state: a view of
each tenant's enabled plugins, read from the store once and dropped whenever the host's follower (or the host
itself) applies a change of that tenant, so `emit` reads no table and writes one row. The caller's
user_context is stored with the work and set again when its hook runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._context import current_user_context
from .._dispatch import bind_arguments, call_one
from .._errors import AllPluginsFailed, HookArgumentError, UnknownHookError
from .._hookspecs import hook_info, hook_names
from ._engine import JobEngine, is_postgres_url, open_engine
from ._model import EventChainTooDeep, Outcome, Target, Unit, job_view
from ._settings import JobSettings

if TYPE_CHECKING:
    from .._host import PluginHost

__all__ = ["MAX_EVENT_DEPTH", "JobService", "event_depth"]

log = logging.getLogger("erp_plugins.jobs")

#: How deep a chain of events may go: an event emitted by a handler running this deep is refused.
MAX_EVENT_DEPTH = 8
#: How deep the event being handled right now is (0 outside any handler); stored with each event.
event_depth: contextvars.ContextVar[int] = contextvars.ContextVar("erp_plugins_event_depth", default=0)
#: Deliveries an open host runs at once in the background.
HOST_CONCURRENCY = 4


class JobService:
    """A host's events and jobs: storing them, reading them back, and running them (see the module docstring)."""

    def __init__(self, host: PluginHost, location: str, settings: JobSettings | None, deliver: bool | None) -> None:
        self._host = host
        self.location = location
        self.settings = settings or JobSettings.from_env()
        self._deliver = (not is_postgres_url(location)) if deliver is None else deliver
        self._engine: JobEngine | None = None
        self._opening = asyncio.Lock()
        self._stop = asyncio.Event()
        self._background: asyncio.Task[None] | None = None
        #: tenant -> its enabled plugins as (name, manifest hooks, Target), in the store's order; see `forget`
        self._enabled: dict[str, list[tuple[str, frozenset[str], Target]]] = {}
        self._generation = 0
        self._seen_seq = -1  # SQLite: the state's change seq the views were read at

    async def engine(self) -> JobEngine:
        """The engine, opened on first use (so a host that never emits never touches the job tables)."""
        if self._engine is None:
            async with self._opening:
                if self._engine is None:
                    self._engine = await open_engine(self.location, self.settings).open()
                    if self._deliver and self._background is None:
                        self._background = asyncio.create_task(self._deliver_loop(), name="erp-plugins-deliver")
        return self._engine

    async def start(self) -> None:
        """Start delivering in the background if this host delivers (SQLite by default) and work is waiting."""
        if self._deliver:
            await self.engine()

    async def close(self) -> None:
        """Stop taking work, let the running deliveries finish, close the engine."""
        self._stop.set()
        if self._background is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    # --- storing -------------------------------------------------------------------------------------------

    def forget(self, tenant: str | None) -> None:
        """Drop the view of `tenant`'s enabled plugins (every tenant's for None): a change of it was applied."""
        self._generation += 1
        if tenant is None:
            self._enabled.clear()
        else:
            self._enabled.pop(tenant, None)

    async def _tenant_plugins(self, tenant: str) -> list[tuple[str, frozenset[str], Target]]:
        """The tenant's enabled plugins with their hooks and delivery settings, from the view (read if missing)."""
        host = self._host
        store = host._require_store()
        if store.backend == "sqlite":
            # the change feed's head, read inline (a WAL reader never waits on a writer): any change since the
            # views were read drops them. Cheaper here than the follower, which every commit to the file (each
            # emit's too) sends to read the feed from a thread.
            seq = store.change_seq()
            if seq != self._seen_seq:
                self.forget(None)
                self._seen_seq = seq
        else:
            follower = host._follower
            if follower is not None and follower.stale and follower.due():  # as a call: changes elsewhere first
                await follower.catch_up()
        known = self._enabled.get(tenant)
        if known is not None:
            return known
        generation = self._generation
        # a WAL reader never waits on a writer, so an SQLite read runs inline (a thread hop would double it)
        rows = store.list(tenant) if store.backend == "sqlite" else await asyncio.to_thread(store.list, tenant)
        out = []
        for row in rows:
            record = host.catalog.get(row.plugin) if row.enabled else None
            manifest = record.manifest if record is not None else None
            if manifest is not None:
                settings = manifest.deliveries
                out.append((row.plugin, frozenset(h.name for h in manifest.hooks),
                            Target(row.plugin, ordered=settings.ordered, max_attempts=settings.max_attempts)))
        if generation == self._generation:  # no change applied while reading: the view is current
            self._enabled[tenant] = out
        return out

    async def _implementers(self, hook: str, tenant: str, exclude: str | None = None) -> list[Target]:
        """Plugins enabled for the tenant whose manifest implements `hook`, each with its manifest's `deliveries`
        settings, which its delivery keeps."""
        return [t for name, hooks, t in await self._tenant_plugins(tenant) if hook in hooks and name != exclude]

    async def emit(self, tenant: str, event_type: str, data: dict[str, Any], *, source: str | None,
                   user_context: Any = None) -> str:
        depth = event_depth.get()
        if depth >= MAX_EVENT_DEPTH:
            raise EventChainTooDeep(
                f"event {event_type!r} from {source or 'the host'} refused: event chain deeper than "
                f"{MAX_EVENT_DEPTH} for tenant {tenant!r} (plugins emitting events in a loop?)"
            )
        args = _jsonable("on_event", bind_arguments("on_event", {"event_type": event_type, "data": data}))
        user = _user(user_context)
        targets = await self._implementers("on_event", tenant, exclude=source)
        engine = self._engine or await self.engine()
        return await engine.store_event(tenant, event_type, args["data"], targets, source=source, depth=depth + 1,
                                        user=user)

    async def submit(self, hook: str, tenant: str, idempotency_key: str | None, kwargs: dict[str, Any], *,
                     user_context: Any = None) -> str:
        _ = self._host.catalog  # loading the catalog registers the hooks plugins provide
        info = hook_info(hook)
        if info is None:
            raise UnknownHookError(f"no hook named {hook!r}; hooks: {', '.join(hook_names())}")
        if info.streaming:
            raise UnknownHookError(f"{hook} is a streaming hook; submit takes hooks that return one result")
        key = idempotency_key
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
            raise HookArgumentError("idempotency_key must be a non-empty string of at most 200 characters")
        args = _jsonable(hook, bind_arguments(hook, dict(kwargs)))
        user = _user(user_context)
        targets = await self._implementers(hook, tenant)
        if not targets:
            raise AllPluginsFailed(f"no plugin enabled for tenant {tenant!r} implements {hook}; nothing to submit")
        engine = await self.engine()
        return await engine.store_job(tenant, hook, args, targets, idempotency_key=idempotency_key, user=user)

    async def job(self, job_id: str) -> dict[str, Any]:
        return job_view(await (await self.engine()).get(job_id))

    async def listing(self, kind: str, *, tenant: str | None, state: str | None, limit: int) -> dict[str, Any]:
        """The backlog and newest events or jobs, as `erp-plugins events|jobs --json` prints them."""
        return await (await self.engine()).listing(kind=kind, tenant=tenant, state=state, limit=limit)

    async def retry(self, work_id: str) -> int:
        """Queue the failed deliveries of an event or job again; how many (JobNotFound for an unknown id)."""
        return await (await self.engine()).retry(work_id)

    # --- running -------------------------------------------------------------------------------------------

    async def run(self, *, stop: asyncio.Event, concurrency: int = 1, name: str | None = None) -> None:
        """Run deliveries and jobs in this process until `stop` is set (the `erp-plugins worker` loop)."""
        engine = await open_engine(self.location, self.settings).open()
        try:
            await engine.run(self.execute, stop=stop, concurrency=concurrency, name=name)
        finally:
            await engine.close()

    async def _deliver_loop(self) -> None:
        """An open host's background delivery; an engine error is logged and the loop tries again."""
        while not self._stop.is_set():
            try:
                assert self._engine is not None
                await self._engine.run(self.execute, stop=self._stop, concurrency=HOST_CONCURRENCY)
            except Exception as exc:
                log.warning("event=deliver_loop_failed error=%s (retrying)", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.poll_s * 4)

    async def execute(self, unit: Unit) -> Outcome:
        """Run one unit: refuse (for good) a plugin disabled or no longer granted since, else call its hook."""
        host = self._host
        what = "event" if unit.kind == "event" else "job"
        row = await asyncio.to_thread(host._require_store().get, unit.tenant, unit.plugin)
        if row is None or not row.enabled:
            return Outcome(False, error=f"plugin {unit.plugin!r} was disabled for tenant {unit.tenant!r} after the "
                           f"{what} was stored; not run", error_kind="disabled", permanent=True)
        _ = host.catalog
        info = hook_info(unit.hook)
        if info is None:
            return Outcome(False, error=f"hook {unit.hook!r} no longer exists", error_kind="unknown_hook",
                           permanent=True)
        if info.permission and info.permission not in row.granted:
            return Outcome(False, error=f"{unit.plugin} lacks permission {info.permission!r} for tenant "
                           f"{unit.tenant!r} (not granted when the {what} ran); grant it, then: erp-plugins retry "
                           f"{unit.work}", error_kind="permission", permanent=True)
        impl = next((i for i in await host._impls(unit.hook, unit.tenant) if i.plugin == unit.plugin), None)
        if impl is None:
            reason = host.status(unit.tenant).get(unit.plugin, {}).get("reason")
            return Outcome(False, error=f"plugin {unit.plugin!r} is not active for tenant {unit.tenant!r} in this "
                           f"process{': ' + reason if reason else ''}", error_kind="unavailable")
        token = event_depth.set(unit.depth)
        t_user = current_user_context.set(dict(unit.user or {}))  # as the caller that stored it (none: {})
        try:
            result = await call_one(impl, unit.hook, dict(unit.args))
        finally:
            current_user_context.reset(t_user)
            event_depth.reset(token)
        if not result.success:
            await host._check_gave_up(unit.tenant, unit.plugin)
        permanent = result.error_kind == "permission" or isinstance(result.exception, EventChainTooDeep)
        return Outcome(result.success, result.result, result.error, result.error_kind, permanent)


def _user(given: Any) -> dict[str, Any] | None:
    """The user_context to store: the one given, else the one of the hook call this runs in (a plugin emitting
    while handling a user's call), else None. A mapping of JSON values, or HookArgumentError."""
    if given is None:
        given = current_user_context.get() or None
    if given is None:
        return None
    if not isinstance(given, Mapping):
        raise HookArgumentError(f"user_context must be a mapping, not {type(given).__name__}")
    try:
        return dict(json.loads(json.dumps(dict(given))))
    except (TypeError, ValueError) as exc:
        raise HookArgumentError(f"user_context of an event or job must hold JSON values ({exc})") from None


def _jsonable(hook: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments as they will be stored (JSON); HookArgumentError for a value JSON cannot hold."""
    try:
        return json.loads(json.dumps(args))
    except (TypeError, ValueError) as exc:
        raise HookArgumentError(f"{hook}: arguments of an event or job must be JSON values ({exc})") from None
