"""Hook arguments: bound to a hook's spec (defaults applied) and type-checked before any plugin is called.

Core hooks take the types in `_hookspecs.ARG_TYPES`; a hook a plugin provides takes those its manifest declares.
Every call pays for `bind_arguments`, so the common case (every argument given, of an accepted type) is one pass.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from ._errors import HookArgumentError, UnknownHookError
from ._hookspecs import HOOKS, STR_LISTS, HookInfo, arg_types, hook_info


def info_of(hook: str) -> HookInfo:
    """A core or provided hook's info; UnknownHookError when no hook has that name."""
    info = hook_info(hook)
    if info is None:
        raise UnknownHookError(f"no hook named {hook!r}")
    return info


def positional(hook: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function giving the bound arguments of `hook` as a tuple in spec order."""
    names = info_of(hook).argnames
    if len(names) > 1:
        return lambda kw, _get=operator.itemgetter(*names): _get(kw)
    if names:
        return lambda kw, _name=names[0]: (kw[_name],)
    return lambda kw: ()


def _checks(hook: str) -> tuple[tuple[str, frozenset[type], bool], ...]:
    """(name, exact accepted types, must be a list of strings) for each argument of `hook`."""
    info = info_of(hook)
    return tuple((n, frozenset(arg_types(info, n)), info.provider is None and n in STR_LISTS) for n in info.argnames)


#: Per core hook: its bound arguments as a tuple in spec order, for implementations called positionally.
POSITIONAL: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {hook: positional(hook) for hook in HOOKS}

#: Per core hook: (name, exact accepted types, must be a list of strings) for each of its arguments.
_CHECKS: dict[str, tuple[tuple[str, frozenset[type], bool], ...]] = {hook: _checks(hook) for hook in HOOKS}


def bind_arguments(hook: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The hook's keyword arguments with defaults applied; TypeError naming unknown, missing or mistyped ones.

    Takes ownership of `kwargs` (callers pass the dict of their own `**kwargs`): when every argument is given
    with exactly an accepted type, that dict is returned as it is, after one pass over the arguments (every
    call pays for this check, so the common case is kept to a dict lookup and a set lookup per argument).
    """
    checks = _CHECKS.get(hook) or _checks(hook)
    if len(kwargs) == len(checks):
        try:
            for name, types, str_list in checks:
                value = kwargs[name]
                if type(value) not in types or (str_list and not all(type(v) is str for v in value)):
                    break
            else:
                return kwargs
        except KeyError:  # an unknown argument in place of a known one: named below
            pass
    info = info_of(hook)
    unknown = sorted(set(kwargs) - set(info.argnames))
    if unknown:
        raise HookArgumentError(
            f"hook {hook} takes {', '.join(info.argnames)}; unknown argument(s): {', '.join(unknown)}"
        )
    out = {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in info.defaults}
    out.update(kwargs)
    missing = [a for a in info.argnames if a not in out]
    if missing:
        raise HookArgumentError(f"hook {hook} needs argument(s): {', '.join(missing)}")
    for name in info.argnames:
        value, types = out[name], arg_types(info, name)
        str_list = info.provider is None and name in STR_LISTS
        if not isinstance(value, types) or (str_list and not all(isinstance(v, str) for v in value)) or (
            isinstance(value, bool) and bool not in types  # True is an int to isinstance, not to a manifest
        ):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types if t is not int or
                               float not in types)
            if str_list:
                want = "list of strings"
            raise HookArgumentError(f"hook {hook} argument {name} must be {want}, got {type(value).__name__}")
    return out
