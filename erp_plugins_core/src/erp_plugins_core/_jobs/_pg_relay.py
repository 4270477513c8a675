"""The relay on PostgreSQL: events stored by `emit` (one row each in erp_inbox) fanned out into procrastinate jobs.

`erp_relay_v1` (see `_pg_schema`) does it in one statement, so in one transaction: one relay works at a time (an
advisory lock; another process that finds it taken waits for the next notification or poll), taking the
events in emit order, deferring one job per target with the target's `tenant/plugin` lock, moving the event
into erp_works with its job ids. A relay killed on the way commits nothing and the events stay for the next
one, so a delivery is never lost nor stored twice; job ids follow the events' order, which procrastinate's
locks keep per plugin.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from ._model import Target

__all__ = ["RELAY_BATCH", "job_row", "relay_once"]

#: Events one relay transaction takes; more wait for the next one, right after.
RELAY_BATCH = 500


def job_row(queue: str, task: str, work: str, kind: str, tenant: str, hook: str, args: Any, depth: int,
            target: Target, user: Any) -> tuple[Any, ...]:
    """A procrastinate_job_to_defer_v1 for one target's delivery of a job (no lock when the plugin is unordered).

    The relay builds an event's in SQL, with the same keys.
    """
    task_args: dict[str, Any] = {"work": work, "kind": kind, "tenant": tenant, "plugin": target.plugin,
                                 "hook": hook, "args": args, "depth": depth}
    if target.max_attempts is not None:
        task_args["max_attempts"] = target.max_attempts
    if user is not None:
        task_args["user"] = user
    lock = f"{tenant}/{target.plugin}" if target.ordered else None
    return (queue, task, 0, lock, None, Jsonb(task_args), None)


async def relay_once(conn: Any, queue: str, task: str, *, wait: bool = False) -> int | None:
    """Relay up to RELAY_BATCH stored events on `conn`: how many, or None if another relay is at work (with
    `wait`, waits for it instead). Its own transaction on an autocommit connection, else the caller's."""
    cur = await conn.execute("SELECT erp_relay_v1(%s, %s, %s, %s)", (RELAY_BATCH, queue, task, wait))
    count = (await cur.fetchone())[0]
    return None if count < 0 else int(count)
