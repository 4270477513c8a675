"""`erp-plugins list` answered without click: from the discovery cache, before discovery or the manifest model are
imported, or from a fresh scan on a miss.

The cache (`_cachefile`) keeps what `list` prints: every plugin's row, validated when the cache was written,
and the rows' JSON text. `run` answers `list [--json] [--tenant T]` (with the global `--state` and
`--plugins-dir`) from it when the cache still holds under the same key and racy-clean rule as discovery's, else
from `Catalog.load()` as click's `list` would; a tenant's part is read from the state store every time, never
cached. Anything else — another command, another option, an error to explain — goes to the click command line
(`_cli`), which says it. The renderers here are the ones `_cli`'s `list` uses, so the outputs cannot drift apart.
"""

from __future__ import annotations

import os
import sys

from ._errors import ConfigError, PluginError

TYPE_CHECKING = False  # typing and collections.abc are not imported on the fast path (they cost more than a hit)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from ._record import PluginRecord
    from ._state import StateStore, TenantPlugin

__all__ = ["json_text", "listing_entry", "read_store", "render_text", "run", "state_location", "tenant_status",
           "write_text"]

STATE_ENV = "ERP_PLUGINS_STATE"  # `--state`'s environment variable (click's envvar of the group's option)
_GLOBAL_OPTIONS = ("--state", "--plugins-dir")


# --- What the cache keeps and how it is printed --------------------------------------------------------------


def json_text(data: Any) -> str:
    """`--json` output: one JSON document and its newline, as every command prints it."""
    import json

    return json.dumps(data, indent=2, default=str) + "\n"


def listing_entry(records: list[PluginRecord]) -> dict[str, Any]:
    """What the discovery cache keeps for `list`: the rows of validated `records` and their JSON text."""
    from ._shapes import plugin_row

    rows = [plugin_row(rec) for rec in records]
    return {"rows": rows, "json": json_text(rows)}


def render_text(rows: Sequence[Mapping[str, Any]], tenant: str | None) -> str:
    """`list` without `--json`: a block of lines per plugin (its tenant's state when `tenant` is given)."""
    if not rows:
        return "no plugins installed (entry point group erp_plugins)\n"
    out: list[str] = []
    for item in rows:
        mark = "ok" if item["valid"] else "INVALID"
        out.append(f"{item['name']} {item['version']} [{item['plugin_type'] or '?'}] ({item['distribution']}) {mark}")
        out.append(f"    hooks: {', '.join(item['hooks']) or '-'}")
        out.append(f"    permissions: {', '.join(item['permissions']) or '-'}")
        if "tenant" in item:
            t = item["tenant"]
            extra = f", reason: {t['reason']}" if t["reason"] else ""
            out.append(f"    tenant {tenant}: {t['state']}{' (trusted)' if t['trusted'] else ''}{extra}")
        out.extend(f"    error: {err}" for err in item["errors"])
    return "\n".join(out) + "\n"


# --- The state, for a tenant's part -------------------------------------------------------------------------


def state_location(given: str | None) -> str:
    """`--state` (or ERP_PLUGINS_STATE, as click passed it), else the default file: a path or a postgresql:// URL.

    A location that is neither is bad usage: ConfigError.
    """
    from ._errors import StateError
    from ._state import default_location, parse_location

    try:
        return parse_location(given if given else default_location())[1]
    except StateError as exc:
        raise ConfigError(str(exc)) from None


def read_store(given: str | None) -> StateStore | None:
    """The state store for reading, or None when its file does not exist yet (reading never creates it)."""
    from pathlib import Path

    from ._state import open_store, parse_location

    kind, location = parse_location(state_location(given))
    if kind == "sqlite" and not Path(location).expanduser().exists():
        return None
    return open_store(location)


def tenant_status(given: str | None, tenant: str) -> dict[str, TenantPlugin]:
    """Each plugin's stored row for `tenant` (empty when the state does not exist yet); ConfigError for a bad name."""
    from ._state import validate_tenant

    validate_tenant(tenant)
    store = read_store(given)
    if store is None:
        return {}
    with store:
        return {r.plugin: r for r in store.list(tenant)}


# --- The fast path --------------------------------------------------------------------------------------------


def _parse(argv: Sequence[str]) -> tuple[str | None, list[str], str | None, bool] | None:
    """(state, plugins dirs, tenant, json) of `[--state S] [--plugins-dir D]... list [--tenant T] [--json]`, else None.

    Only spellings click reads the same way are taken (`--opt value`, `--opt=value`); a value that starts with
    `-`, a repeated `--tenant` or anything else leaves the command to click.
    """
    state: str | None = None
    state_given = False
    dirs: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args) and args[i] != "list":
        name = args[i].partition("=")[0]
        if name not in _GLOBAL_OPTIONS:
            return None
        taken = _value(args, i)
        if taken is None:
            return None
        value, i = taken
        if name == "--state":
            state, state_given = value, True
        else:
            dirs.append(value)
        i += 1
    if i == len(args):
        return None
    tenant: str | None = None
    as_json = False
    i += 1
    while i < len(args):
        name = args[i].partition("=")[0]
        if args[i] == "--json":
            as_json = True
        elif name == "--tenant" and tenant is None:
            taken = _value(args, i)
            if taken is None:
                return None
            tenant, i = taken
        else:
            return None
        i += 1
    if not state_given:
        state = os.environ.get(STATE_ENV) or None
    return state, dirs, tenant, as_json


def _value(args: list[str], i: int) -> tuple[str, int] | None:
    """The value of the option at `args[i]` (`--opt=value` or `--opt value`) and the index of its last word;
    None where click might read it otherwise (no value, or one that starts with `-`)."""
    _, eq, value = args[i].partition("=")
    if not eq:
        i += 1
        if i == len(args):
            return None
        value = args[i]
    return None if value.startswith("-") else (value, i)


def write_text(text: str) -> bool:
    """Print `text` as click.echo would, or False (nothing printed) when click would print it differently."""
    stream = sys.stdout
    if stream is None or "\x1b" in text:  # click strips ANSI sequences from what is not a terminal
        return False
    try:
        text.encode(stream.encoding or "utf-8")  # click replaces what the stream's encoding cannot hold
    except (UnicodeEncodeError, LookupError):
        return False
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:  # the reader left (`| head`): nothing more to say, and no traceback at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    return True


def _scanned_rows(path_value: str, given: list[str]) -> tuple[list[dict[str, Any]], str | None] | None:
    """A miss: discover, validate and cache as click's `list` does (same catalog, same rows), without click; the rows
    and their JSON text (as the cache now keeps them), or None, with nothing printed and the environment as it was,
    on any error (click then reports it)."""
    from ._searchpath import PATH_ENV

    before = os.environ.get(PATH_ENV)
    if given:  # as the group's callback sets it, for the catalog and anything it starts
        os.environ[PATH_ENV] = path_value
    try:
        from ._catalog import Catalog
        from ._shapes import plugin_rows

        catalog = Catalog.load()
        listing = catalog.discovery.listing  # `listing_entry` of the catalog's records, made for the cache
        if isinstance(listing, dict):
            return listing["rows"], listing["json"]
        return plugin_rows(catalog), None
    except Exception:
        if before is None:
            os.environ.pop(PATH_ENV, None)
        else:
            os.environ[PATH_ENV] = before
        return None


def run(argv: Sequence[str]) -> int | None:
    """Answer `erp-plugins ARGV` when it is `list`: from the discovery cache when it holds, else from a fresh scan
    (which writes the cache), in both cases without click. The exit code, or None when click must answer."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    state, given, tenant, as_json = parsed
    from ._cachefile import cache_path, read
    from ._searchpath import PATH_ENV, plugins_dirs

    # the group's callback checks each --plugins-dir as given, then puts them before ERP_PLUGINS_PATH, which the
    # catalog reads
    env = os.environ.get(PATH_ENV, "")
    path_value = os.pathsep.join([*given, *([env] if env else [])])
    try:
        plugins_dirs(given, env=False)
        dirs = plugins_dirs(path=path_value)
        if tenant is not None:
            from ._state import validate_tenant

            validate_tenant(tenant)
            state_location(state)
    except PluginError:
        return None  # click says what is wrong, with the same message
    path = cache_path(dirs)
    data = read(path, dirs) if path is not None else None
    listing = data.get("listing") if data is not None else None
    if data is not None and data.get("validated") and isinstance(listing, dict):
        rows, text = listing["rows"], listing["json"]
    else:
        scanned = _scanned_rows(path_value, given)
        if scanned is None:
            return None
        rows, text = scanned
    if tenant is None:
        if not as_json:
            text = render_text(rows, None)
        elif text is None:
            text = json_text(rows)
        return 0 if write_text(text) else None
    try:
        status = tenant_status(state, tenant)
    except PluginError as exc:  # the state is unreachable: said once, not retried by the slow path
        # as `_cli._Group` says it: one line, exit 2 for bad usage, 1 otherwise
        sys.stderr.write(f"erp-plugins: error: {exc}\n")
        return 2 if isinstance(exc, ConfigError) else 1
    from ._shapes import with_tenant

    rows = with_tenant(rows, tenant, status)
    return 0 if write_text(json_text(rows) if as_json else render_text(rows, tenant)) else None
