"""The discovery cache file: where it lives, the key that says whether it still holds, and its raw read and write.

The key is the nanosecond mtime, ctime, inode and size of every `sys.path` folder (an install, upgrade or removal
adds or removes a `.dist-info` there), of every manifest read (editable installs) and of every plugins folder and
plugin folder. Like git's "racy clean" rule, a file written less than `RACY_SECONDS` after the newest of those
stamps is not trusted, so changes within one clock tick are never missed.

Kept light on purpose (only `os`, `sys`, `hashlib` and `msgpack`): the command line's `list` answers from here
without importing discovery, the manifest model or the host. What the document holds is up to its writer
(`_discovery`); this module knows nothing of plugins.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing itself is not imported: it would cost a cache hit more than the hit
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

#: Bumped whenever the document's shape changes; a file of another format is a miss. 4: the `list` rows.
CACHE_FORMAT = 4
#: A file written less than this many seconds after the newest stamp of its key is not trusted.
RACY_SECONDS = 2.0
APP_NAME = "erp-plugins"
_OFF = frozenset({"0", "false", "no", "off"})


def cache_root() -> str:
    """ERP_PLUGINS_CACHE_DIR, else the user's cache folder for erp-plugins.

    On Linux that is the XDG base-directory rule (`$XDG_CACHE_HOME` when absolute, else `~/.cache`), computed
    here so that a cache hit does not import platformdirs (which costs more than the whole hit); elsewhere
    platformdirs decides.
    """
    root = os.environ.get("ERP_PLUGINS_CACHE_DIR")
    if root:
        return root
    if sys.platform.startswith("linux"):
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, APP_NAME)
    import platformdirs

    return platformdirs.user_cache_dir(APP_NAME)


def cache_path(plugins_dirs: Sequence[str] = ()) -> str | None:
    """The cache file for this interpreter, `sys.path` and plugins folders; None when ERP_PLUGINS_CACHE is off."""
    if os.environ.get("ERP_PLUGINS_CACHE", "1").lower() in _OFF:
        return None
    import hashlib

    key = [sys.prefix, sys.executable, *sys.path, "\1", *plugins_dirs]
    ident = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    return os.path.join(cache_root(), f"discovery-{ident}.msgpack")


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size]


def fingerprint(manifest_files: Sequence[str], folders: Sequence[str] = ()) -> dict[str, Any]:
    """The key as it is now: stamps of `sys.path` folders, of `manifest_files` and of `folders`.

    A plugins folder's and a plugin folder's stamps change when a plugin folder or a file in one (its main_file)
    is added, removed or renamed; a manifest's own stamps when it is edited.
    """
    return {
        "format": CACHE_FORMAT,
        "python": sys.version,
        "path": {p: _stat_key(p) for p in sys.path if p},
        "manifests": {p: _stat_key(p) for p in manifest_files},
        "folders": {p: _stat_key(p) for p in folders},
    }


def newest_ns(fp: dict[str, Any]) -> int:
    """The newest mtime or ctime in a key, in nanoseconds (0 when it stamps nothing that exists)."""
    stamps = [max(v[0], v[1]) for part in ("path", "manifests", "folders") for v in fp[part].values() if v]
    return max(stamps, default=0)


def read(path: str, racy_seconds: float = RACY_SECONDS) -> dict[str, Any] | None:
    """The document at `path` when its key still holds and it was written safely after its newest stamp, else None.

    Any unreadable, malformed or foreign file is a miss, never an error: the caller scans instead.
    """
    import msgpack

    try:
        with open(path, "rb") as fh:
            data = msgpack.unpackb(fh.read())
        if not isinstance(data, dict):
            return None
        key = data["fingerprint"]
        if key.get("format") != CACHE_FORMAT or key != fingerprint(data["manifest_files"], data["folders"]):
            return None
        if newest_ns(key) > data["written_ns"] - racy_seconds * 1e9:
            return None
        return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException):
        return None


def write(path: str, document: dict[str, Any]) -> None:
    """Write `document` (plain data with `manifest_files` and `folders`) with its key and time, atomically.

    The key is taken before the time, so a change between the two makes the file untrusted, never wrongly
    trusted. A folder that cannot be written only costs speed.
    """
    import tempfile

    import msgpack

    data = {**document, "fingerprint": fingerprint(document["manifest_files"], document["folders"]),
            "written_ns": time.time_ns()}
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".discovery-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(msgpack.packb(data))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
