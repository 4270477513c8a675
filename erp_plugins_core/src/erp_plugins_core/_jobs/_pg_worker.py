"""procrastinate's worker as the PostgreSQL engine runs it: no wake-up lost between its fetches.

procrastinate looks for jobs when a NOTIFY wakes it, when one of its jobs ends, or at its polling interval. It
clears its wake-up flag after each fetch, so a job inserted and notified while a fetch that found nothing was
finishing waited for the next poll: the 0.5 s emit→delivered tail seen in one benchmark run of three. Here the
flag is cleared before each fetch instead, and a wake-up that came during a fetch that found nothing makes the
worker look once more. Both use the flag procrastinate 3.x keeps as `Worker._new_job_event`; without it (another
version) the worker runs as procrastinate ships it, polling included.
"""

from __future__ import annotations

import asyncio
from typing import Any

from procrastinate import worker as _worker


class Worker(_worker.Worker):
    """procrastinate's `Worker`, fetching again when woken during a fetch that found nothing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        wake: asyncio.Event | None = getattr(self, "_new_job_event", None)
        if wake is None:
            return
        manager = self.app.job_manager
        fetch = manager.fetch_job

        async def fetch_job(**kwargs: Any) -> Any:
            wake.clear()  # what procrastinate does after the fetch, done before it: a wake-up during it stays seen
            job = await fetch(**kwargs)
            if job is None and wake.is_set():  # woken meanwhile: procrastinate is about to clear the flag
                asyncio.get_running_loop().call_soon(wake.set)
            return job

        manager.fetch_job = fetch_job  # type: ignore[method-assign]
        self._wrapped = manager

    def restore(self) -> None:
        """Give the app's job manager its own `fetch_job` back (the worker has stopped)."""
        manager = getattr(self, "_wrapped", None)
        if manager is not None and "fetch_job" in vars(manager):
            del manager.fetch_job


async def refetch_when_done(call_next: Any, context: Any, worker: Any) -> Any:
    """Worker middleware: when a job's task ends (its status written), let the worker look for jobs again.

    A job that waited behind this one's lock (the same plugin's next event) would otherwise wait up to the
    polling interval.
    """
    task = asyncio.current_task()
    wake = getattr(worker, "_new_job_event", None)
    if task is not None and wake is not None:
        task.add_done_callback(lambda _t: wake.set())
    return await call_next()
