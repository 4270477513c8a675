"""The cache files: where they live, the discovery cache's key that says whether it still holds, raw read and write.

The key is the nanosecond mtime, ctime (folders only), inode and size of every `sys.path` folder (an install,
upgrade or removal adds or removes a `.dist-info` there), of every manifest read (editable installs) and of every
plugins folder and plugin folder. Like git's "racy clean" rule, a file written less than `RACY_SECONDS` after the
newest of those stamps is not trusted, so changes within one clock tick are never missed.

Kept light on purpose (only `os`, `stat`, `sys`, `zlib` and `marshal`, which the interpreter has loaded already): the
command line's `list` and `--help` answer from here without importing discovery, the manifest model, click or the
host. Files are written with `marshal`, the format of the interpreter's own bytecode cache, and trusted as that
cache is (a user's own folder): reading one costs nothing to import, and a file of another Python version or a
damaged one is a miss. What a document holds is up to its writer (`_discovery`, `_helptext`); this module knows
nothing of plugins.
"""

from __future__ import annotations

import os
import stat
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


def enabled() -> bool:
    """False when ERP_PLUGINS_CACHE turns the caches off (0, false, no, off)."""
    return os.environ.get("ERP_PLUGINS_CACHE", "1").lower() not in _OFF


def named(kind: str, *parts: str) -> str:
    """The file `<kind>-<checksum of parts>.marshal` in the cache folder.

    Two checksums (zlib's, far cheaper to import than hashlib) make a shared name unlikely; one would only cost
    speed, as every document also holds the key it was written for.
    """
    import zlib

    text = "\0".join(parts).encode("utf-8", "surrogateescape")
    return os.path.join(cache_root(), f"{kind}-{zlib.crc32(text):08x}{zlib.adler32(text):08x}.marshal")


def cache_path(plugins_dirs: Sequence[str] = ()) -> str | None:
    """The cache file for this interpreter, `sys.path` and plugins folders; None when ERP_PLUGINS_CACHE is off."""
    if not enabled():
        return None
    return named("discovery", sys.prefix, sys.executable, *sys.path, "\1", *plugins_dirs)


def stamp(path: str) -> list[int] | None:
    """A folder's [mtime_ns, ctime_ns, inode, size], a file's [mtime_ns, mtime_ns, inode, size], or None when it
    does not exist.

    A file's ctime also moves when a hard link to it is made or removed, which the sandbox's runtime sites do to
    the core's and the plugins' files all the time; so files are stamped without it, as git does with
    `core.trustctime=false`. An edit still changes the mtime (or the inode, for a replaced file).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    changed = st.st_mtime_ns if stat.S_ISREG(st.st_mode) else st.st_ctime_ns
    return [st.st_mtime_ns, changed, st.st_ino, st.st_size]


def fingerprint(manifest_files: Sequence[str], folders: Sequence[str] = ()) -> dict[str, Any]:
    """The key as it is now: stamps of `sys.path` folders, of `manifest_files` and of `folders`.

    A plugins folder's and a plugin folder's stamps change when a plugin folder or a file in one (its main_file)
    is added, removed or renamed; a manifest's own stamps when it is edited.
    """
    return {
        "format": CACHE_FORMAT,
        "python": sys.version,
        "interpreter": [sys.prefix, sys.executable],
        "sys_path": list(sys.path),
        "path": {p: stamp(p) for p in sys.path if p},
        "manifests": {p: stamp(p) for p in manifest_files},
        "folders": {p: stamp(p) for p in folders},
    }


def newest_ns(fp: dict[str, Any], parts: Sequence[str] = ("path", "manifests", "folders")) -> int:
    """The newest mtime or ctime among the stamps of a key's `parts`, in nanoseconds (0 when none exists)."""
    stamps = [max(v[0], v[1]) for part in parts for v in fp[part].values() if v]
    return max(stamps, default=0)


def load(path: str) -> dict[str, Any] | None:
    """The document at `path`, or None when it is missing, unreadable, damaged or not a dict.

    Only a file of this user that no one else may write is read (`dump` makes them so): marshal data is trusted as
    the interpreter trusts its bytecode cache, which is why nobody else's file is.
    """
    import marshal

    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            data = marshal.loads(fh.read())  # noqa: S302 - our own file, as the bytecode cache (see above)
    except (OSError, ValueError, TypeError, EOFError):
        return None
    return data if isinstance(data, dict) else None


def dump(path: str, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (a new file of mode 0600 renamed over it); a folder that cannot be written
    only costs speed."""
    import marshal

    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        # a name of its own, created exclusively (no need to import tempfile for one file)
        tmp = f"{path}.{os.getpid()}-{time.monotonic_ns()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(marshal.dumps(data))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def read(path: str, plugins_dirs: Sequence[str], racy_seconds: float = RACY_SECONDS) -> dict[str, Any] | None:
    """The discovery document at `path` for `plugins_dirs` when its key still holds and it was written safely after
    its newest stamp, else None.

    Any unreadable, malformed or foreign file is a miss, never an error: the caller scans instead.
    """
    data = load(path)
    if data is None:
        return None
    try:
        key = data["fingerprint"]
        if data["plugins_dirs"] != list(plugins_dirs) or key.get("format") != CACHE_FORMAT:
            return None
        if key != fingerprint(data["manifest_files"], data["folders"]):
            return None
        if newest_ns(key) > data["written_ns"] - racy_seconds * 1e9:
            return None
        return data
    except (KeyError, TypeError, AttributeError):
        return None


def write(path: str, document: dict[str, Any]) -> None:
    """Write `document` (plain data with `manifest_files` and `folders`) with its key and time, atomically.

    The key is taken before the time, so a change between the two makes the file untrusted, never wrongly
    trusted. A folder that cannot be written only costs speed.
    """
    dump(path, {**document, "fingerprint": fingerprint(document["manifest_files"], document["folders"]),
                "written_ns": time.time_ns()})
