"""The embedded engine: an outbox in the SQLite state file, delivered by open hosts and `erp-plugins worker`.

An event is one row of job_inbox holding its targets (`emit` writes nothing else, in one autocommitted
statement); a job and its deliveries are written in one `BEGIN IMMEDIATE` transaction. A worker claims one
delivery at a time in its own short transaction: first it relays the stored events, oldest first, into their
job_works row and delivery rows (the exclusive transaction makes one relay at a time, and a crash rolls the
relay back with the claim, so an event is fanned out exactly once), then it takes the oldest due delivery
whose plugin has no earlier unfinished delivery for the tenant (so each plugin sees a tenant's events in order;
a delivery stored unordered, from its plugin's manifest, skips that wait) and holds it under a lease it renews
while running. A killed worker stops renewing, its lease expires and another worker runs the delivery again.
This is the small, single-machine path; the fleet runs on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import StateError
from ._engine import JobEngine, worker_name
from ._model import Delivery, Executor, JobNotFound, Outcome, Target, Unit, Work, newest, pending_deliveries
from ._outbox_db import Db, migrate
from ._runs import finish_state, run_unit
from ._settings import JobSettings

__all__ = ["OutboxEngine"]

log = logging.getLogger("erp_plugins.jobs")

#: Events a relay fans out in one transaction (the rest wait for the next claim).
RELAY_BATCH = 500

#: The oldest due delivery that is unordered or whose (tenant, plugin) has no ordered delivery unfinished before
#: it (as procrastinate's locks: an unordered delivery holds no lock, so an ordered one does not wait for it).
_DUE = """
SELECT d.id FROM job_deliveries d
 WHERE ((d.state = 'queued' AND d.run_after <= :now) OR (d.state = 'running' AND d.lease_until < :now))
   AND (d.ordered = 0 OR NOT EXISTS (SELECT 1 FROM job_deliveries o
                                      WHERE o.lock = d.lock AND o.id < d.id AND o.ordered = 1
                                        AND o.state IN ('queued', 'running')))
 ORDER BY d.id LIMIT 1
"""
_UNIT = """
SELECT d.id, d.work, w.kind, w.tenant, d.plugin, w.hook, w.args, w.depth, d.attempts, d.max_attempts, w.user_ctx
  FROM job_deliveries d JOIN job_works w ON w.id = d.work WHERE d.id = ?
"""
_INBOX = "SELECT seq, id, tenant, args, source, depth, targets, user_ctx, created_at FROM job_inbox"
_ANY_STORED = "SELECT 1 FROM job_inbox LIMIT 1"
_EMIT = ("INSERT INTO job_inbox (id, tenant, args, created_at, source, depth, targets, user_ctx) "
         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_ADD_DELIVERIES = ("INSERT INTO job_deliveries (work, lock, plugin, state, run_after, updated_at, ordered, "
                   "max_attempts) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)")
_DELIVERIES = "SELECT id, work, plugin, state, attempts, result, error, error_kind FROM job_deliveries"
_WORK_COLUMNS = "id, kind, tenant, hook, args, created_at, source, idem_key"
_WORK_SELECT = "w.id, w.kind, w.tenant, w.hook, w.args, w.created_at, w.source, w.idem_key"
#: Per --state filter: which works to keep (one of their deliveries in that state; succeeded: all of them).
_STATE_FILTER = {
    "failed": "EXISTS (SELECT 1 FROM job_deliveries d WHERE d.work = w.id AND d.state = 'failed')",
    "running": "EXISTS (SELECT 1 FROM job_deliveries d WHERE d.work = w.id AND d.state = 'running')",
    "queued": "EXISTS (SELECT 1 FROM job_deliveries d WHERE d.work = w.id AND d.state = 'queued')",
    "succeeded": "NOT EXISTS (SELECT 1 FROM job_deliveries d WHERE d.work = w.id AND d.state <> 'succeeded')",
}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class OutboxEngine(JobEngine):
    """Events and jobs in the SQLite state file (tables job_works, job_deliveries; own version in job_schema)."""

    def __init__(self, path: Path, settings: JobSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self._db: Db | None = None
        self._now: Db | None = None  # emit's connection: never waits for the write lock (see store_event)
        self._wake: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"OutboxEngine({str(self.path)!r})"

    async def open(self) -> OutboxEngine:
        if self._db is None:
            if not self.path.is_file():
                raise StateError(f"state file {self.path} does not exist; open a PluginHost on it first")
            db = Db(self.path)
            try:
                migrate(db)
                self._now = Db(self.path, wait_s=0.0)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self

    def _require(self) -> Db:
        if self._db is None:
            raise StateError("the job engine is not open")
        return self._db

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- storing -------------------------------------------------------------------------------------------


    def _insert(self, kind: str, tenant: str, hook: str, args: dict[str, Any], targets: Sequence[str | Target],
                source: str | None, depth: int, key: str | None, user: str | None) -> str:
        now = time.time()
        with self._require().write() as conn:
            if key is not None:
                row = conn.execute("SELECT id FROM job_works WHERE tenant = ? AND idem_key = ?",
                                   (tenant, key)).fetchone()
                if row is not None:
                    return str(row[0])
            # the events stored before this job get their deliveries first, so a plugin sees both in order
            while self._relay(conn, now) == RELAY_BATCH:
                pass
            work_id = str(uuid.uuid4())
            conn.execute(
                f"INSERT INTO job_works ({_WORK_COLUMNS}, depth, user_ctx) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (work_id, kind, tenant, hook, _json(args), now, source, key, depth, user),
            )
            conn.executemany(_ADD_DELIVERIES, [(work_id, f"{tenant}/{t.plugin}", t.plugin, now, now, int(t.ordered),
                                                t.max_attempts) for t in map(Target.of, targets)])
        return work_id

    async def store_event(self, tenant: str, event_type: str, data: dict[str, Any],
                          targets: Sequence[str | Target], *, source: str | None, depth: int,
                          user: dict[str, Any] | None = None) -> str:
        """The event's one row, in the inbox.

        Written on the event loop when the write lock is free: one row's commit, as a plain INSERT would be,
        without a thread hop that would cost half as much again. Never waiting for the lock: when another
        connection holds it, the row is written from a thread that waits for it.
        """
        work_id = str(uuid.uuid4())
        params = (work_id, tenant, _json({"event_type": event_type, "data": data}), time.time(), source, depth,
                  json.dumps([Target.of(t).to_json() for t in targets]), _json(user) if user is not None else None)
        now = self._now
        if now is None or not now.try_insert(_EMIT, params):
            await asyncio.to_thread(self._require().insert, _EMIT, params)
        self.wake()
        return work_id

    async def store_job(self, tenant: str, hook: str, args: dict[str, Any], targets: Sequence[str | Target], *,
                        idempotency_key: str | None, user: dict[str, Any] | None = None) -> str:
        work_id = await asyncio.to_thread(self._insert, "job", tenant, hook, args, targets, None, 0, idempotency_key,
                                          _json(user) if user is not None else None)
        self.wake()
        return work_id

    # --- reading -------------------------------------------------------------------------------------------

    def _works(self, rows: list[tuple[Any, ...]]) -> list[Work]:
        works = [Work(id=r[0], kind=r[1], tenant=r[2], hook=r[3], args=json.loads(r[4]), created=r[5], source=r[6],
                      idempotency_key=r[7]) for r in rows]
        if not works:
            return works
        by_id = {w.id: w for w in works}
        marks = ",".join("?" * len(works))
        for d in self._require().read(f"{_DELIVERIES} WHERE work IN ({marks}) ORDER BY id", list(by_id)):  # noqa: S608
            by_id[d[1]].deliveries.append(Delivery(
                id=str(d[0]), plugin=d[2], state=d[3], attempts=d[4],
                result=json.loads(d[5]) if d[5] is not None else None, error=d[6], error_kind=d[7],
            ))
        return works

    @staticmethod
    def _stored(rows: list[tuple[Any, ...]]) -> list[Work]:
        """Events in the inbox (not yet relayed): their deliveries are queued, never run."""
        return [Work(id=r[1], kind="event", tenant=r[2], hook="on_event", args=json.loads(r[3]), created=r[8],
                     source=r[4], deliveries=pending_deliveries(map(Target.from_json, json.loads(r[6]))))
                for r in rows]

    async def get(self, work_id: str) -> Work:
        return await asyncio.to_thread(self._get, work_id)

    def _get(self, work_id: str) -> Work:
        # the inbox first: a relay between the two reads moves the event into job_works, where the second finds it
        stored = self._require().read(f"{_INBOX} WHERE id = ?", (work_id,))  # noqa: S608
        if stored:
            return self._stored(stored)[0]
        rows = self._require().read(f"SELECT {_WORK_SELECT} FROM job_works w WHERE id = ?", (work_id,))  # noqa: S608
        if rows:
            return self._works(rows)[0]
        raise JobNotFound(f"no event or job {work_id!r} (never stored, or removed after the retention period)")

    async def list(self, *, kind: str, tenant: str | None = None, state: str | None = None,
                   limit: int = 100) -> list[Work]:
        return await asyncio.to_thread(self._list, kind, tenant, state, limit)

    def _list(self, kind: str, tenant: str | None, state: str | None, limit: int) -> list[Work]:
        where, params = ["w.kind = ?"], [kind]
        if tenant is not None:
            where.append("w.tenant = ?")
            params.append(tenant)
        if state is not None:
            where.append(_STATE_FILTER[state])
        sql = (f"SELECT {_WORK_SELECT} FROM job_works w "  # noqa: S608
               f"WHERE {' AND '.join(where)} ORDER BY w.created_at DESC, w.rowid DESC LIMIT ?")
        stored: list[Work] = []
        if kind == "event" and state in (None, "queued"):  # events not yet relayed are queued (read first, as get)
            stored = self._stored(self._require().read(
                f"{_INBOX} WHERE (? IS NULL OR tenant = ?) ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (tenant, tenant, max(0, int(limit)))))
        return newest(stored, self._works(self._require().read(sql, [*params, max(0, int(limit))])), limit)

    async def counts(self, *, kind: str, tenant: str | None = None) -> dict[str, int]:
        return await asyncio.to_thread(self._counts, kind, tenant)

    def _counts(self, kind: str, tenant: str | None) -> dict[str, int]:
        # one statement, one snapshot; events not yet relayed have one queued delivery per target
        sql = ("SELECT d.state, COUNT(*) FROM job_deliveries d JOIN job_works w ON w.id = d.work "
               "WHERE w.kind = :kind AND (:tenant IS NULL OR w.tenant = :tenant) GROUP BY d.state "
               "UNION ALL SELECT 'queued', COALESCE(SUM(json_array_length(targets)), 0) FROM job_inbox "
               "WHERE :kind = 'event' AND (:tenant IS NULL OR tenant = :tenant)")
        out = dict.fromkeys(("queued", "running", "succeeded", "failed"), 0)
        for state, count in self._require().read(sql, {"kind": kind, "tenant": tenant}):
            out[state] += int(count)
        return out

    async def retry(self, work_id: str) -> int:
        count = await asyncio.to_thread(self._retry, work_id)
        self.wake()
        return count

    def _retry(self, work_id: str) -> int:
        self._get(work_id)
        now = time.time()
        with self._require().write() as conn:
            cur = conn.execute(
                "UPDATE job_deliveries SET state = 'queued', run_after = ?, lease_owner = NULL, lease_until = NULL, "
                "updated_at = ? WHERE work = ? AND state = 'failed'", (now, now, work_id),
            )
        return cur.rowcount

    async def purge(self) -> int:
        return await asyncio.to_thread(self._purge)

    def _purge(self) -> int:
        cutoff = time.time() - self.settings.retention_s
        with self._require().write() as conn:
            cur = conn.execute(
                "DELETE FROM job_works WHERE created_at < ? AND NOT EXISTS (SELECT 1 "
                "FROM job_deliveries d WHERE d.work = job_works.id AND d.state IN ('queued', 'running'))", (cutoff,),
            )
        return cur.rowcount

    # --- running -------------------------------------------------------------------------------------------

    @staticmethod
    def _relay(conn: Any, now: float) -> int:
        """Move stored events, oldest first, into job_works and delivery rows, in the caller's write transaction."""
        events = conn.execute(f"{_INBOX} ORDER BY seq LIMIT ?", (RELAY_BATCH,)).fetchall()  # noqa: S608
        if not events:
            return 0
        conn.executemany(
            f"INSERT INTO job_works ({_WORK_COLUMNS}, depth, user_ctx) "  # noqa: S608
            "VALUES (?, 'event', ?, 'on_event', ?, ?, ?, NULL, ?, ?)",
            [(work, tenant, args, created, source, depth, user)
             for _seq, work, tenant, args, source, depth, _targets, user, created in events])
        conn.executemany(_ADD_DELIVERIES, [
            (e[1], f"{e[2]}/{t.plugin}", t.plugin, now, now, int(t.ordered), t.max_attempts)
            for e in events for t in map(Target.from_json, json.loads(e[6]))])
        conn.execute("DELETE FROM job_inbox WHERE seq <= ?", (events[-1][0],))  # the oldest, all taken
        return len(events)

    def _claim(self, db: Db, owner: str) -> Unit | None:
        """Relay waiting events, then take the next due delivery under a lease, or None.

        Reads first, so an idle poll takes no write lock.
        """
        now = time.time()
        if not db.read(_ANY_STORED) and not db.read(_DUE, {"now": now}):
            return None
        with db.write() as conn:
            relayed = self._relay(conn, now)
            if relayed:
                log.debug("event=relayed count=%d", relayed)
            row = conn.execute(_DUE, {"now": now}).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE job_deliveries SET state = 'running', attempts = attempts + 1, lease_owner = ?, "
                "lease_until = ?, updated_at = ? WHERE id = ?", (owner, now + self.settings.lease_s, now, row[0]),
            )
            r = conn.execute(_UNIT, (row[0],)).fetchone()
        return Unit(id=str(r[0]), work=r[1], kind=r[2], tenant=r[3], plugin=r[4], hook=r[5],
                    args=json.loads(r[6]), depth=r[7], attempts=r[8] - 1,  # read after this run was counted
                    max_attempts=r[9], user=json.loads(r[10]) if r[10] is not None else None)

    def _finish(self, db: Db, unit: Unit, outcome: Outcome, owner: str) -> None:
        state, delay = finish_state(self.settings, unit, outcome)
        now = time.time()
        result = _json(outcome.result) if outcome.result is not None else None
        with db.write() as conn:
            cur = conn.execute(
                "UPDATE job_deliveries SET state = ?, run_after = ?, lease_owner = NULL, lease_until = NULL, "
                "result = ?, error = ?, error_kind = ?, updated_at = ? WHERE id = ? AND lease_owner = ?",
                (state, now + delay, result, outcome.error, outcome.error_kind, now, int(unit.id), owner),
            )
        if cur.rowcount == 0:
            log.warning("event=lease_lost delivery=%s plugin=%s tenant=%s (another worker took it over after the "
                        "lease ran out; it runs again there)", unit.id, unit.plugin, unit.tenant)

    def _release(self, db: Db, unit: Unit, owner: str) -> None:
        """Give a claimed delivery back untried (its run was interrupted by a shutdown), so it is not counted."""
        with db.write() as conn:
            conn.execute(
                "UPDATE job_deliveries SET state = 'queued', attempts = attempts - 1, lease_owner = NULL, "
                "lease_until = NULL, run_after = ? WHERE id = ? AND lease_owner = ?",
                (time.time(), int(unit.id), owner),
            )

    def _renew(self, db: Db, owner: str) -> None:
        with db.write() as conn:
            conn.execute("UPDATE job_deliveries SET lease_until = ? WHERE lease_owner = ? AND state = 'running'",
                         (time.time() + self.settings.lease_s, owner))

    async def run(self, executor: Executor, *, stop: asyncio.Event, concurrency: int = 1,
                  name: str | None = None) -> None:
        self._require()
        db = Db(self.path)  # the worker's own connection: its waits for the write lock never block the caller's
        owner = f"{name or worker_name()}/{uuid.uuid4().hex[:8]}"
        self._wake = wake = asyncio.Event()
        running: set[asyncio.Task[None]] = set()
        keeper = asyncio.create_task(self._keep(db, owner, stop), name="erp-plugins-outbox-lease")
        log.info("event=worker_start engine=sqlite owner=%s concurrency=%d", owner, concurrency)
        try:
            while not stop.is_set():
                wake.clear()  # before looking: work stored while we look wakes the wait below at once
                while len(running) < concurrency and not stop.is_set():
                    unit = await asyncio.to_thread(self._claim, db, owner)
                    if unit is None:
                        break
                    task = asyncio.create_task(self._run_one(db, executor, unit, owner))
                    running.add(task)
                    task.add_done_callback(running.discard)
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait()), *running]
                await asyncio.wait(waits, timeout=self.settings.poll_s, return_when=asyncio.FIRST_COMPLETED)
                for w in waits[:2]:
                    w.cancel()
        finally:
            if running:
                log.info("event=worker_stopping owner=%s finishing=%d", owner, len(running))
                await asyncio.gather(*running, return_exceptions=True)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if self._wake is wake:
                self._wake = None
            db.close()
            log.info("event=worker_stop engine=sqlite owner=%s", owner)

    async def _run_one(self, db: Db, executor: Executor, unit: Unit, owner: str) -> None:
        try:
            outcome = await run_unit(executor, unit)
        except asyncio.CancelledError:
            await asyncio.to_thread(self._release, db, unit, owner)
            raise
        await asyncio.to_thread(self._finish, db, unit, outcome, owner)

    async def _keep(self, db: Db, owner: str, stop: asyncio.Event) -> None:
        """Renew this worker's leases (a third of the lease each time) and purge expired works now and then."""
        next_purge = 0.0
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                await asyncio.to_thread(self._renew, db, owner)
                if time.monotonic() >= next_purge and not stop.is_set():
                    next_purge = time.monotonic() + 300
                    await self.purge()
            except StateError as exc:
                log.warning("event=lease_renew_failed owner=%s error=%s", owner, exc)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._now is not None:
            self._now.close()
            self._now = None
