"""The lifecycle of one plugin instance for one tenant, as an explicit state machine.

discovered → loaded → initialized → active ⇄ inactive → unloaded, and an error state (with its reason)
reachable from everywhere, from which a retry starts again at loaded.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from ._errors import LifecycleError


class PluginState(enum.StrEnum):
    """Where a plugin instance is in its lifecycle."""

    DISCOVERED = "discovered"
    LOADED = "loaded"
    INITIALIZED = "initialized"
    ACTIVE = "active"
    INACTIVE = "inactive"
    UNLOADED = "unloaded"
    ERROR = "error"


S = PluginState
ALLOWED: dict[PluginState, frozenset[PluginState]] = {
    S.DISCOVERED: frozenset({S.LOADED, S.ERROR}),
    S.LOADED: frozenset({S.INITIALIZED, S.UNLOADED, S.ERROR}),
    S.INITIALIZED: frozenset({S.ACTIVE, S.UNLOADED, S.ERROR}),
    S.ACTIVE: frozenset({S.INACTIVE, S.ERROR}),
    S.INACTIVE: frozenset({S.ACTIVE, S.UNLOADED, S.ERROR}),
    S.UNLOADED: frozenset({S.LOADED, S.ERROR}),
    S.ERROR: frozenset({S.LOADED, S.UNLOADED, S.ERROR}),
}


@dataclass
class Lifecycle:
    """Current state, the reason of the last error, and the history of transitions with their times."""

    plugin: str
    tenant: str
    state: PluginState = PluginState.DISCOVERED
    reason: str | None = None
    history: list[tuple[float, PluginState]] = field(default_factory=list)

    def to(self, new: PluginState, reason: str | None = None) -> None:
        """Move to `new`; LifecycleError naming the allowed next states if the move is illegal."""
        if new not in ALLOWED[self.state]:
            allowed = ", ".join(sorted(s.value for s in ALLOWED[self.state]))
            raise LifecycleError(
                f"plugin {self.plugin!r} for tenant {self.tenant!r} cannot go from {self.state.value} "
                f"to {new.value}; allowed from {self.state.value}: {allowed}"
            )
        self.state = new
        self.reason = reason if new is PluginState.ERROR else None
        self.history.append((time.time(), new))

    def fail(self, reason: str) -> None:
        """Enter the error state with `reason` (always allowed)."""
        self.to(PluginState.ERROR, reason)

    @property
    def active(self) -> bool:
        return self.state is PluginState.ACTIVE
