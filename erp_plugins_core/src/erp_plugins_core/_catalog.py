"""The catalog: discovered plugins with every check that needs no import (manifest, names, dependencies,
cycles, api_version, hook permissions), and the deeper `check` that adds file integrity and the code scan.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._discovery import Discovery, PluginRecord, discover
from ._graph import activation_order, plugin_dependencies, validate
from ._hookspecs import HOOKS, HookInfo, parse_type, set_provided
from ._permissions import PERMISSIONS


def provided_infos(records: list[PluginRecord]) -> dict[str, HookInfo]:
    """The hooks valid plugins provide (`provides_hooks`), as HookInfos, from their manifests alone."""
    out: dict[str, HookInfo] = {}
    for rec in records:
        if rec.errors or not _provides_hooks(rec) or rec.manifest is None:
            continue
        for h in rec.manifest.provides_hooks:
            types = tuple((arg, parse_type(t)) for arg, t in h.arguments.items())
            defaults = tuple((arg, None) for arg, accepted in types if type(None) in accepted)
            out.setdefault(h.name, HookInfo(h.name, h.permission, tuple(h.arguments), defaults=defaults,
                                            provider=rec.name, types=types, firstresult=h.firstresult,
                                            returns=h.returns, description=h.description))
    return out


def _provides_hooks(rec: PluginRecord) -> bool:
    """Whether `rec`'s manifest provides hooks, read from a cache hit's manifest data while its model is not built
    (building every plugin's model is most of what a warm load would cost)."""
    data = rec._manifest_data
    if data is not None:
        return bool(data.get("provides_hooks"))
    return rec._manifest is not None and bool(rec._manifest.provides_hooks)


def _providers(records: list[PluginRecord]) -> dict[str, list[PluginRecord]]:
    out: dict[str, list[PluginRecord]] = {}
    for rec in records:
        for h in rec.manifest.provides_hooks if rec.manifest else []:
            out.setdefault(h.name, []).append(rec)
    return out


def _defined_permissions(providers: dict[str, list[PluginRecord]]) -> dict[str, str]:
    """Plugin permission -> the plugin whose `provides_hooks` uses it."""
    defined: dict[str, str] = {}
    for owners in providers.values():
        for o in owners:
            for h in o.manifest.provides_hooks if o.manifest else []:
                if h.permission and h.permission not in PERMISSIONS:
                    defined[h.permission] = o.name
    return defined


def _provided_hook_errors(rec: PluginRecord, providers: dict[str, list[PluginRecord]],
                          names: list[str], defined: dict[str, str]) -> list[str]:
    """What is wrong with `rec`'s use of plugins' own hooks: clashes, unknown hooks, missing dependencies.

    `defined` is `_defined_permissions(providers)`; the plugin's dependencies are worked out only for a hook some
    plugin provides (most plugins implement core hooks only, and the look-up walks every plugin's name).
    """
    m = rec.manifest
    if m is None:
        return []
    where = rec.manifest_path
    out = []
    for h in m.provides_hooks:
        others = [o.name for o in providers.get(h.name, []) if o is not rec and o.name != rec.name]
        if others:
            out.append(f"{where}: provides_hooks: {h.name} of plugin {rec.name} clashes with the hook of that name "
                       f"plugin {others[0]} provides; rename one of them")
    deps: set[str] | None = None
    for entry in m.hooks:
        if entry.name in HOOKS:
            continue
        owners = providers.get(entry.name, [])
        if not owners:
            out.append(f"{where}: hooks: {entry.name} of plugin {rec.name} is no core hook, and no installed plugin "
                       "provides it (provides_hooks); install its provider or fix the name")
            continue
        provider = owners[0]
        if deps is None:
            deps = set(plugin_dependencies(rec, names)) | {rec.name}
        if provider.name not in deps:
            out.append(f"{where}: hooks: plugin {rec.name} implements {entry.name}, which plugin {provider.name} "
                       f"provides, but does not list {provider.name} in dependencies; add it")
    for perm in m.permissions:
        if perm not in PERMISSIONS and perm not in defined:
            out.append(f"{where}: permissions: {perm} is no core permission, and no installed plugin's "
                       "provides_hooks uses it; fix the name")
    return out


def _hook_permission_errors(rec: PluginRecord, provided: dict[str, HookInfo] | None = None) -> list[str]:
    if rec.manifest is None:
        return []
    declared = set(rec.manifest.permissions)
    out = []
    for entry in rec.manifest.hooks:
        info = HOOKS.get(entry.name) or (provided or {}).get(entry.name)
        perm = info.permission if info is not None else None
        if perm is not None and perm not in declared:
            out.append(
                f"{rec.manifest_path}: hooks: {entry.name} needs permission {perm!r}, which permissions does not "
                f"declare; add it to permissions"
            )
    return out


def validate_discovery(found: Discovery) -> list[PluginRecord]:
    """The discovered records with every import-free check's errors added (hook permissions, plugins' own hooks,
    dependencies)."""
    providers = _providers(found.records)
    names = [r.name for r in found.records]
    provided = provided_infos(found.records)
    defined = _defined_permissions(providers)
    records = [r.with_errors(*_provided_hook_errors(r, providers, names, defined),
                             *_hook_permission_errors(r, provided))
               for r in found.records]
    return validate(records, found.installed_version)


class Catalog:
    """Every discovered plugin, validated; `get(name)` for one, `records` for all in name order."""

    def __init__(self, found: Discovery) -> None:
        self.discovery = found
        self.records: list[PluginRecord] = found.records if found.validated else validate_discovery(found)
        self._by_name: dict[str, PluginRecord] = {}
        for rec in self.records:
            self._by_name.setdefault(rec.name, rec)
        #: Hooks the valid plugins provide; registered so that dispatch, the CLI and the sandbox know them.
        self.provided: dict[str, HookInfo] = provided_infos(self.records)
        set_provided(self.provided)

    @classmethod
    def load(cls, *, use_cache: bool = True, plugins_dirs: Iterable[str | os.PathLike[str]] | None = None) -> Catalog:
        """Discover the installed plugins and the folder plugins of `plugins_dirs` and ERP_PLUGINS_PATH, and validate
        them; a cache hit carries records validated when cached."""
        from ._searchpath import plugins_dirs as resolve_dirs

        dirs = resolve_dirs(plugins_dirs or ())
        from ._listing import listing_entry

        # the cache also keeps what `list` prints, so the command line answers `list` from the file alone
        return cls(discover(use_cache=use_cache, validate=validate_discovery, plugins_dirs=dirs,
                            listing=listing_entry))

    def hook(self, name: str) -> HookInfo | None:
        """A core hook's or a provided hook's info."""
        return HOOKS.get(name) or self.provided.get(name)

    def get(self, name: str) -> PluginRecord | None:
        """The plugin named `name`, or None."""
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def dependencies(self, name: str) -> list[str]:
        """Plugins that `name` depends on."""
        rec = self._by_name.get(name)
        return plugin_dependencies(rec, self._by_name) if rec else []

    def dependents(self, name: str) -> list[str]:
        """Plugins that depend on `name`."""
        return [n for n in self._by_name if name in self.dependencies(n)]

    def activation_order(self, names: list[str]) -> list[str]:
        """`names` with dependencies first."""
        return activation_order(names, self._by_name)


ACCEPTED_FINDINGS = "accepted_findings"  # state-store setting: plugin name -> "distribution==version"


def acceptance_key(rec: PluginRecord) -> str:
    """What an administrator's acceptance of a plugin's findings is tied to: this exact distribution version, or
    for a folder plugin (whose version need not change with its code) the digest of its files."""
    if rec.folder is not None:
        import hashlib
        from pathlib import Path

        from ._folders import folder_files

        digest = hashlib.sha256()
        for path, rel in folder_files(rec.folder):
            try:
                digest.update(rel.encode() + b"\0" + Path(path).read_bytes() + b"\0")
            except OSError:
                digest.update(rel.encode() + b"\0unreadable\0")
        return f"folder:{rec.folder}@{digest.hexdigest()[:32]}"
    return f"{rec.distribution}=={rec.dist_version}"


@dataclass
class CheckReport:
    """`erp-plugins check` for one plugin."""

    name: str
    valid: bool
    errors: list[str] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "valid": self.valid, "errors": self.errors, "findings": self.findings,
                "warnings": self.warnings}


def deep_check(rec: PluginRecord, *, lock: Any = None, accepted_findings: bool = False) -> CheckReport:
    """Everything `list` checks, plus installed files against RECORD (and the lock) and the code scan.

    Findings fail a plugin only when it would run unsandboxed; the sandbox is the boundary, the scan advice.
    """
    from ._integrity import check_lock, editable_location, verify_distribution
    from ._scan import scan_distribution

    errors = list(rec.errors)
    warnings: list[str] = []
    findings: list[dict[str, Any]] = []
    dist = rec.distribution_object()
    if rec.folder is not None:
        # a folder has no RECORD: its files are checked as they are (the code scan below still reads them all)
        warnings.append(f"{rec.folder}: file integrity does not apply to a folder plugin (no RECORD)")
        code = rec.code_distribution()
        for f in scan_distribution(code) if code is not None else []:
            findings.append({"file": f.file, "line": f.line, "rule": f.rule, "message": f.message})
    elif dist is None:
        errors.append(f"{rec.distribution}: installed files cannot be located for verification")
    else:
        editable = editable_location(dist) is not None
        for problem in verify_distribution(dist):
            # an editable (development) install has no RECORD of its sources: said, but not a failure
            (warnings if editable else errors).append(str(problem))
        if lock is not None:
            errors.extend(check_lock(dist, lock))
        for f in scan_distribution(dist):
            findings.append({"file": f.file, "line": f.line, "rule": f.rule, "message": f.message})
    unsandboxed = rec.manifest is not None and not rec.manifest.security.sandbox
    if findings and unsandboxed and not accepted_findings:
        errors.append(
            f"{len(findings)} code-scan finding(s) in a plugin that asks to run unsandboxed "
            "(security.sandbox: false); review them, then accept with: erp-plugins check --accept-findings "
            f"{rec.name}"
        )
    return CheckReport(rec.name, not errors, errors, findings, warnings)
