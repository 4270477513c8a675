"""The dependency graph: plugin dependencies (activation order, cycles) and installed-distribution requirements.

A requirement whose name is another plugin's name is a plugin dependency, compared with that plugin's
manifest version; any other name must be an installed distribution at a matching version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ._discovery import PluginRecord


def _key(name: str) -> str:
    return canonicalize_name(name)


def plugin_dependencies(record: PluginRecord, plugin_names: Iterable[str]) -> list[str]:
    """Names of the plugins `record` depends on (those among `plugin_names`)."""
    if record.manifest is None:
        return []
    by_key = {_key(n): n for n in plugin_names}
    out = []
    for req in record.manifest.requirements:
        if (req.marker is None or req.marker.evaluate()) and _key(req.name) in by_key:
            out.append(by_key[_key(req.name)])
    return out


def _find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """Every strongly connected component that is a cycle (Tarjan), members in path order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, []):
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def validate(records: list[PluginRecord], installed_version: Callable[[str], str | None]) -> list[PluginRecord]:
    """The records with dependency errors added: missing or mismatched plugins and distributions, cycles,
    and dependencies on invalid plugins (transitively)."""
    by_name: dict[str, PluginRecord] = {}
    for rec in records:
        by_name.setdefault(rec.name, rec)
    plugin_keys = {_key(n): n for n in by_name}
    errors: dict[str, list[str]] = {r.name: [] for r in records}
    edges: dict[str, list[str]] = {}
    for rec in by_name.values():
        if rec.manifest is None:
            continue
        deps: list[str] = []
        where = f"{rec.manifest_path}: dependencies"
        for req in rec.manifest.requirements:
            if req.marker is not None and not req.marker.evaluate():
                continue
            target = plugin_keys.get(_key(req.name))
            if target is not None:
                deps.append(target)
                dep = by_name[target]
                if dep.manifest is not None and req.specifier and not req.specifier.contains(
                    dep.manifest.version, prereleases=True
                ):
                    errors[rec.name].append(
                        f"{where}: needs plugin {req}, but {target} {dep.manifest.version} is installed; "
                        f"install a matching version of {dep.distribution}"
                    )
                continue
            have = installed_version(req.name)
            if have is None:
                errors[rec.name].append(
                    f"{where}: needs {req}, which is neither an installed plugin nor an installed distribution; "
                    f"run: pip install '{_pip_spec(req)}'"
                )
            elif req.specifier and not req.specifier.contains(have, prereleases=True):
                errors[rec.name].append(
                    f"{where}: needs {req}, but {req.name} {have} is installed; run: pip install '{_pip_spec(req)}'"
                )
        edges[rec.name] = deps
    for cycle in _find_cycles(edges):
        text = " -> ".join([*cycle, cycle[0]])
        for member in cycle:
            errors[member].append(f"dependency cycle among plugins: {text}; remove one of these dependencies")
    # a plugin whose plugin dependency is invalid cannot be activated either
    invalid = {n for n, r in by_name.items() if r.errors or errors[n]}
    changed = True
    while changed:
        changed = False
        for name, deps in edges.items():
            if name in invalid:
                continue
            bad = [d for d in deps if d in invalid]
            if bad:
                errors[name].append(f"depends on plugin {bad[0]}, which is invalid (see its errors)")
                invalid.add(name)
                changed = True
    return [r.with_errors(*errors[r.name]) if errors.get(r.name) else r for r in records]


def _pip_spec(req: Requirement) -> str:
    return f"{req.name}{req.specifier}"


def activation_order(names: Iterable[str], records: dict[str, PluginRecord]) -> list[str]:
    """`names` ordered so that every plugin comes after the plugins it depends on (stable otherwise)."""
    wanted = list(dict.fromkeys(names))
    done: list[str] = []
    seen: set[str] = set()

    def visit(n: str, trail: tuple[str, ...]) -> None:
        if n in seen or n in trail:
            return
        rec = records.get(n)
        for dep in plugin_dependencies(rec, records) if rec else []:
            if dep in wanted:
                visit(dep, (*trail, n))
        seen.add(n)
        done.append(n)

    for n in wanted:
        visit(n, ())
    return done
