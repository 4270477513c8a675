"""The PostgreSQL engine's worker does not lose a wake-up: a job notified while a fetch that found nothing is
finishing runs at once, not at the next poll (procrastinate clears its flag after each fetch)."""

from __future__ import annotations

import asyncio
from typing import Any

from procrastinate import manager

from erp_plugins_core._jobs import JobSettings, Outcome, Unit
from erp_plugins_core._jobs._postgres import PostgresEngine

POLL_S = 120.0  # a job that waited for the poll would not run within the test's timeout


async def test_a_job_notified_during_an_empty_fetch_runs_without_waiting_for_the_poll(pg_url: str,
                                                                                     monkeypatch) -> None:
    original = manager.JobManager.fetch_job
    first_ran, held, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def fetch_job(self: Any, **kwargs: Any) -> Any:
        job = await original(self, **kwargs)
        if job is None and first_ran.is_set() and not release.is_set():  # the empty fetch after the first job
            held.set()  # is held open until the second job is in
            await release.wait()
        return job

    monkeypatch.setattr(manager.JobManager, "fetch_job", fetch_job)
    engine = PostgresEngine(pg_url, JobSettings(poll_s=POLL_S))
    ran: list[Unit] = []
    done = asyncio.Event()

    async def executor(unit: Unit) -> Outcome:
        ran.append(unit)
        (done if first_ran.is_set() else first_ran).set()
        return Outcome(True)

    async def job(n: int) -> str:
        return await engine.store_job("acme", "send_email", {"to": f"{n}@example.com"}, ["ledger"],
                                      idempotency_key=None)  # inserted; procrastinate's trigger notifies

    stop = asyncio.Event()
    worker = asyncio.create_task(engine.run(executor, stop=stop))
    try:
        while not engine._open:  # run() opens it  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the worker's first fetch finds nothing
        first = await job(1)  # with a 120 s poll only its NOTIFY runs it: the worker listens
        await asyncio.wait_for(held.wait(), 60)  # it ran; the worker's next fetch found nothing and is held
        second = await job(2)
        await asyncio.sleep(1.0)  # the NOTIFY reaches the worker's listener while its fetch is held
        release.set()
        await asyncio.wait_for(done.wait(), 30)
        assert [u.work for u in ran] == [first, second] and ran[1].plugin == "ledger", (ran, first, second)
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(worker, 60)
        await engine.close()
    assert "fetch_job" not in vars(engine.app.job_manager)  # the app's manager is its own again
