"""The catalog: discovered plugins with every check that needs no import (manifest, names, dependencies,
cycles, api_version, hook permissions), and the deeper `check` that adds file integrity and the code scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._discovery import Discovery, PluginRecord, discover
from ._graph import activation_order, plugin_dependencies, validate
from ._hookspecs import HOOKS


def _hook_permission_errors(rec: PluginRecord) -> list[str]:
    if rec.manifest is None:
        return []
    declared = set(rec.manifest.permissions)
    out = []
    for entry in rec.manifest.hooks:
        perm = HOOKS[entry.name].permission
        if perm is not None and perm not in declared:
            out.append(
                f"{rec.manifest_path}: hooks: {entry.name} needs permission {perm!r}, which permissions does not "
                f"declare; add it to permissions"
            )
    return out


def validate_discovery(found: Discovery) -> list[PluginRecord]:
    """The discovered records with every import-free check's errors added (hook permissions, dependencies)."""
    records = [r.with_errors(*_hook_permission_errors(r)) for r in found.records]
    return validate(records, found.installed_version)


class Catalog:
    """Every discovered plugin, validated; `get(name)` for one, `records` for all in name order."""

    def __init__(self, found: Discovery) -> None:
        self.discovery = found
        self.records: list[PluginRecord] = found.records if found.validated else validate_discovery(found)
        self._by_name: dict[str, PluginRecord] = {}
        for rec in self.records:
            self._by_name.setdefault(rec.name, rec)

    @classmethod
    def load(cls, *, use_cache: bool = True) -> Catalog:
        """Discover the installed plugins and validate them; a cache hit carries records validated when cached."""
        return cls(discover(use_cache=use_cache, validate=validate_discovery))

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
    """What an administrator's acceptance of a plugin's findings is tied to: this exact distribution version."""
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
    if dist is None:
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
