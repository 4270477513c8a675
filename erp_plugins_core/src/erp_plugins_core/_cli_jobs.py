"""CLI commands `events`, `jobs`, `retry` and `worker`, registered on the `erp-plugins` group by `_cli`.

`events` and `jobs` show the backlog (deliveries by state) and the newest events or jobs with each
plugin's state, attempts and error; `retry` queues a failed one again; `worker` runs deliveries and jobs
until SIGTERM or SIGINT, then lets the running ones finish (none is lost or run twice by the shutdown).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

T = TypeVar("T")

_STATES = ("queued", "running", "succeeded", "failed")


def _location(ctx: click.Context) -> str:
    """The state location (file path or postgresql:// URL) from --state, ERP_PLUGINS_STATE or the default."""
    from ._state import parse_location

    given = (ctx.obj or {}).get("state") or os.environ.get("ERP_PLUGINS_STATE") or None
    return parse_location(given)[1]


def _fail(message: str, code: int) -> None:
    click.echo(f"erp-plugins: error: {message}", err=True)
    sys.exit(code)


def _with_engine(ctx: click.Context, use: Callable[[Any], Awaitable[T]]) -> T:
    """Open the job engine of the state, run `use(engine)`, close it. A missing state file is an error, not created."""
    from ._jobs import JobNotFound, is_postgres_url, open_engine

    location = _location(ctx)
    if not is_postgres_url(location) and not os.path.isfile(location):
        _fail(f"no state file at {location}; nothing has been emitted or submitted there (pass --state)", 1)

    async def go() -> T:
        engine = await open_engine(location).open()
        try:
            return await use(engine)
        finally:
            await engine.close()

    import asyncio  # not at import time: `erp-plugins list` and `check` start faster without it

    try:
        return asyncio.run(go())
    except JobNotFound as exc:
        _fail(str(exc), 2)
        raise  # unreachable: _fail exits


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def _print_backlog(counts: dict[str, int]) -> None:
    click.echo("backlog (deliveries): " + ", ".join(f"{s} {counts.get(s, 0)}" for s in _STATES))


def _print_work(view: dict[str, Any]) -> None:
    what = view.get("event_type") if view["kind"] == "event" else view["hook"]
    click.echo(f"{view['id']}  {_when(view['created'])}  {view['tenant']}  {what}  {view['state']}")
    for r in view["results"]:
        line = f"    {r['plugin']}: {r['state']} (attempts {r['attempts']})"
        if r["error"] and r["state"] != "succeeded":
            line += f": {r['error']}"
        click.echo(line)
    if not view["results"]:
        click.echo("    (no plugin to deliver to)")


def _listing(ctx: click.Context, kind: str, tenant: str | None, state: str | None, limit: int, as_json: bool) -> None:
    async def use(engine: Any) -> dict[str, Any]:
        shape: dict[str, Any] = await engine.listing(kind=kind, tenant=tenant, state=state, limit=limit)
        return shape

    shape = _with_engine(ctx, use)
    if as_json:
        click.echo(json.dumps(shape, indent=2, default=str))
        return
    counts, views = shape["backlog"], shape[f"{kind}s"]
    _print_backlog(counts)
    for view in views:
        _print_work(view)
    if not views:
        where = (f" in state {state}" if state else "") + (f" for tenant {tenant}" if tenant else "")
        click.echo(f"no {kind}s{where}")


@click.command()
@click.option("--tenant", required=True, help="Tenant whose events to show.")
@click.option("--failed", is_flag=True, help="Only events with a delivery that failed for good.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="Newest events shown.")
@click.option("--json", "as_json", is_flag=True, help="Print {backlog, events} as JSON.")
@click.pass_context
def events(ctx: click.Context, tenant: str, failed: bool, limit: int, as_json: bool) -> None:
    """The tenant's stored events, newest first, with each plugin's delivery state; the backlog by state."""
    from ._state import validate_tenant

    validate_tenant(tenant)
    _listing(ctx, "event", tenant, "failed" if failed else None, limit, as_json)


@click.command()
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option("--state", "state", type=click.Choice(_STATES), help="Only jobs with a part in this state.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="Newest jobs shown.")
@click.option("--json", "as_json", is_flag=True, help="Print {backlog, jobs} as JSON.")
@click.pass_context
def jobs(ctx: click.Context, tenant: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """Submitted background jobs, newest first, with each plugin's state, attempts and error; the backlog."""
    if tenant is not None:
        from ._state import validate_tenant

        validate_tenant(tenant)
    _listing(ctx, "job", tenant, state, limit, as_json)


@click.command()
@click.argument("job_id", metavar="ID")
@click.pass_context
def retry(ctx: click.Context, job_id: str) -> None:
    """Run the failed deliveries of event or job ID again (after fixing what made them fail)."""
    from ._jobs import job_view

    async def use(engine: Any) -> tuple[int, dict[str, Any]]:
        count = await engine.retry(job_id)
        return count, job_view(await engine.get(job_id))

    count, view = _with_engine(ctx, use)
    if count == 0:
        _fail(f"nothing to retry: {view['kind']} {job_id} has no failed delivery (state: {view['state']})", 1)
    plugins = ", ".join(r["plugin"] for r in view["results"] if r["state"] == "queued")
    click.echo(f"queued {count} failed deliver{'y' if count == 1 else 'ies'} of {view['kind']} {job_id} again "
               f"({plugins})")


class _NoTraceback(logging.Filter):
    """procrastinate logs a failed job with its traceback; the error is already in our own line and the store."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    for name in ("erp_plugins", "procrastinate"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(getattr(logging, level) if name == "erp_plugins" else logging.WARNING)
        logger.propagate = False
    logging.getLogger("procrastinate").addFilter(_NoTraceback())


@click.command()
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Deliveries and jobs run at once (one at a time per tenant and plugin).")
@click.option("--name", help="This worker's name in claims and logs (default: ERP_PLUGINS_HOST_NAME or host:pid).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO",
              show_default=True, help="Level of the structured log lines on stderr.")
@click.pass_context
def worker(ctx: click.Context, concurrency: int, name: str | None, log_level: str) -> None:
    """Run deliveries and jobs until SIGTERM or SIGINT; the running ones then finish before it exits."""
    import asyncio

    from ._host import PluginHost
    from ._state import open_store

    _setup_logging(log_level)
    log = logging.getLogger("erp_plugins.jobs")

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("event=signal signal=%s (already stopping: the running deliveries finish first)",
                            signal.Signals(signum).name)
            else:
                log.info("event=signal signal=%s (stopping: no new work is taken)", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        store = open_store(_location(ctx))
        try:
            async with PluginHost(store, tenants=[], deliver=False) as host:
                await host.run_jobs(stop=stop, concurrency=concurrency, name=name)
        finally:
            store.close()

    asyncio.run(go())


def register(group: click.Group) -> None:
    """Add `events`, `jobs`, `retry` and `worker` to the CLI group."""
    for command in (events, jobs, retry, worker):
        group.add_command(command)
