"""Durable events and background hooks: an engine seam with an SQLite outbox and a procrastinate engine.

`open_engine(location)` picks the engine for a state location; the host stores events and jobs through it
and hands it an Executor that runs one unit (one plugin's delivery) with the host's checks.
"""

from __future__ import annotations

from ._engine import JobEngine, is_postgres_url, open_engine, worker_name
from ._model import STATES, Delivery, EventChainTooDeep, Executor, JobNotFound, Outcome, Target, Unit, Work, job_view
from ._settings import JobSettings, backoff_delay

__all__ = [
    "STATES",
    "Delivery",
    "EventChainTooDeep",
    "Executor",
    "JobEngine",
    "JobNotFound",
    "JobSettings",
    "Outcome",
    "Target",
    "Unit",
    "Work",
    "backoff_delay",
    "is_postgres_url",
    "job_view",
    "open_engine",
    "worker_name",
]
