"""Checks of plugins' results before they are handed on: data-only UI components (`ui_components`) and the
result types plugins' own hooks declare (`provides_hooks[].returns`). A result that fails becomes that plugin's
failure (`error_kind` `invalid_result`), so callers only ever see results that passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._hookspecs import hook_info

if TYPE_CHECKING:
    from ._dispatch import HookResult


def _returns_check(hook: str) -> Callable[[Any], str | None] | None:
    """A provided hook's result-type check (its manifest's `returns`), or None when it declares none."""
    info = hook_info(hook)
    if info is None or info.provider is None or not info.returns or info.returns == "None":
        return None
    from ._hookspecs import parse_type

    accepted = parse_type(info.returns)

    def check(result: Any) -> str | None:
        if isinstance(result, accepted) and not (isinstance(result, bool) and bool not in accepted):
            return None
        return f"{hook} must return {info.returns} (provides_hooks of {info.provider}), got {type(result).__name__}"

    return check


def _ui_problem(result: Any) -> str | None:
    from ._ui import component_problem

    return component_problem(result)


#: Per hook: what is wrong with a plugin's successful result (None when nothing), for hooks whose results the
#: host checks before handing them on (`ui_components`: data-only components).
RESULT_CHECKS: dict[str, Callable[[Any], str | None]] = {"ui_components": _ui_problem}


def check_results(hook: str, results: list[HookResult]) -> None:
    """Turn each successful result that fails its hook's result check into that plugin's failure, in place."""
    check = RESULT_CHECKS.get(hook) or _returns_check(hook)
    if check is None:
        return
    for r in results:
        if r is not None and r.success:
            problem = check(r.result)
            if problem is not None:
                r.success, r.result, r.error, r.error_kind = False, None, f"{r.plugin}: {problem}", "invalid_result"
