"""The SQL the fleet engine runs on erp_works, erp_inbox and procrastinate's tables (their schema: `_pg_schema`)."""

from __future__ import annotations

__all__ = ["DELIVERIES", "EMIT", "INBOX", "INSERT", "PURGE", "REQUEUE_STALLED", "STATE", "STATUSES", "WORKS"]

INSERT = """
INSERT INTO erp_works (id, kind, tenant, hook, args, source, depth, idem_key, user_ctx, job_ids)
VALUES (%(id)s, %(kind)s, %(tenant)s, %(hook)s, %(args)s, %(source)s, %(depth)s, %(key)s, %(user)s,
        COALESCE(procrastinate_defer_jobs_v1(%(jobs)s::procrastinate_job_to_defer_v1[]), '{}'))
"""
#: An event: its one row, and a wake-up for the relays (on NOTIFY_CHANNEL), in one autocommitted statement.
EMIT = """
WITH e AS (
    INSERT INTO erp_inbox (id, tenant, args, source, depth, targets, user_ctx)
    VALUES (%s, %s, %s::jsonb, %s, %s, %s::jsonb, %s::jsonb) RETURNING 1
) SELECT pg_notify('erp_plugins_relay', '') FROM e
"""
WORKS = "SELECT id::text, kind, tenant, hook, args, extract(epoch FROM created_at), source, idem_key, job_ids " \
        "FROM erp_works w"
INBOX = "SELECT id::text, tenant, args, extract(epoch FROM created_at), source, targets FROM erp_inbox"
DELIVERIES = """
SELECT j.id, j.args->>'plugin', j.status::text, j.attempts, r.result, r.error, r.error_kind
  FROM procrastinate_jobs j LEFT JOIN erp_job_results r ON r.job_id = j.id
 WHERE j.id = ANY(%(ids)s) ORDER BY j.id
"""
#: procrastinate's job statuses in the contract's words.
STATE = {"todo": "queued", "doing": "running", "aborting": "running", "succeeded": "succeeded",
         "failed": "failed", "cancelled": "failed", "aborted": "failed"}
STATUSES = {"queued": ["todo"], "running": ["doing", "aborting"], "failed": ["failed", "cancelled", "aborted"]}
#: Re-queue the jobs of workers whose heartbeat stopped; row locks and the re-checked WHERE make it safe to run
#: from every worker at once (a job another worker has just taken again is not touched).
REQUEUE_STALLED = """
SELECT procrastinate_retry_job_v2(j.id, now(), NULL, NULL, NULL)
  FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
 WHERE j.status = 'doing' AND j.task_name = %(task)s
   AND (j.worker_id IS NULL OR w.last_heartbeat < now() - make_interval(secs => %(secs)s))
   FOR UPDATE OF j SKIP LOCKED
"""
PURGE = """
WITH old AS (
    DELETE FROM erp_works w
     WHERE created_at < now() - make_interval(secs => %(secs)s)
       AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j
                        WHERE j.id = ANY(w.job_ids) AND j.status IN ('todo', 'doing', 'aborting'))
    RETURNING job_ids
)
DELETE FROM procrastinate_jobs WHERE id IN (SELECT unnest(job_ids) FROM old)
"""
