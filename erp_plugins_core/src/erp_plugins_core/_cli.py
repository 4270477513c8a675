"""The `erp-plugins` command line (click).

Its module imports only click and light modules, so `--help` and every command's `--help` start fast; what a
command needs (discovery, the catalog, the host) is imported inside it. `list` from a warm discovery cache does
not reach this module at all (`__main__`, `_listing`).

Exit codes: 0 ok, 1 a check or call failed, 2 bad usage (unknown command, plugin or hook, malformed
option). `--json` prints one JSON document on stdout and nothing else; diagnostics go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import click

from ._errors import (
    ConfigError,
    HookArgumentError,
    IntegrityError,
    ManifestError,
    PluginError,
    StateError,
    UnknownHookError,
    UnknownPluginError,
)
from ._interface import PluginType

T = TypeVar("T")

#: Errors that mean the command line itself was wrong (exit 2).
_USAGE_ERRORS = (UnknownPluginError, UnknownHookError, HookArgumentError, ConfigError, click.UsageError)


class Failed(Exception):
    """A command ran but what it checked or called failed (exit 1), after printing its results."""


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"erp-plugins: error: {message}", err=True)
    sys.exit(code)


def _state_location(ctx: click.Context) -> str:
    """`--state`, else ERP_PLUGINS_STATE, else the default file: a path or a postgresql:// URL, checked."""
    from ._listing import state_location

    return state_location(ctx.obj.get("state"))


def _read_store(ctx: click.Context) -> Any:
    """The state store for reading, or None when its file does not exist yet (reading never creates it)."""
    from ._listing import read_store

    return read_store(ctx.obj.get("state"))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # only the commands that drive a host need it; `list` and `check` start faster without

    return asyncio.run(coro)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _Group(click.Group):
    """Turns every PluginError into one line on stderr with the contract's exit code; no tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Failed:
            sys.exit(1)
        except _USAGE_ERRORS as exc:
            if isinstance(exc, click.UsageError):
                raise
            _fail(str(exc), 2)
        except (PluginError, StateError, ManifestError, IntegrityError) as exc:
            _fail(str(exc), 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--state",
    envvar="ERP_PLUGINS_STATE",
    metavar="PATH|URL",
    help="State: an SQLite file or a postgresql://user@host:port/db URL (default: ERP_PLUGINS_STATE, else a file "
    "in the user's data dir).",
)
@click.option(
    "--plugins-dir",
    "plugins_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A folder of plugin folders (plugin.yaml with main_file and main_class); repeatable; searched before "
    "ERP_PLUGINS_PATH.",
)
@click.version_option(package_name="erp-plugins-core")
@click.pass_context
def cli(ctx: click.Context, state: str | None, plugins_dirs: tuple[str, ...]) -> None:
    """Discover, check, enable and call ERP plugins, per tenant."""
    ctx.ensure_object(dict)
    ctx.obj["state"] = state
    if plugins_dirs:
        from ._searchpath import plugins_dirs as checked

        checked(plugins_dirs, env=False)  # each as given, before the join below would split a URL at its colon
        # every catalog this process (and the workers it starts) loads reads ERP_PLUGINS_PATH; checked there
        env = os.environ.get("ERP_PLUGINS_PATH", "")
        os.environ["ERP_PLUGINS_PATH"] = os.pathsep.join([*plugins_dirs, *([env] if env else [])])


# --- list / check -------------------------------------------------------------------------------------------


@cli.command("list")
@click.option("--tenant", help="Also show each plugin's state for this tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def list_cmd(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Every discovered plugin: version, type, hooks, permissions, valid or not (without importing plugins)."""
    from ._catalog import Catalog
    from ._listing import json_text, render_text, tenant_status
    from ._shapes import plugin_rows, with_tenant

    # the same rows and renderers as the answer from the cache (`_listing.run`), so both print the same
    rows = plugin_rows(Catalog.load())
    if tenant is not None:
        rows = with_tenant(rows, tenant, tenant_status(ctx.obj.get("state"), tenant))
    click.echo(json_text(rows) if as_json else render_text(rows, tenant), nl=False)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--accept-findings", is_flag=True,
              help="Accept the code-scan findings of the named unsandboxed plugins (recorded in the state).")
@click.pass_context
def check(ctx: click.Context, names: tuple[str, ...], as_json: bool, accept_findings: bool) -> None:
    """Full validation: manifest, dependencies, cycles, api_version, files against RECORD, code scan."""
    from ._catalog import ACCEPTED_FINDINGS, Catalog, acceptance_key, deep_check
    from ._integrity import lock_from_json

    catalog = Catalog.load()
    for name in names:
        if catalog.get(name) is None:
            installed = ", ".join(catalog.names()) or "none"
            raise UnknownPluginError(f"no plugin named {name!r} is installed (installed: {installed})")
    store = _read_store(ctx) if not accept_findings else _open_store(ctx)
    lock = None
    accepted: dict[str, Any] = {}
    if store is not None:
        text = store.get_setting("lock")
        lock = lock_from_json(text) if text else None
        accepted = json.loads(store.get_setting(ACCEPTED_FINDINGS) or "{}")
    selected = [r for r in catalog.records if not names or r.name in names]
    reports = []
    for rec in selected:
        key = acceptance_key(rec)
        report = deep_check(rec, lock=lock, accepted_findings=accepted.get(rec.name) == key)
        if accept_findings and names and report.findings:
            accepted[rec.name] = key
            report = deep_check(rec, lock=lock, accepted_findings=True)
        reports.append(report)
    if store is not None:
        if accept_findings:
            store.set_setting(ACCEPTED_FINDINGS, json.dumps(accepted))
        store.close()
    if as_json:
        _emit_json([r.to_json() for r in reports])
    else:
        for r in reports:
            click.echo(f"{r.name}: {'ok' if r.valid else 'FAILED'}")
            for e in r.errors:
                click.echo(f"    error: {e}")
            for w in r.warnings:
                click.echo(f"    warning: {w}")
            for f in r.findings:
                click.echo(f"    finding: {f['file']}:{f['line']}: {f['rule']}: {f['message']}")
        if not reports:
            click.echo("no plugins installed")
    if any(not r.valid for r in reports):
        raise Failed()


def _open_store(ctx: click.Context) -> Any:
    from ._state import open_store

    return open_store(_state_location(ctx))


@cli.command()
@click.option("--remove", is_flag=True, help="Remove the lock instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the lock as JSON.")
@click.pass_context
def lock(ctx: click.Context, remove: bool, as_json: bool) -> None:
    """Record the installed plugin distributions (versions, RECORD digests) as approved.

    While a lock exists the host refuses to load a plugin whose distribution drifted from it.
    """
    from ._catalog import Catalog
    from ._integrity import build_lock, editable_location, lock_to_json

    with _open_store(ctx) as store:
        if remove:
            store.set_setting("lock", "")
            click.echo("lock removed", err=True)
            return
        catalog = Catalog.load(use_cache=False)
        dists = []
        for rec in catalog.records:
            dist = rec.distribution_object()
            if dist is None:
                continue
            if editable_location(dist) is not None:
                # no RECORD describes an editable install's files: it stays unapproved (refused while locked)
                click.echo(f"warning: {rec.distribution} is an editable install and is not locked; install it "
                           "from a wheel to approve it", err=True)
                continue
            dists.append(dist)
        text = lock_to_json(build_lock(dists))
        store.set_setting("lock", text)
    if as_json:
        click.echo(text)
    else:
        click.echo(f"locked {len(dists)} plugin distribution(s)")


# --- tenants ------------------------------------------------------------------------------------------------


def _host(ctx: click.Context, tenant: str | None) -> Any:
    from ._host import PluginHost

    # deliver=False: a one-shot command leaves stored events and jobs to open hosts and `erp-plugins worker`
    return PluginHost(_state_location(ctx), tenants=[tenant] if tenant else [], health_loop=False, deliver=False)


@cli.command()
@click.argument("name")
@click.option("--tenant", required=True, help="Tenant to enable the plugin for.")
@click.option("--config", "config_items", multiple=True, metavar="KEY=VALUE",
              help="A config value (converted to the schema's type); env:NAME reads it from the environment at start, "
                   "file:/PATH (sensitive keys) from a file.")
@click.option("--grant", multiple=True, metavar="PERM", help="Grant only these declared permissions (default: all).")
@click.option("--trust", is_flag=True, help="Allow a plugin that asks to run unsandboxed in the host's process.")
@click.option("--priority", type=int, help="Order among providers for first/stream: lower first (default 100).")
@click.pass_context
def enable(ctx: click.Context, name: str, tenant: str, config_items: tuple[str, ...], grant: tuple[str, ...],
           trust: bool, priority: int | None) -> None:
    """Validate config, load, initialize and activate NAME for a tenant; persisted."""
    from ._config import parse_cli_config

    async def go() -> Any:
        async with _host(ctx, tenant) as host:
            rec = host.record(name)
            if rec.manifest is None:
                raise PluginError(f"plugin {name!r} is invalid: {'; '.join(rec.errors)}")
            config = parse_cli_config(list(config_items), rec.manifest)
            return await host.enable(name, tenant=tenant, config=config, grant=list(grant) if grant else None,
                                     trust=trust, priority=priority)

    row = _run(go())
    click.echo(f"enabled {name} for tenant {tenant} (state: {row.state}; granted: {', '.join(row.granted) or 'none'})")


@cli.command()
@click.argument("name")
@click.option("--tenant", required=True, help="Tenant to disable the plugin for.")
@click.pass_context
def disable(ctx: click.Context, name: str, tenant: str) -> None:
    """Deactivate NAME for a tenant and persist; refused while an enabled plugin depends on it."""

    async def go() -> None:
        async with _host(ctx, None) as host:
            await host.disable(name, tenant=tenant)

    _run(go())
    click.echo(f"disabled {name} for tenant {tenant}")


@cli.group("config")
def config_group() -> None:
    """Show a plugin's stored config for a tenant."""


@config_group.command("show")
@click.argument("name")
@click.option("--tenant", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def config_show(ctx: click.Context, name: str, tenant: str, as_json: bool) -> None:
    """The stored config of NAME for a tenant, sensitive values redacted."""

    async def go() -> dict[str, Any]:
        async with _host(ctx, None) as host:
            return host.config_of(name, tenant=tenant)

    config = _run(go())
    if as_json:
        from ._shapes import config_shape

        _emit_json(config_shape(name, tenant, config))
    else:
        for key, value in config.items():
            click.echo(f"{key} = {json.dumps(value) if not isinstance(value, str) else value}")


def _call_args(hook: str, args: tuple[str, ...], args_json: str | None) -> dict[str, Any]:
    from ._catalog import Catalog
    from ._hookspecs import HOOKS

    if hook not in HOOKS and Catalog.load().hook(hook) is None:  # a core hook, or one a plugin provides
        from ._hookspecs import hook_names

        raise UnknownHookError(f"no hook named {hook!r}; hooks: {', '.join(hook_names())}")
    kwargs: dict[str, Any] = {}
    if args_json is not None:
        try:
            parsed = json.loads(args_json)
        except json.JSONDecodeError as exc:
            raise click.UsageError(f"--args-json is not valid JSON: {exc.msg} at position {exc.pos}") from None
        if not isinstance(parsed, dict):
            raise click.UsageError(f"--args-json must be a JSON object, got {type(parsed).__name__}")
        kwargs.update(parsed)
    for item in args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--arg {item!r} is not KEY=VALUE")
        kwargs[key] = value
    return kwargs


class _Progress:
    """A one-line progress bar on stderr, redrawn in place, only when stderr is a terminal.

    Scripts (stderr redirected) get nothing, so their logs stay clean; `--no-progress` turns it off on a terminal.
    Redraws are throttled to `interval` seconds, except the first and the final (done == total) one.
    """

    #: Least seconds between two redraws.
    interval: float = 0.1

    def __init__(self, stream: Any = None, *, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = enabled and bool(self.stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            self.tty = False
        self.shown = False
        self._last = 0.0

    def __call__(self, plugin: str, done: int, total: int | None, message: str) -> None:
        if not self.tty:
            return
        import time

        now = time.monotonic()
        final = total is not None and done >= total
        if self.shown and not final and now - self._last < self.interval:
            return
        self._last = now
        if total:
            width = 30
            filled = max(0, min(width, width * done // total))
            bar = "#" * filled + "-" * (width - filled)
            text = f"{plugin}: [{bar}] {100 * done / total:5.1f}% {done / 1e6:.1f}/{total / 1e6:.1f} MB {message}"
        else:
            text = f"{plugin}: {done / 1e6:.1f} MB {message}"
        # one terminal line, never wrapped (a wrapped line cannot be redrawn with \r); \x1b[K clears what a
        # longer previous line left behind
        self.stream.write("\r" + text[: self._columns() - 1] + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def _columns(self) -> int:
        """The terminal's width: COLUMNS when set (as shutil honours it), else the stream's, else 80."""
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit() and int(columns) > 0:
            return max(20, int(columns))
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            width = 0
        return max(20, width) if width > 0 else 80  # a fresh pseudo-terminal reports 0 columns

    def end(self) -> None:
        """Leave the bar's last state on its own line, so the results start on the next one."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


@cli.command()
@click.argument("hook")
@click.option("--tenant", required=True)
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE", help="A string argument (wins over --args-json).")
@click.option("--args-json", metavar="JSON", help="Arguments as a JSON object.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of results.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr (there is none unless it is a terminal).")
@click.pass_context
def call(ctx: click.Context, hook: str, tenant: str, args: tuple[str, ...], args_json: str | None,
         as_json: bool, no_progress: bool) -> None:
    """Dispatch HOOK to the tenant's active plugins that implement it; one result per plugin."""
    kwargs = _call_args(hook, args, args_json)
    progress = _Progress(enabled=not no_progress)

    async def go() -> list[Any]:
        async with _host(ctx, tenant) as host:
            return await host.call(hook, tenant=tenant, progress=progress, **kwargs)

    try:
        results = _run(go())
    finally:
        progress.end()
    if as_json:
        _emit_json([r.to_json() for r in results])
    else:
        if not results:
            click.echo(f"no plugin active for tenant {tenant} implements {hook}", err=True)
        for r in results:
            if r.success:
                shown = r.result if isinstance(r.result, str) else json.dumps(r.result, default=str)
                click.echo(f"{r.plugin}: ok ({r.duration_s * 1000:.1f} ms): {shown}")
            else:
                click.echo(f"{r.plugin}: FAILED ({r.duration_s * 1000:.1f} ms): {r.error}")
    if not results or not any(r.success for r in results):
        raise Failed()


@cli.command()
@click.option("--tenant", help="Only this tenant (default: every tenant).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def health(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Every enabled plugin's health check, with the manifest's timeout; exit 1 if any is unhealthy."""

    async def go() -> list[Any]:
        async with _host(ctx, tenant) as host:
            await host.warm_up([tenant] if tenant else None)  # check every plugin for real, workers included
            return await host.health(tenant)

    reports = _run(go())
    if as_json:
        _emit_json([r.to_json() for r in reports])
    else:
        if not reports:
            click.echo("no plugins enabled", err=True)
        for r in reports:
            word = "healthy" if r.healthy else "UNHEALTHY"
            why = r.detail if r.healthy else r.error
            click.echo(f"{r.tenant}/{r.plugin}: {word}{': ' + why if why else ''}")
    if any(not r.healthy for r in reports):
        raise Failed()


@cli.command()
@click.option("--tenant", help="Only this tenant.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the last N entries.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def audit(ctx: click.Context, tenant: str | None, limit: int | None, as_json: bool) -> None:
    """Every enable, disable, config change and grant, with time and OS user."""
    import datetime

    store = _read_store(ctx)
    entries = []
    if store is not None:
        with store:
            entries = store.audit(tenant, limit)
    if as_json:
        from ._shapes import audit_rows

        _emit_json(audit_rows(entries))
        return
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.time).isoformat(timespec="seconds")
        click.echo(f"{when} {e.user} {e.tenant} {e.plugin} {e.action} {json.dumps(e.detail, default=str)}")


@cli.command()
@click.argument("name")
@click.option("--type", "plugin_type", type=click.Choice([t.value for t in PluginType]), default="business_logic",
              show_default=True, help="The plugin_type of the new plugin.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder in which the folder NAME is created.")
def new(name: str, plugin_type: str, directory: str) -> None:
    """Scaffold a plugin distribution NAME that installs, is discovered, passes check, and has tests."""
    from pathlib import Path

    from ._scaffold import scaffold

    path = scaffold(name, plugin_type, Path(directory))
    click.echo(f"created {path}")
    # the test extra brings pytest-asyncio, without which the generated async tests cannot run
    click.echo(f"next: pip install -e '{path}[test]' && erp-plugins check {name} && pytest {path}")


def _register_server_commands() -> None:
    from ._cli_server import register

    register(cli)


_register_server_commands()


def _register_job_commands() -> None:
    from ._cli_jobs import register

    register(cli)


_register_job_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `erp-plugins` script."""
    debug = os.environ.get("ERP_PLUGINS_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="erp-plugins", standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:  # a bug of ours: one line, the traceback only on request
        if debug:
            raise
        click.echo(f"erp-plugins: internal error: {type(exc).__name__}: {exc} (set ERP_PLUGINS_DEBUG=1 for the "
                   "traceback)", err=True)
        sys.exit(1)



if __name__ == "__main__":
    main()
