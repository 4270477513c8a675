"""The seam both job engines implement: store events and jobs durably, list them, retry them, run them.

The host decides *what* to deliver (the target plugins, the checks made when a unit runs, through an
Executor); an engine decides *where and when*: the SQLite outbox in the state file, or procrastinate on the
state's PostgreSQL database. Neither engine knows the state store's tables or the dispatch machinery.
"""

from __future__ import annotations

import asyncio
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._model import Executor, Target, Work, job_view
from ._settings import JobSettings

__all__ = ["JobEngine", "is_postgres_url", "open_engine", "worker_name"]

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: object) -> bool:
    """Whether a state location names a PostgreSQL database (libpq URL) rather than an SQLite file."""
    return isinstance(location, str) and location.startswith(_PG_SCHEMES)


def worker_name() -> str:
    """This process's name in claims and logs: ERP_PLUGINS_HOST_NAME, else hostname:pid."""
    return os.environ.get("ERP_PLUGINS_HOST_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class JobEngine(ABC):
    """Durable events and jobs. Each work (event or job) has one delivery per target plugin, run at least once."""

    settings: JobSettings

    @abstractmethod
    async def open(self) -> JobEngine:
        """Connect and create (or check) the engine's tables; idempotent and safe from many processes at once."""

    @abstractmethod
    async def store_event(
        self, tenant: str, event_type: str, data: dict[str, Any], targets: Sequence[str | Target], *,
        source: str | None, depth: int, user: dict[str, Any] | None = None,
    ) -> str:
        """Store an event for its target plugins as one row; returns its id once committed.

        A relay (run by `run`, wherever deliveries run) later fans the row out into one delivery per target, in
        emit order, exactly once; until then the event is listed with its deliveries queued. Each delivery keeps
        its target's settings (ordered or not, its own attempt limit); a bare name is a Target with the defaults.
        `user` is the caller's user_context, which each delivery's hook runs with.
        """

    @abstractmethod
    async def store_job(
        self, tenant: str, hook: str, args: dict[str, Any], targets: Sequence[str | Target], *,
        idempotency_key: str | None, user: dict[str, Any] | None = None,
    ) -> str:
        """Store a job (one delivery per target); with a key already used by the tenant, the existing job's id.

        `user` is the caller's user_context, which each delivery's hook runs with.
        """

    @abstractmethod
    async def get(self, work_id: str) -> Work:
        """The event or job with its deliveries; JobNotFound if there is none (or it expired)."""

    @abstractmethod
    async def list(
        self, *, kind: str, tenant: str | None = None, state: str | None = None, limit: int = 100,
    ) -> list[Work]:
        """Newest first. `state` keeps works with a delivery in that state (succeeded: all of them succeeded)."""

    @abstractmethod
    async def counts(self, *, kind: str, tenant: str | None = None) -> dict[str, int]:
        """The backlog: deliveries of events or jobs by state (every state present, zero if none)."""

    async def listing(self, *, kind: str, tenant: str | None, state: str | None, limit: int) -> dict[str, Any]:
        """`{backlog, events|jobs}` as `erp-plugins events|jobs --json` print it (the HTTP API answers the same)."""
        from .._shapes import work_list

        counts = await self.counts(kind=kind, tenant=tenant)
        works = await self.list(kind=kind, tenant=tenant, state=state, limit=limit)
        return work_list(kind, counts, [job_view(w) for w in works])

    @abstractmethod
    async def retry(self, work_id: str) -> int:
        """Queue the failed deliveries of a work again, to run now; how many. JobNotFound for an unknown id."""

    @abstractmethod
    async def run(self, executor: Executor, *, stop: asyncio.Event, concurrency: int = 1, name: str | None = None,
                  ) -> None:
        """Relay stored events and take and run deliveries until `stop` is set; then let the running ones finish.

        A delivery is never lost to a stop or a crash: one a killed worker held is taken back after the lease,
        and an event a killed relay was fanning out stays stored for the next relay.
        """

    @abstractmethod
    async def purge(self) -> int:
        """Remove finished works older than the retention period; how many."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the engine cannot be used afterwards."""

    def wake(self) -> None:  # noqa: B027 (optional: only engines that poll need the nudge)
        """Tell a worker running in this process that new work was stored (it would find it on its next poll)."""


def open_engine(location: str | os.PathLike[str], settings: JobSettings | None = None) -> JobEngine:
    """The engine for a state location: procrastinate for a `postgresql://` URL, the outbox for an SQLite file.

    The PostgreSQL engine needs the `erp-plugins-core[postgres]` extra; without it a one-line StateError says so.
    """
    settings = settings or JobSettings.from_env()
    if is_postgres_url(location):
        from ._postgres import PostgresEngine

        return PostgresEngine(str(location), settings)
    from ._outbox import OutboxEngine

    return OutboxEngine(Path(location), settings)
