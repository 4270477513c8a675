"""`erp-plugins [COMMAND ...] --help` answered from a cache of the text click printed for it, without importing click.

Importing click alone costs several times an interpreter's start, so a help request would never start fast
through it. What click prints for `[WORD ...] --help` depends only on the command line's code (this package and
click), the terminal's width and the words: the cache file's key stamps every `.py` file of this package and
click's package folder, each text is kept per width and words, and, as for discovery, a file written less than
`RACY_SECONDS` after the newest stamp is not trusted. A miss lets click answer and keeps what it printed; only an
answer that exits 0 is kept (an unknown command's error always comes from click).
"""

from __future__ import annotations

import os
import sys
import time

from . import _cachefile

TYPE_CHECKING = False  # typing is not imported on the fast path
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["answer"]

FORMAT = 1
_MAX_TEXTS = 64
_HELP = ("--help", "-h")


def _words(argv: Sequence[str]) -> list[str] | None:
    """The command words of `[WORD ...] --help` (each a plain name), else None."""
    if not argv or argv[-1] not in _HELP:
        return None
    words = list(argv[:-1])
    if any(not w or w.startswith("-") or w in _HELP for w in words):
        return None
    return words


def _columns() -> int:
    """The terminal's columns as click's help formatter asks `shutil.get_terminal_size` for them (COLUMNS, else the
    terminal of stdout, else 80), without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


def _sources() -> list[str]:
    """Every file and folder whose change may change a help text: this package's `.py` files and folders, and
    click's package folder and its `.py` files."""
    import importlib.machinery

    roots = [os.path.dirname(os.path.abspath(__file__))]
    spec = importlib.machinery.PathFinder.find_spec("click")
    if spec is not None and spec.submodule_search_locations:
        roots.extend(spec.submodule_search_locations)
    out: list[str] = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            out.append(folder)
            out.extend(os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))
    return out


def _key() -> dict[str, Any]:
    return {"format": FORMAT, "python": sys.version, "files": {p: _cachefile.stamp(p) for p in _sources()}}


def _render(argv: Sequence[str]) -> tuple[int, str]:
    """Click's answer to `argv`: its exit code and what it printed on stdout (stderr goes out as it is)."""
    import contextlib
    import io

    from ._cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue()


def answer(argv: Sequence[str]) -> int | None:
    """Answer a help request: print its text (from the cache, else from click, then kept) and give the exit code;
    None when `argv` is no plain help request or caching is off."""
    words = _words(argv)
    if words is None or not _cachefile.enabled():
        return None
    from ._listing import write_text

    path = _cachefile.named("help", sys.prefix, sys.executable, os.path.dirname(os.path.abspath(__file__)))
    entry = f"{_columns()}\0{' '.join(words)}"
    data = _cachefile.load(path)
    key = _key()
    try:
        fresh = data is not None and data["key"] == key
        trusted = fresh and _cachefile.newest_ns(key, ("files",)) <= data["written_ns"] - _cachefile.RACY_SECONDS * 1e9
        texts: dict[str, str] = dict(data["texts"]) if fresh else {}
    except (KeyError, TypeError, ValueError):
        fresh = trusted = False
        texts = {}
    text = texts.get(entry) if trusted else None
    if isinstance(text, str) and write_text(text):
        return 0
    code, text = _render(argv)
    if code == 0:
        if len(texts) >= _MAX_TEXTS:  # many terminal widths over time: start again rather than grow without end
            texts = {}
        texts[entry] = text
        _cachefile.dump(path, {"key": key, "written_ns": time.time_ns(), "texts": texts})
    if not write_text(text):  # ANSI or characters the stream cannot hold: as click would, replaced
        encoding = sys.stdout.encoding or "utf-8"
        sys.stdout.write(text.encode(encoding, "replace").decode(encoding))
        sys.stdout.flush()
    return code
