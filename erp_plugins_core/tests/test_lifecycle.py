"""The lifecycle state machine."""

from __future__ import annotations

import pytest

from erp_plugins_core._errors import LifecycleError
from erp_plugins_core._lifecycle import Lifecycle, PluginState

S = PluginState


def test_normal_path_and_history() -> None:
    life = Lifecycle("p", "t")
    for state in (S.LOADED, S.INITIALIZED, S.ACTIVE, S.INACTIVE, S.ACTIVE, S.INACTIVE, S.UNLOADED, S.LOADED):
        life.to(state)
    assert life.state is S.LOADED
    assert [s for _, s in life.history][-1] is S.LOADED and len(life.history) == 8


def test_illegal_transition_names_allowed_states() -> None:
    life = Lifecycle("p", "acme")
    expected = "cannot go from discovered to active; allowed from discovered: error, loaded"
    with pytest.raises(LifecycleError, match=expected):
        life.to(S.ACTIVE)
    assert life.state is S.DISCOVERED


def test_error_keeps_reason_and_allows_retry() -> None:
    life = Lifecycle("p", "t")
    life.to(S.LOADED)
    life.fail("initialize raised ValueError")
    assert life.state is S.ERROR and life.reason == "initialize raised ValueError"
    life.to(S.LOADED)
    assert life.reason is None
