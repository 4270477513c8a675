"""One run of a unit, as both engines do it: call the host's executor, then decide retry or final state."""

from __future__ import annotations

import logging

from ._model import Executor, Outcome, Unit
from ._settings import JobSettings, backoff_delay

__all__ = ["attempt_limit", "finish_state", "run_unit"]

log = logging.getLogger("erp_plugins.jobs")


async def run_unit(executor: Executor, unit: Unit) -> Outcome:
    """The executor's outcome; an exception escaping it (a bug, a lost store) is a retryable failure, logged."""
    try:
        outcome = await executor(unit)
    except Exception as exc:
        log.exception("event=executor_error delivery=%s plugin=%s tenant=%s", unit.id, unit.plugin, unit.tenant)
        outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}", error_kind="host")
    level = logging.INFO if outcome.success else logging.WARNING
    log.log(level, "event=delivery_run delivery=%s work=%s kind=%s tenant=%s plugin=%s hook=%s attempt=%d "
            "success=%s error_kind=%s", unit.id, unit.work, unit.kind, unit.tenant, unit.plugin, unit.hook,
            unit.attempts + 1, outcome.success, outcome.error_kind or "-")
    return outcome


def attempt_limit(settings: JobSettings, own: int | None) -> int:
    """How many runs a delivery gets: its own limit (stored from its plugin's manifest), else the host setting."""
    return own if own is not None else settings.max_attempts


def finish_state(settings: JobSettings, unit: Unit, outcome: Outcome) -> tuple[str, float]:
    """(state, seconds until the next run) after a run: succeeded; queued again with backoff; or failed."""
    if outcome.success:
        return "succeeded", 0.0
    runs = unit.attempts + 1
    if outcome.permanent or runs >= attempt_limit(settings, unit.max_attempts):
        return "failed", 0.0
    return "queued", backoff_delay(settings, runs)
