"""Where discovery looks besides the installed distributions: the plugins folders of `--plugins-dir` and
ERP_PLUGINS_PATH, resolved and checked.

Its own light module (no pathlib unless a folder is given) because the command line's cached `list` resolves
the same folders before it knows whether it needs discovery at all.
"""

from __future__ import annotations

import os

from ._errors import ConfigError

TYPE_CHECKING = False  # typing is not imported on the command line's fast path
if TYPE_CHECKING:
    from collections.abc import Iterable

PATH_ENV = "ERP_PLUGINS_PATH"


def plugins_dirs(given: Iterable[str | os.PathLike[str]] = (), *, env: bool = True,
                 path: str | None = None) -> list[str]:
    """The plugins folders to search: `given` first, then those of ERP_PLUGINS_PATH (os.pathsep-separated), or of
    `path` when given instead of the variable's value.

    ConfigError naming the folder and where it came from when one is not an existing folder (a URL is refused
    as such, not looked up as a file name).
    """
    sources = [(str(os.fspath(d)), "--plugins-dir") for d in given]
    if env:
        value = os.environ.get(PATH_ENV, "") if path is None else path
        sources += [(d, PATH_ENV) for d in value.split(os.pathsep) if d.strip()]
    out: list[str] = []
    for text, origin in sources:
        if "://" in text:
            raise ConfigError(f"{origin} {text!r} is a URL; give a local folder that holds plugin folders")
        from pathlib import Path

        path = Path(text).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{origin} {text!r} is not an existing folder; create it or fix the path")
        resolved = str(path.resolve())
        if resolved not in out:
            out.append(resolved)
    return out
