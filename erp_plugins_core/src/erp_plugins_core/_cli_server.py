"""CLI commands `serve` and `token create|list|revoke`, registered on the `erp-plugins` group by `_cli`.

Light on purpose: the server's modules (Starlette, uvicorn, Jinja2) are imported only when `serve` runs,
so `erp-plugins` starts as fast without the `server` extra and says how to install it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

import click

from ._errors import ConfigError

INSTALL_HINT = "pip install 'erp-plugins-core[server]'"
_BIND_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})$")


def parse_bind(text: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` (`[::1]:PORT` for IPv6); ConfigError naming what is wrong otherwise."""
    if "://" in text or text.startswith(("http:", "https:", "unix:")):
        raise ConfigError(f"--bind takes HOST:PORT (e.g. 127.0.0.1:8750), not a URL: {text!r}")
    m = _BIND_RE.match(text.strip())
    if m is None:
        raise ConfigError(f"--bind {text!r} is not HOST:PORT; e.g. 127.0.0.1:8750 or [::1]:8750")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise ConfigError(f"--bind {text!r}: port must be from 1 to 65535")
    return (m.group("v6") or m.group("host")), port


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (a name other than localhost counts as not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _state_location(ctx: click.Context) -> str | None:
    given = ctx.obj.get("state") if ctx.obj else None
    return given or os.environ.get("ERP_PLUGINS_STATE") or None


@click.command()
@click.option("--bind", default="127.0.0.1:8750", show_default=True, metavar="HOST:PORT", help="Address to listen on.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="uvicorn worker processes.")
@click.option("--max-body", type=click.IntRange(min=1), default=10 * 1024 * 1024, show_default=True,
              metavar="BYTES", help="Largest request body accepted (413 beyond).")
@click.option("--upload-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Allow hook arguments naming files (attachments, file_path): uploads are kept here per call.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.pass_context
def serve(ctx: click.Context, bind: str, workers: int, max_body: int, upload_dir: str | None, log_level: str) -> None:
    """Serve the HTTP API (/v1), the OpenAI-compatible endpoint (/v1/openai) and the admin console (/)."""
    host, port = parse_bind(bind)
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise click.ClickException(f"serve needs the server extra ({exc.name} is missing): {INSTALL_HINT}") from None
    from .server._logging import configure
    from .server._settings import ServerSettings

    upload = None
    if upload_dir is not None:
        upload = Path(upload_dir).resolve()
        try:
            upload.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"--upload-dir {upload_dir}: cannot create it: {exc.strerror or exc}") from None
    settings = ServerSettings(state=_state_location(ctx), max_body=max_body, upload_dir=upload, log_level=log_level)
    os.environ.update(settings.to_env())
    configure(log_level)
    import logging

    log = logging.getLogger("erp_plugins.server")
    if not is_loopback(host):
        log.warning("listening on a non-loopback address without TLS: put a TLS-terminating reverse proxy in front",
                    extra={"fields": {"bind": bind}})
    log.info("starting", extra={"fields": {"bind": bind, "workers": workers}})
    uvicorn.run("erp_plugins_core.server._app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_config=None, access_log=False, timeout_graceful_shutdown=5, server_header=False,
                proxy_headers=True, lifespan="on", loop="auto")  # uvloop where installed (a core dependency)


@click.group("token")
def token_group() -> None:
    """Create, list and revoke API tokens (the token itself is shown once, at creation)."""


@token_group.command("create")
@click.option("--tenant", help="The tenant the token acts for.")
@click.option("--platform", is_flag=True, help="A platform token: acts for every tenant.")
@click.option("--scope", type=click.Choice(["call", "admin"]), default="call", show_default=True)
@click.option("--expires-days", type=click.IntRange(1, 3650), help="Days until the token expires (default: never).")
@click.option("--label", default="", help="A note shown by token list.")
@click.option("--json", "as_json", is_flag=True, help="Print {id, token, ...} as JSON.")
@click.pass_context
def token_create(ctx: click.Context, tenant: str | None, platform: bool, scope: str, expires_days: int | None,
                 label: str, as_json: bool) -> None:
    """Create a token for a tenant (or --platform) and print it once; only its digest is stored."""
    from ._cli import _open_store
    from ._tokens import create_token, token_json

    if (tenant is None) == (not platform):
        raise click.UsageError("give exactly one of --tenant T or --platform")
    with _open_store(ctx) as store:
        issued = create_token(store, tenant=tenant, scope=scope, expires_days=expires_days, label=label)
    if as_json:
        click.echo(json.dumps({**token_json(issued.record), "token": issued.token}, indent=2))
        return
    who = f"tenant {tenant}" if tenant else "every tenant (platform)"
    click.echo(f"created {issued.record.id} for {who}, scope {scope}; it is shown only now:", err=True)
    click.echo(issued.token)


@token_group.command("list")
@click.option("--tenant", help="Only this tenant's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def token_list(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Every token's id, tenant, scope, creation, expiry and last use (never the token)."""
    from ._cli import _read_store
    from ._tokens import token_json, token_store

    store = _read_store(ctx)
    records: list[Any] = []
    if store is not None:
        with store:
            records = token_store(store).list_tokens(tenant)
    rows = [token_json(r) for r in records]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no tokens", err=True)
    import datetime

    def when(t: float | None) -> str:
        return datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else "-"

    for r in rows:
        flags = " REVOKED" if r["revoked"] else ""
        click.echo(f"{r['id']} {r['tenant'] or '(platform)'} {r['scope']} created {when(r['created'])} "
                   f"expires {when(r['expires'])} last used {when(r['last_used'])}{flags}"
                   f"{' ' + r['label'] if r['label'] else ''}")


@token_group.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke a token by its id; servers refuse it within a second."""
    from ._cli import _open_store
    from ._tokens import token_store, validate_token_id

    validate_token_id(token_id)
    with _open_store(ctx) as store:
        if not token_store(store).revoke_token(token_id):
            raise ConfigError(f"no token with id {token_id}; see erp-plugins token list")
    click.echo(f"revoked {token_id}")


def register(group: click.Group) -> None:
    """Add `serve` and `token` to the CLI group."""
    group.add_command(serve)
    group.add_command(token_group)
