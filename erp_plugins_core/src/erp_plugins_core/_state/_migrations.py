"""The one numbered schema history, kept as SQL files: `sql/<backend>/NNNN_name.sql`.

File NNNN brings a database from schema version NNNN-1 to NNNN. Both backends have the same numbers and the
same tables and columns; only the column types differ (REAL/DOUBLE PRECISION, INTEGER/BOOLEAN, AUTOINCREMENT/
IDENTITY). Statements end with `;` at the end of a line; whole-line `--` comments are dropped.
"""

from __future__ import annotations

import re
from importlib import resources

_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def load(backend: str) -> tuple[tuple[str, ...], ...]:
    """The ordered migrations of `backend` ("sqlite" or "postgresql"): item i brings version i to i + 1."""
    folder = resources.files(__package__).joinpath("sql", backend)
    files = sorted((m.group(1), f) for f in folder.iterdir() if (m := _FILE_RE.match(f.name)))
    numbers = [int(n) for n, _ in files]
    if numbers != list(range(1, len(files) + 1)):
        raise RuntimeError(f"state migrations of {backend} are not numbered 1..n: {numbers}")  # a packaging bug
    return tuple(split(f.read_text(encoding="utf-8")) for _, f in files)


def split(text: str) -> tuple[str, ...]:
    """The statements of an SQL file (no statement may hold `;` at the end of one of its lines)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    parts = re.split(r";[ \t]*$", "\n".join(lines), flags=re.MULTILINE)
    return tuple(p.strip() for p in parts if p.strip())


#: SQLite's migrations (MIGRATIONS[i] brings the schema from version i to i + 1).
MIGRATIONS: tuple[tuple[str, ...], ...] = load("sqlite")
#: PostgreSQL's migrations, numbered as MIGRATIONS.
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = load("postgresql")
SCHEMA_VERSION = len(MIGRATIONS)
if len(PG_MIGRATIONS) != SCHEMA_VERSION:  # pragma: no cover - a packaging bug
    raise RuntimeError("the SQLite and PostgreSQL migration histories differ in length")
