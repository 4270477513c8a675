"""What the engines store and report: a unit of work (one plugin's delivery), its outcome, and the job view.

An event or a submitted job is a *work* with an id; it has one *delivery* per target plugin, fixed when it
is stored. A delivery is what a worker runs, retries and fails on its own, so one plugin's failure never
re-runs another plugin's side effects. `job_view` folds the deliveries into the contract's job shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .._errors import PluginError

__all__ = [
    "STATES",
    "Delivery",
    "EventChainTooDeep",
    "Executor",
    "JobNotFound",
    "Outcome",
    "Target",
    "Unit",
    "job_view",
    "newest",
    "pending_deliveries",
    "work_state",
]

#: The states of a job or of one delivery, as the contract names them.
STATES = ("queued", "running", "succeeded", "failed")


class JobNotFound(PluginError):
    """No event or job has this id (never stored, or removed after the retention period)."""


class EventChainTooDeep(PluginError):
    """An event emitted while handling events nested too deep (plugins emitting in a loop); never retried."""


@dataclass(frozen=True, slots=True)
class Target:
    """A plugin a work goes to, with its manifest's delivery settings, fixed when the work is stored.

    ordered: the delivery waits for the same tenant's earlier unfinished deliveries to this plugin (the default);
    unordered ones run as soon as they are due. max_attempts: the delivery's own retry limit; None leaves it to
    the running worker's JobSettings.max_attempts.
    """

    plugin: str
    ordered: bool = True
    max_attempts: int | None = None

    @classmethod
    def of(cls, target: str | Target) -> Target:
        """A Target as given, or a bare plugin name with the default settings."""
        return target if isinstance(target, Target) else cls(target)

    def to_json(self) -> list[Any]:
        """The compact form an event row keeps its targets in until the relay fans it out."""
        return [self.plugin, self.ordered, self.max_attempts]

    @classmethod
    def from_json(cls, value: list[Any]) -> Target:
        return cls(str(value[0]), ordered=bool(value[1]), max_attempts=value[2])


def newest(stored: list[Work], works: list[Work], limit: int) -> list[Work]:
    """Events not yet relayed and works merged, newest first, at most `limit`.

    Read in that order, an event relayed in between is in both lists: its relayed form is kept.
    """
    known = {w.id for w in works}
    return sorted([w for w in stored if w.id not in known] + works, key=lambda w: w.created, reverse=True)[
        :max(0, limit)]


def pending_deliveries(targets: Iterable[Target]) -> list[Delivery]:
    """How an event not yet relayed lists its deliveries: one queued, never run, per target."""
    return [Delivery(id=None, plugin=t.plugin, state="queued", attempts=0) for t in targets]


@dataclass(slots=True)
class Unit:
    """One plugin's part of an event or job, as a worker runs it (once per attempt)."""

    id: str
    work: str
    kind: str  # "event" or "job"
    tenant: str
    plugin: str
    hook: str
    args: dict[str, Any]
    depth: int = 0  # events: how deep in a chain of events the handler runs
    attempts: int = 0  # runs before this one
    max_attempts: int | None = None  # the delivery's own limit (its plugin's manifest); None: the host setting
    user: dict[str, Any] | None = None  # the user_context of the caller that emitted or submitted it


@dataclass(slots=True)
class Outcome:
    """How one run of a unit ended. `permanent` failures (plugin disabled, permission missing) are not retried."""

    success: bool
    result: Any = None
    error: str | None = None
    error_kind: str | None = None
    permanent: bool = False


#: Runs one unit for the host (checks, then the plugin's hook); never raises for the plugin's own failures.
Executor = Callable[[Unit], Awaitable[Outcome]]


@dataclass(slots=True)
class Delivery:
    """One delivery as listed: its plugin, state, runs so far and its last result or error.

    `id` is None while its event waits for the relay (stored, not yet fanned out into deliveries): it is then
    listed as queued with no run.
    """

    id: str | None
    plugin: str
    state: str
    attempts: int
    result: Any = None
    error: str | None = None
    error_kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "plugin": self.plugin, "state": self.state, "success": self.state == "succeeded",
                "attempts": self.attempts, "result": self.result, "error": self.error, "error_kind": self.error_kind}


@dataclass(slots=True)
class Work:
    """An event or a job as stored, with its deliveries."""

    id: str
    kind: str
    tenant: str
    hook: str
    args: dict[str, Any]
    created: float
    source: str | None = None
    idempotency_key: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)


def work_state(states: Iterable[str]) -> str:
    """A work's state from its deliveries': running while any runs, queued while any waits, else failed or done."""
    seen = set(states)
    for state in ("running", "queued", "failed"):
        if state in seen:
            return state
    return "succeeded"


def job_view(work: Work) -> dict[str, Any]:
    """The contract's shape `{id, hook, tenant, state, results, attempts, error}`, plus kind, created, counts."""
    failed = [d for d in work.deliveries if d.state == "failed"]
    view: dict[str, Any] = {
        "id": work.id,
        "kind": work.kind,
        "hook": work.hook,
        "tenant": work.tenant,
        "state": work_state(d.state for d in work.deliveries),
        "results": [d.to_json() for d in work.deliveries],
        "attempts": max((d.attempts for d in work.deliveries), default=0),
        "error": "; ".join(f"{d.plugin}: {d.error}" for d in failed) or None,
        "created": work.created,
    }
    if work.kind == "event":
        view["event_type"] = work.args.get("event_type")
        view["data"] = work.args.get("data")
        view["source"] = work.source
    else:
        view["idempotency_key"] = work.idempotency_key
    return view
