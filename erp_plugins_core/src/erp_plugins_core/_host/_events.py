"""Durable events and background jobs, delegated to the job service."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError, PluginError
from .._jobs._model import STATES
from .._jobs._service import JobService
from .._state import validate_tenant
from ._support import HostBase


class EventsMixin(HostBase):
    """Durable events and background jobs, delegated to the job service."""

    async def emit(self, tenant: str, event_type: str, data: dict[str, Any], *, source: str | None = None,
                   user_context: Mapping[str, Any] | None = None) -> str:
        """Store an event for `on_event` of the tenant's enabled plugins (not the source); its id once stored.

        The targets are fixed now, from this host's view of the tenant (kept in step with the state), in the
        one row stored; a relay fans it out into deliveries. Delivery is durable and at least once, in emit
        order per plugin, retried with backoff (see `_jobs`); an event emitted while handling one more than
        MAX_EVENT_DEPTH deep is refused (EventChainTooDeep). `user_context` (default: that of the hook call
        this runs in, if any) is stored with the event and each `on_event` runs with it.
        """
        validate_tenant(tenant)
        return await self._jobs().emit(tenant, event_type, data, source=source, user_context=user_context)

    async def submit(self, hook: str, *, tenant: str, idempotency_key: str | None = None,
                     user_context: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
        """Queue `hook` as a background job for the tenant's enabled plugins that implement it; the job's id.

        Arguments are checked now; the same idempotency key for the same tenant gives the same job. The job
        runs in a worker (or, with SQLite, an open host); enabled and granted are checked when it runs, with
        `user_context` (default: that of the hook call this runs in, if any) as the plugin's user.
        """
        validate_tenant(tenant)
        return await self._jobs().submit(hook, tenant, idempotency_key, kwargs, user_context=user_context)

    async def job(self, job_id: str) -> dict[str, Any]:
        """`{id, hook, tenant, state, results, attempts, error}` of a job or event (JobNotFound if unknown)."""
        return await self._jobs().job(job_id)

    async def events(self, tenant: str, *, failed: bool = False, limit: int = 50) -> dict[str, Any]:
        """`{backlog, events}` for the tenant, newest first (only those with a failed delivery if `failed`)."""
        validate_tenant(tenant)
        return await self._jobs().listing("event", tenant=tenant, state="failed" if failed else None, limit=limit)

    async def jobs(self, *, tenant: str | None = None, state: str | None = None, limit: int = 50) -> dict[str, Any]:
        """`{backlog, jobs}`, newest first; `state` keeps jobs with a part in that state (as `erp-plugins jobs`)."""
        if tenant is not None:
            validate_tenant(tenant)
        if state is not None and state not in STATES:
            raise ConfigError(f"unknown job state {state!r}; states: {', '.join(STATES)}")
        return await self._jobs().listing("job", tenant=tenant, state=state, limit=limit)

    async def retry(self, job_id: str) -> int:
        """Queue the failed deliveries of event or job `job_id` again, to run now; how many (0: none failed)."""
        return await self._jobs().retry(job_id)

    async def run_jobs(self, *, stop: asyncio.Event, concurrency: int = 1, name: str | None = None) -> None:
        """Run deliveries and jobs until `stop` is set; the running ones then finish (`erp-plugins worker`)."""
        await self._jobs().run(stop=stop, concurrency=concurrency, name=name)

    def _forget_targets(self, tenant: str | None) -> None:
        """A change of `tenant`'s plugins (every tenant's for None) was applied: events look at the state again."""
        if self._job_service is not None:
            self._job_service.forget(tenant)

    def _jobs(self) -> JobService:
        if self._job_service is None:
            store = self._require_store()
            location = getattr(store, "_url", None) or getattr(store, "path", None)
            if location is None:
                raise PluginError(f"{store!r} has no location a job engine can open")
            self._job_service = JobService(self, str(location), self._job_settings, self._deliver)
        return self._job_service


