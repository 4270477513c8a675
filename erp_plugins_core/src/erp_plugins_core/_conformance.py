"""Conformance: the checks every plugin must pass, runnable against any installed plugin from its tests.

Manifest and installation: the catalog record is valid (manifest, names, version, dependencies, hook
permissions) and `check`'s deep checks pass (files against RECORD where the install has one, code scan).
Class and lifecycle, in the test's process: the entry point imports a PluginInterface subclass constructible
with no arguments, every manifest hook names a method whose parameters take the hook's arguments, and
initialize, activate, health_check, deactivate and cleanup run within the manifest's timeouts and return what
the contract says. This checks the plugin's code, not the sandbox; tests through `erp_host` cover that.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._catalog import Catalog, deep_check
from ._config import resolve, to_stored, validate_config
from ._context import PluginContext
from ._errors import PluginError
from ._health import health_verdict
from ._hookspecs import HookInfo
from ._redact import Redactor
from ._runner import InProcessRunner
from ._secrets import SecretBox
from ._services import FilesService


@dataclass
class ConformanceReport:
    """What `check_conformance` found for one plugin: `problems` fail it, `warnings` do not."""

    name: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    emitted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"plugin {self.name!r} {'conforms' if self.ok else 'does not conform'}"
        lines = [head, *(f"  problem: {p}" for p in self.problems), *(f"  warning: {w}" for w in self.warnings)]
        return "\n".join(lines)


class _RecordingBridge:
    """The host side of the context during conformance: real files service, events recorded, no progress UI."""

    def __init__(self, report: ConformanceReport) -> None:
        self._report = report

    def get_service(self, name: str) -> Any:
        if name == "files":
            return FilesService()
        raise KeyError(name)

    async def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        self._report.emitted.append((event_type, data))

    def progress(self, done: int, total: int | None, message: str) -> None:
        return None


def signature_problems(hook: HookInfo, method_name: str, function: Callable[..., Any]) -> list[str]:
    """Why `function` cannot implement `hook`; [] when it can.

    The host fills an implementation's ordinary (positional-or-keyword) parameters by name, as pluggy does; it
    never fills keyword-only parameters or `**kwargs`, so every hook argument must be an ordinary parameter.
    """
    where = f"hooks: {hook.name} -> method {method_name}"
    try:
        sig = inspect.signature(function)
    except (TypeError, ValueError):
        return [f"{where}: its signature cannot be inspected"]
    params = sig.parameters
    problems = []
    for arg in hook.argnames:
        p = params.get(arg)
        if p is None:
            problems.append(f"{where}: has no parameter {arg!r}; the hook passes {', '.join(hook.argnames)}")
        elif p.kind is p.POSITIONAL_ONLY:
            problems.append(f"{where}: parameter {arg!r} is positional-only; the hook passes it by keyword")
        elif p.kind is p.KEYWORD_ONLY:
            # pluggy hands an implementation only the arguments it names as ordinary parameters
            problems.append(f"{where}: parameter {arg!r} is keyword-only, which the host does not fill; "
                            "make it an ordinary parameter")
    for p in params.values():
        needs_value = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
        if needs_value and p.name not in hook.argnames:
            problems.append(
                f"{where}: parameter {p.name!r} is not an argument of {hook.name} ({', '.join(hook.argnames)}); "
                "remove it or give it a default"
            )
    if hook.streaming:
        raw = inspect.unwrap(function)
        if inspect.iscoroutinefunction(raw) and not inspect.isasyncgenfunction(raw):
            problems.append(f"{where}: a streaming hook must be an async generator (async def with yield)")
    return problems


async def _step(report: ConformanceReport, what: str, limit: float, call: Callable[[], Any]) -> Any:
    """Await `call()` within `limit` seconds; a raise or timeout becomes a problem and returns the marker _FAILED."""
    try:
        async with asyncio.timeout(limit):
            result = await call()
    except TimeoutError:
        report.problems.append(f"{what} did not return within {limit:g}s")
        return _FAILED
    except Exception as exc:  # the plugin's failure is the finding
        report.problems.append(f"{what} raised {type(exc).__name__}: {exc}")
        return _FAILED
    report.steps.append(what)
    return result


_FAILED = object()


def _expect_true(report: ConformanceReport, what: str, value: Any) -> bool:
    if value is _FAILED:
        return False
    if value is not True:
        report.problems.append(f"{what} must return True (bool), got {value!r}")
        return False
    return True


async def check_conformance(
    name: str,
    *,
    config: Mapping[str, Any] | None = None,
    tenant: str = "conformance",
    catalog: Catalog | None = None,
) -> ConformanceReport:
    """Run every conformance check against the installed plugin `name` with `config`; never raises for the plugin.

    `config` is validated against the manifest's config_schema (defaults applied), as `enable` does.
    """
    report = ConformanceReport(name)
    catalog = catalog if catalog is not None else Catalog.load()
    record = catalog.get(name)
    if record is None:
        report.problems.append(
            f"no plugin named {name!r} is installed (installed: {', '.join(catalog.names()) or 'none'}); "
            "install its distribution (pip install -e .) so its erp_plugins entry point is visible"
        )
        return report
    deep = deep_check(record)
    report.problems.extend(deep.errors)
    report.warnings.extend(deep.warnings)
    if deep.findings and record.manifest is not None and record.manifest.security.sandbox:
        report.warnings.extend(
            f"code scan: {f['file']}:{f['line']}: {f['rule']}: {f['message']}" for f in deep.findings
        )
    manifest = record.manifest
    if manifest is None:
        return report
    report.steps.append("manifest")

    runner = InProcessRunner(record, tenant)
    try:
        await runner.load()
    except PluginError as exc:
        report.problems.append(str(exc))
        return report
    instance = runner.instance
    assert instance is not None
    report.steps.append("load")
    for entry in manifest.hooks:
        info = catalog.hook(entry.name)  # a core hook, or one a plugin in its dependencies provides
        if info is not None:
            report.problems.extend(signature_problems(info, entry.method, getattr(instance, entry.method)))

    try:
        box = SecretBox(_fresh_key(), source="a fresh key of the conformance check")
        stored = to_stored(validate_config(dict(config or {}), manifest), manifest, box)
        runtime, secrets = resolve(stored, manifest, box)
    except PluginError as exc:
        report.problems.append(f"config: {exc} (pass config= with the values the plugin needs)")
        return report
    context = PluginContext(
        tenant_id=tenant,
        plugin=name,
        config=runtime,
        granted=frozenset(manifest.permissions),
        bridge=_RecordingBridge(report),
        redactor=Redactor(secrets),
    )
    limit = manifest.resources.timeout
    if not _expect_true(report, "initialize()", await _step(report, "initialize()", limit,
                                                            lambda: instance.initialize(runtime, context))):
        return report
    if not _expect_true(report, "activate()", await _step(report, "activate()", limit, instance.activate)):
        await _step(report, "cleanup()", limit, instance.cleanup)
        return report
    health = await _step(report, "health_check()", manifest.health_check.timeout, instance.health_check)
    if health is not _FAILED:
        healthy, problem = health_verdict(health, Redactor(secrets))
        if problem is not None:
            report.problems.append(problem)
        elif not healthy:
            report.problems.append(f"health_check() reports unhealthy right after activate: {health!r}")
    _expect_true(report, "deactivate()", await _step(report, "deactivate()", limit, instance.deactivate))
    _expect_true(report, "cleanup()", await _step(report, "cleanup()", limit, instance.cleanup))
    return report


def _fresh_key() -> bytes:
    from cryptography.fernet import Fernet

    return Fernet.generate_key()


async def assert_conformance(
    name: str, *, config: Mapping[str, Any] | None = None, tenant: str = "conformance", catalog: Catalog | None = None
) -> ConformanceReport:
    """`check_conformance`, raising AssertionError listing every problem when the plugin does not conform."""
    report = await check_conformance(name, config=config, tenant=tenant, catalog=catalog)
    if not report.ok:
        raise AssertionError(str(report))
    return report
