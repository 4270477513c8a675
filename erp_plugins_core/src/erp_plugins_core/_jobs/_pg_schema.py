"""The fleet engine's own tables next to procrastinate's, and their versions.

Version 1: erp_works (one row per event or job, with the procrastinate job ids of its deliveries) and
erp_job_results (a delivery's result or last error).
Version 2: erp_inbox, where `emit` writes an event as one row holding its targets (a heap with no index: the
cheapest row PostgreSQL can commit; it holds only events not yet relayed); the relay `erp_relay_v1`, which moves
its rows, in `seq` (emit) order, into erp_works and one procrastinate job per target, all in one transaction
under an advisory lock (one relay at a time; a relay that dies commits nothing, so an event is relayed exactly
once; its commit does not wait for the WAL flush, see the function); `wait` waits for a relay at work instead
of returning -1, as a job's submit does so that the events stored before it get their jobs first; and
erp_works.user_ctx: the caller's user_context, which the hook runs with.
"""

from __future__ import annotations

from typing import Any

from .._errors import StateError

__all__ = ["NOTIFY_CHANNEL", "SCHEMA_VERSION", "create_schema"]

SCHEMA_VERSION = 2
#: The channel `emit` notifies (in its own statement's transaction) so that relays wake at once (`_pg_sql.EMIT`
#: names it literally).
NOTIFY_CHANNEL = "erp_plugins_relay"
#: pg_advisory_xact_lock key serializing schema creation between processes opening the database at once.
_SCHEMA_LOCK = 0x6572_705F_6A6F_6273 & 0x7FFF_FFFF_FFFF_FFFF

_V1 = """
CREATE TABLE IF NOT EXISTS erp_works (
    id uuid PRIMARY KEY,
    kind text NOT NULL,
    tenant text NOT NULL,
    hook text NOT NULL,
    args jsonb NOT NULL,
    source text,
    depth integer NOT NULL DEFAULT 0,
    idem_key text,
    job_ids bigint[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS erp_works_idem ON erp_works (tenant, idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS erp_works_list ON erp_works (kind, tenant, created_at DESC);
CREATE TABLE IF NOT EXISTS erp_job_results (
    job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    result jsonb,
    error text,
    error_kind text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS erp_jobs_schema (version integer NOT NULL);
"""
_V2 = """
ALTER TABLE erp_works ADD COLUMN IF NOT EXISTS user_ctx jsonb;
CREATE TABLE IF NOT EXISTS erp_inbox (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id uuid NOT NULL,
    tenant text NOT NULL,
    args jsonb NOT NULL,
    source text,
    depth integer NOT NULL,
    targets jsonb NOT NULL,
    user_ctx jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION erp_relay_v1(batch integer, queue text, task text, wait boolean) RETURNS integer
    LANGUAGE plpgsql
AS $$
DECLARE
    taken bigint[];
    ids bigint[];
BEGIN
    IF wait THEN
        PERFORM pg_advisory_xact_lock(7310028700419189857);
    ELSIF NOT pg_try_advisory_xact_lock(7310028700419189857) THEN
        RETURN -1;
    END IF;
    SELECT array_agg(seq ORDER BY seq) INTO taken
      FROM (SELECT seq FROM erp_inbox ORDER BY seq LIMIT batch FOR UPDATE) AS p;
    IF taken IS NULL THEN
        RETURN 0;
    END IF;
    IF NOT wait THEN
        -- the relay's own transaction need not wait for its WAL flush: a worker's fetch of one of these jobs
        -- commits synchronously, which flushes this commit first; lost in a crash before that, the events are
        -- still in the inbox (durable since emit) and no job of theirs has run. A submit's (wait) stays durable.
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    SELECT procrastinate_defer_jobs_v1(array_agg(ROW(
               queue, task, 0,
               CASE WHEN (t.value->>1)::boolean THEN e.tenant || '/' || (t.value->>0) END,
               NULL,
               jsonb_build_object('work', e.id::text, 'kind', 'event', 'tenant', e.tenant, 'plugin', t.value->>0,
                                  'hook', 'on_event', 'args', e.args, 'depth', e.depth)
                 || CASE WHEN jsonb_typeof(t.value->2) = 'number'
                         THEN jsonb_build_object('max_attempts', t.value->2) ELSE '{}'::jsonb END
                 || CASE WHEN e.user_ctx IS NOT NULL
                         THEN jsonb_build_object('user', e.user_ctx) ELSE '{}'::jsonb END,
               NULL)::procrastinate_job_to_defer_v1 ORDER BY e.seq, t.ord))
      INTO ids
      FROM erp_inbox AS e CROSS JOIN LATERAL jsonb_array_elements(e.targets) WITH ORDINALITY AS t(value, ord)
     WHERE e.seq = ANY(taken);
    INSERT INTO erp_works (id, kind, tenant, hook, args, source, depth, user_ctx, job_ids, created_at)
    SELECT e.id, 'event', e.tenant, 'on_event', e.args, e.source, e.depth, e.user_ctx,
           COALESCE((SELECT array_agg(j.id ORDER BY j.id) FROM procrastinate_jobs AS j
                      WHERE j.id = ANY(ids) AND j.args->>'work' = e.id::text), '{}'), e.created_at
      FROM erp_inbox AS e WHERE e.seq = ANY(taken);
    DELETE FROM erp_inbox WHERE seq = ANY(taken);
    RETURN array_length(taken, 1);
END;
$$;
"""


async def create_schema(conn: Any, procrastinate_schema: str) -> None:
    """procrastinate's schema and ours, once, under an advisory lock (many processes may open at once)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        cur = await conn.execute("SELECT to_regclass('procrastinate_jobs')")
        if (await cur.fetchone())[0] is None:
            await conn.execute(procrastinate_schema)
        await conn.execute(_V1)
        cur = await conn.execute("SELECT MAX(version) FROM erp_jobs_schema")
        version = (await cur.fetchone())[0] or 0
        if version > SCHEMA_VERSION:
            raise StateError(f"the job tables have schema version {version}, newer than the "
                             f"{SCHEMA_VERSION} this erp-plugins-core knows; upgrade erp-plugins-core")
        if version < SCHEMA_VERSION:
            await conn.execute(_V2)
            await conn.execute("DELETE FROM erp_jobs_schema")
            await conn.execute("INSERT INTO erp_jobs_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
