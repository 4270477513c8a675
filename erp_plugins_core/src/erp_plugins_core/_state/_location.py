"""Where the state lives: a file path (SQLite) or a `postgresql://` URL, told apart without guessing.

Anything that looks like a URL or a libpq `key=value` string but is not a PostgreSQL URL is refused, so a
mistyped URL never becomes a folder named `postgresql:` holding a fresh SQLite file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._errors import StateError
from ._model import BUSY_TIMEOUT_S, STATE_ENV, default_location

if TYPE_CHECKING:
    from ._base import StateStore

PG_SCHEMES = ("postgresql", "postgres")
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
#: Scheme names refused even without `//` ("postgresql:/x", "sqlite:x"); single letters stay Windows drives.
_KNOWN_SCHEMES = frozenset({
    "postgresql", "postgres", "pg", "psql", "sqlite", "sqlite3", "file", "mysql", "mariadb", "http", "https",
    "ftp", "redis", "mongodb", "mssql", "oracle", "jdbc", "s3", "gs", "duckdb",
})
_CONNINFO_RE = re.compile(
    r"^\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|options|application_name|"
    r"connect_timeout|target_session_attrs)\s*=",
    re.IGNORECASE,
)
_ACCEPTED = "a file path (SQLite) or a postgresql://user@host:port/database URL"


def _strip_password(url: str) -> str:
    """`url` with the password of its user part and any `password=` query parameter removed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^@/]*@", "//***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hosts}" if user else hosts
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, v) for k, v in pairs if k.lower() != "password"], safe="/:,")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_location(location: str | os.PathLike[str] | None) -> tuple[str, str]:
    """("sqlite", path) or ("postgresql", url) for a state location; StateError for anything else."""
    if location is None:
        text = default_location()
    elif isinstance(location, str | os.PathLike):
        text = os.fspath(location)
        if isinstance(text, bytes):
            raise StateError("the state location must be text, not bytes")
    else:
        raise StateError(f"the state location must be {_ACCEPTED}, not a {type(location).__name__}")
    if not text.strip():
        raise StateError(f"the state location is empty; pass --state (or set {STATE_ENV}) with {_ACCEPTED}")
    match = _URL_RE.match(text)
    if match:
        scheme = match.group(1)
        rest = text[match.end():]
        if scheme in PG_SCHEMES and rest.startswith("//"):
            return "postgresql", text
        if rest.startswith("//") or scheme.lower() in _KNOWN_SCHEMES:
            raise StateError(
                f"unsupported state location {_strip_password(text)!r}: the state is {_ACCEPTED} "
                f"(scheme written in lower case, followed by //)"
            )
    if _CONNINFO_RE.match(text):
        raise StateError(
            f"the state location looks like a libpq key=value string ({text.split('=', 1)[0].strip()}=...); "
            f"write it as a postgresql://user@host:port/database URL instead"
        )
    return "sqlite", text


def describe_location(location: str | os.PathLike[str] | None) -> str:
    """A state location as safe to print: the file path, or the URL with any password removed."""
    try:
        kind, text = parse_location(location)
    except StateError:
        text = os.fspath(location) if isinstance(location, str | os.PathLike) else repr(location)
        return _strip_password(str(text)) if _URL_RE.match(str(text)) else str(text)
    if kind == "postgresql":
        return _strip_password(text)
    return str(Path(text).expanduser())


def open_store(location: str | os.PathLike[str] | None = None, *, busy_timeout: float = BUSY_TIMEOUT_S) -> StateStore:
    """The state store at `location`: None means `$ERP_PLUGINS_STATE`, else the default file.

    A `postgresql://` (or `postgres://`) URL opens PostgreSQL (the password may come from the URL,
    `PGPASSWORD` or `~/.pgpass`, as libpq reads them; the driver is the `erp-plugins-core[postgres]` extra);
    any other URL-like text is refused; everything else is an SQLite file path.
    """
    kind, text = parse_location(location)
    if kind == "postgresql":
        from ._postgres import PostgresStateStore

        return PostgresStateStore(text, busy_timeout=busy_timeout)
    from ._sqlite import SQLiteStateStore

    return SQLiteStateStore(text, busy_timeout=busy_timeout)
