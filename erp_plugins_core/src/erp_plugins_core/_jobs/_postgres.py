"""The fleet engine: procrastinate on the state's PostgreSQL database.

Each delivery is a procrastinate job (task `erp_plugins.run`) whose lock is `tenant/plugin`, so one plugin
sees a tenant's events in order while other plugins and tenants run in parallel; a plugin whose manifest says
`deliveries: {ordered: false}` gets jobs without a lock. Retries use a backoff with jitter up to the attempt
limit (the delivery's own, kept in its arguments, else the host's); a final failure stays `failed` with its
error in `erp_job_results`. Workers on any machine take jobs with `SKIP LOCKED`, are woken by LISTEN/NOTIFY,
and beat a heartbeat; the jobs of a worker whose heartbeat stopped (killed) are queued again. An event or job
is a row of `erp_works` holding the ids of its deliveries. A job is written together with its deliveries in one
statement; an event is written alone, as one row of erp_inbox holding its targets, and notifies the relays; the
relay running in every worker turns it into its erp_works row and jobs (see `_pg_relay`), so `emit` costs one
INSERT. Until then the event is listed with its deliveries queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from .._errors import StateError
from ._engine import JobEngine, worker_name
from ._model import Delivery, Executor, JobNotFound, Outcome, Target, Unit, Work, newest, pending_deliveries
from ._runs import attempt_limit, run_unit
from ._settings import JobSettings, backoff_delay

try:
    import procrastinate
    import psycopg
    from procrastinate import retry as _retry
    from procrastinate.schema import SchemaManager
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool

    from . import _pg_sql as q
    from ._pg_relay import RELAY_BATCH, job_row, relay_once
    from ._pg_schema import NOTIFY_CHANNEL, create_schema
    from ._pg_worker import Worker, refetch_when_done
except ImportError as exc:  # pragma: no cover - depends on the installed extra
    raise StateError(
        f"a postgresql:// state needs the PostgreSQL extra ({exc.name} is missing); "
        "install it: pip install 'erp-plugins-core[postgres]'"
    ) from None

__all__ = ["PostgresEngine"]

log = logging.getLogger("erp_plugins.jobs")

TASK = "erp_plugins.run"
QUEUE = "erp_plugins"
class DeliveryFailed(Exception):
    """Raised out of the procrastinate task so procrastinate applies the retry strategy; carries the outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error or "failed")
        self.outcome = outcome


class BackoffWithJitter(_retry.BaseRetryStrategy):
    """Exponential backoff with equal jitter up to the attempt limit; permanent failures are not retried.

    The limit is the delivery's own (`max_attempts` in the job's arguments, from its plugin's manifest when it
    was stored), else the host setting. procrastinate's own RetryStrategy has no jitter, so many deliveries
    failing together would retry together.
    """

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def get_retry_decision(self, *, exception: BaseException, job: Any) -> _retry.RetryDecision | None:
        if isinstance(exception, DeliveryFailed) and exception.outcome.permanent:
            return None
        runs = job.attempts + 1
        if runs >= attempt_limit(self.settings, job.task_kwargs.get("max_attempts")):
            return None
        return _retry.RetryDecision(retry_in={"seconds": backoff_delay(self.settings, runs)})


async def _autocommit(conn: Any) -> None:
    """Pool connections run each statement as its own transaction: one round trip per emit, not three."""
    await conn.set_autocommit(True)


class PostgresEngine(JobEngine):
    """Deliveries as procrastinate jobs in the state database; erp_works and erp_job_results alongside."""

    def __init__(self, url: str, settings: JobSettings) -> None:
        self.url = url
        self.settings = settings
        self._executor: Executor | None = None
        connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=8, configure=_autocommit)
        self.app = procrastinate.App(connector=connector)
        self.app.task(name=TASK, queue=QUEUE, pass_context=True, retry=BackoffWithJitter(settings))(self._task)
        # our own statements (emit, submit, listing) on a pool without procrastinate's per-checkout health query:
        # an emit is then one round trip
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True},
                                         name="erp-plugins-jobs")
        # emit's own connection, used by one emit at a time (others take the pool): a pool checkout costs about
        # a tenth of the INSERT itself here
        self._emit_conn: Any = None
        self._emit_lock = asyncio.Lock()
        self._open = False

    def __repr__(self) -> str:
        return "PostgresEngine(<postgresql state>)"  # the URL may carry a password

    def _error(self, exc: BaseException) -> StateError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StateError(f"job queue on the PostgreSQL state: {text}; check that the database is up and reachable")

    async def open(self) -> PostgresEngine:
        if self._open:
            return self
        try:
            # one direct connection first: an unreachable database is one clear error at once, not pools retrying
            async with await psycopg.AsyncConnection.connect(self.url, connect_timeout=5) as conn:
                await create_schema(conn, SchemaManager.get_schema())
            await self.app.open_async()
            await self._pool.open(wait=True, timeout=10)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self.app.close_async()
            with contextlib.suppress(Exception):
                await self._pool.close()
            if isinstance(exc, StateError) or not isinstance(exc, Exception):
                raise
            raise self._error(exc) from None
        self._open = True
        return self

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self.app.close_async()
            await self._pool.close()
            if self._emit_conn is not None:
                with contextlib.suppress(Exception):
                    await self._emit_conn.close()
                self._emit_conn = None

    async def _emit(self, params: tuple[Any, ...]) -> None:
        """The event's INSERT (`_pg_sql.EMIT`) on emit's own connection, or on the pool while another emit uses it.

        A failure is not retried (the row may have been committed before the connection broke): the connection
        is dropped, to be made again by the next emit, and the caller gets the error.
        """
        if self._emit_lock.locked():
            await self._exec(q.EMIT, params)
            return
        async with self._emit_lock:
            conn = self._emit_conn
            try:
                if conn is None or conn.closed:
                    conn = self._emit_conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                                    connect_timeout=5)
                await conn.execute(q.EMIT, params)
            except Exception as exc:
                self._emit_conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                raise self._error(exc) from None

    async def _exec(self, sql: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql, params)
                return await cur.fetchall() if cur.description else []
        except StateError:
            raise
        except Exception as exc:
            raise self._error(exc) from None

    # --- storing -------------------------------------------------------------------------------------------

    def _params(self, kind: str, tenant: str, hook: str, args: dict[str, Any], targets: Sequence[str | Target],
                source: str | None, depth: int, key: str | None, user: dict[str, Any] | None) -> dict[str, Any]:
        work_id = str(uuid.uuid4())
        jobs = [job_row(QUEUE, TASK, work_id, kind, tenant, hook, args, depth, t, user)
                for t in map(Target.of, targets)]
        return {"id": work_id, "kind": kind, "tenant": tenant, "hook": hook, "args": Jsonb(args), "source": source,
                "depth": depth, "key": key, "jobs": jobs, "user": Jsonb(user) if user is not None else None}

    async def store_event(self, tenant: str, event_type: str, data: dict[str, Any],
                          targets: Sequence[str | Target], *, source: str | None, depth: int,
                          user: dict[str, Any] | None = None) -> str:
        work_id = str(uuid.uuid4())
        args = json.dumps({"event_type": event_type, "data": data})
        goes_to = json.dumps([Target.of(t).to_json() for t in targets])
        user_json = json.dumps(user) if user is not None else None
        await self._emit((work_id, tenant, args, source, depth, goes_to, user_json))
        return work_id

    async def store_job(self, tenant: str, hook: str, args: dict[str, Any], targets: Sequence[str | Target], *,
                        idempotency_key: str | None, user: dict[str, Any] | None = None) -> str:
        params = self._params("job", tenant, hook, args, targets, None, 0, idempotency_key, user)
        try:
            async with self._pool.connection() as conn, conn.transaction():
                if idempotency_key is not None:
                    # one submitter per (tenant, key) at a time, so two racing submits give one job
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                                       (f"{tenant}/{idempotency_key}",))
                    cur = await conn.execute("SELECT id::text FROM erp_works WHERE tenant = %s AND idem_key = %s",
                                             (tenant, idempotency_key))
                    row = await cur.fetchone()
                    if row is not None:
                        return str(row[0])
                # the events stored before this job get their jobs first (lower ids), so a plugin sees both in order
                while await relay_once(conn, QUEUE, TASK, wait=True) == RELAY_BATCH:
                    pass
                await conn.execute(q.INSERT, params)
        except StateError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        return str(params["id"])

    # --- reading -------------------------------------------------------------------------------------------

    async def _works(self, rows: list[tuple[Any, ...]]) -> list[Work]:
        works, owner = [], {}
        for r in rows:
            work = Work(id=r[0], kind=r[1], tenant=r[2], hook=r[3], args=r[4], created=float(r[5]), source=r[6],
                        idempotency_key=r[7])
            works.append(work)
            owner.update(dict.fromkeys(r[8], work))
        if owner:
            for d in await self._exec(q.DELIVERIES, {"ids": list(owner)}):
                state = q.STATE.get(d[2], d[2])
                owner[d[0]].deliveries.append(Delivery(
                    id=str(d[0]), plugin=d[1], state=state, attempts=d[3] + (state == "running"),
                    result=d[4], error=d[5], error_kind=d[6],
                ))
        return works

    @staticmethod
    def _stored(rows: list[tuple[Any, ...]]) -> list[Work]:
        """Events in the inbox (not yet relayed): their deliveries are queued, never run."""
        return [Work(id=r[0], kind="event", tenant=r[1], hook="on_event", args=r[2], created=float(r[3]),
                     source=r[4], deliveries=pending_deliveries(map(Target.from_json, r[5]))) for r in rows]

    async def get(self, work_id: str) -> Work:
        try:
            uuid.UUID(work_id)
        except ValueError:
            raise JobNotFound(f"no event or job {work_id!r}: ids look like 0f9c1d2e-...-...") from None
        # the inbox first: a relay between the two reads moves the event into erp_works, where the second finds it
        stored = await self._exec(f"{q.INBOX} WHERE id = %s", (work_id,))  # noqa: S608
        if stored:
            return self._stored(stored)[0]
        rows = await self._exec(f"{q.WORKS} WHERE id = %s", (work_id,))  # noqa: S608
        if rows:
            return (await self._works(rows))[0]
        raise JobNotFound(f"no event or job {work_id!r} (never stored, or removed after the retention period)")

    async def list(self, *, kind: str, tenant: str | None = None, state: str | None = None,
                   limit: int = 100) -> list[Work]:
        where = ["kind = %(kind)s", "(%(tenant)s::text IS NULL OR tenant = %(tenant)s)"]
        params: dict[str, Any] = {"kind": kind, "tenant": tenant, "limit": max(0, int(limit))}
        if state == "succeeded":
            where.append("NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.id = ANY(w.job_ids) "
                         "AND j.status <> 'succeeded')")
        elif state is not None:
            where.append("EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.id = ANY(w.job_ids) "
                         "AND j.status::text = ANY(%(statuses)s))")
            params["statuses"] = q.STATUSES[state]
        sql = f"{q.WORKS} WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT %(limit)s"  # noqa: S608
        stored: list[Work] = []
        if kind == "event" and state in (None, "queued"):  # events not yet relayed are queued (read first, as get)
            stored = self._stored(await self._exec(
                f"{q.INBOX} WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "  # noqa: S608
                "ORDER BY seq DESC LIMIT %(limit)s", params))
        return newest(stored, await self._works(await self._exec(sql, params)), limit)

    async def counts(self, *, kind: str, tenant: str | None = None) -> dict[str, int]:
        rows = await self._exec(
            "SELECT j.status::text, COUNT(*) FROM erp_works w JOIN procrastinate_jobs j ON j.id = ANY(w.job_ids) "
            "WHERE w.kind = %(kind)s AND (%(tenant)s::text IS NULL OR w.tenant = %(tenant)s) GROUP BY 1 "
            "UNION ALL SELECT 'todo', COALESCE(SUM(jsonb_array_length(targets)), 0) FROM erp_inbox "  # not relayed
            "WHERE %(kind)s = 'event' AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)",
            {"kind": kind, "tenant": tenant},
        )
        out = dict.fromkeys(("queued", "running", "succeeded", "failed"), 0)
        for status, count in rows:
            out[q.STATE.get(status, status)] += int(count)
        return out

    async def retry(self, work_id: str) -> int:
        work = await self.get(work_id)
        failed = [int(d.id) for d in work.deliveries if d.state == "failed"]
        if not failed:
            return 0
        try:
            async with self._pool.connection() as conn, conn.transaction():
                # procrastinate's retry function counts itself as an attempt; an administrator's retry is not a
                # run. Taken back first, in the same transaction, so no worker sees the job in between.
                await conn.execute("UPDATE procrastinate_jobs SET attempts = attempts - 1 WHERE id = ANY(%(ids)s) "
                                   "AND status = 'failed' AND attempts > 0", {"ids": failed})
                cur = await conn.execute(
                    "SELECT procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL) FROM procrastinate_jobs "
                    "WHERE id = ANY(%(ids)s) AND status = 'failed'", {"ids": failed},
                )
                return len(await cur.fetchall())
        except StateError:
            raise
        except Exception as exc:
            raise self._error(exc) from None

    async def purge(self) -> int:
        rows = await self._exec(q.PURGE + " RETURNING id", {"secs": self.settings.retention_s})
        return len(rows)

    # --- running -------------------------------------------------------------------------------------------

    async def _task(self, context: Any, **args: Any) -> None:
        """procrastinate's task: run the unit through the executor; record errors and results; raise to retry."""
        job = context.job
        unit = Unit(id=str(job.id), work=args["work"], kind=args["kind"], tenant=args["tenant"], plugin=args["plugin"],
                    hook=args["hook"], args=args["args"], depth=args.get("depth", 0), attempts=job.attempts,
                    max_attempts=args.get("max_attempts"), user=args.get("user"))
        if self._executor is None:
            raise DeliveryFailed(Outcome(False, error="no executor in this process", error_kind="host"))
        outcome = await run_unit(self._executor, unit)
        if not outcome.success or outcome.result is not None:
            await self._exec(
                "INSERT INTO erp_job_results (job_id, result, error, error_kind) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (job_id) DO UPDATE SET result = EXCLUDED.result, error = EXCLUDED.error, "
                "error_kind = EXCLUDED.error_kind, updated_at = now()",
                (job.id, Jsonb(outcome.result) if outcome.result is not None else None, outcome.error,
                 outcome.error_kind),
            )
        if not outcome.success:
            raise DeliveryFailed(outcome)

    async def run(self, executor: Executor, *, stop: asyncio.Event, concurrency: int = 1,
                  name: str | None = None) -> None:
        await self.open()
        self._executor = executor
        lease = self.settings.lease_s
        runner = Worker(
            app=self.app, queues=[QUEUE], concurrency=concurrency, name=name or worker_name(),
            install_signal_handlers=False, update_heartbeat_interval=lease / 3, stalled_worker_timeout=lease,
            fetch_job_polling_interval=self.settings.poll_s, listen_notify=True, worker_middleware=[refetch_when_done],
        )
        worker = asyncio.create_task(runner.run(), name="erp-plugins-procrastinate")
        keeper = asyncio.create_task(self._keep(), name="erp-plugins-requeue")
        relay = asyncio.create_task(self._relay(stop), name="erp-plugins-relay")
        log.info("event=worker_start engine=postgresql concurrency=%d", concurrency)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stopping, worker], return_when=asyncio.FIRST_COMPLETED)
            if worker.done() and not stop.is_set():
                exc = worker.exception()
                raise self._error(exc or RuntimeError("the procrastinate worker stopped by itself"))
        finally:
            stopping.cancel()
            keeper.cancel()
            relay.cancel()  # a relay cut short rolls back: its events stay stored for another relay
            # cancelling run_worker_async makes procrastinate stop fetching and wait for the running jobs
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            runner.restore()
            self._executor = None
            log.info("event=worker_stop engine=postgresql")

    async def _relay(self, stop: asyncio.Event) -> None:
        """Relay stored events into jobs whenever `emit` notifies (or every poll interval), until `stop`.

        Its own connection listens; relaying runs on a pool connection. A lost database is logged and the loop
        connects again after a pause.
        """
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                 connect_timeout=5) as listener:
                    await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not stop.is_set():
                        async with self._pool.connection() as conn:
                            # a batch not full emptied the inbox; an event stored since notifies again
                            while (count := await relay_once(conn, QUEUE, TASK)) == RELAY_BATCH:
                                log.debug("event=relayed count=%d", count)
                        async for _ in listener.notifies(timeout=self.settings.poll_s, stop_after=1):
                            pass
            except Exception as exc:
                log.warning("event=relay_failed error=%s (retrying)", self._error(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.poll_s * 4)

    async def _keep(self) -> None:
        """Queue again the jobs of workers that stopped beating (killed), and purge expired works."""
        loop = asyncio.get_running_loop()
        next_purge = 0.0
        while True:
            try:
                rows = await self._exec(q.REQUEUE_STALLED, {"task": TASK, "secs": self.settings.lease_s})
                if rows:
                    log.warning("event=requeued_stalled count=%d (their worker stopped beating)", len(rows))
                if loop.time() >= next_purge:
                    next_purge = loop.time() + 300
                    await self.purge()
            except StateError as exc:
                log.warning("event=maintenance_failed error=%s", exc)
            await asyncio.sleep(self.settings.lease_s / 2)
