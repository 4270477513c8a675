"""The runtime site: a private read-only copy of exactly the files a plugin's worker may import.

Hard links (copies across file systems) of the plugin's distribution and its dependency closure, plus
erp-plugins-core and msgpack, built once per set of installed versions under `runtime_dir` and bound at
/sandbox/site. An unprivileged uid cannot reach an interpreter or site-packages under a mode-700 home
(pyenv under /root), and the plugin sees no other installed package, no state store and no key file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._discovery import PluginRecord
from .._errors import SandboxError

log = logging.getLogger("erp_plugins.sandbox")

SANDBOX_SITE = "/sandbox/site"
#: The worker's own modules, compiled into each site (they import nothing of the host's).
_WORKER_MODULES = ("erp_plugins_core/_worker.py", "erp_plugins_core/_rpc.py", "erp_plugins_core/_zygote.py",
                   "erp_plugins_core/_userns.py")


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What a worker is started from: interpreter, binds, and the mirrored site directory."""

    python: str
    site: str
    binds: tuple[tuple[str, str], ...] = ()


def _others_can_read(path: str) -> bool:
    """True when a uid that is neither owner nor group can reach and read `path`."""
    p = Path(path)
    for parent in [*reversed(p.parents), p]:
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return bool(os.stat(p).st_mode & stat.S_IROTH)


@functools.lru_cache(maxsize=8)
def _python_version(python: str) -> str:
    out = subprocess.run([python, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30, check=False, env={})
    return out.stdout.strip()


def choose_python(python: str | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The worker's interpreter and the read-only binds it needs besides /usr.

    The host's own interpreter when an unprivileged uid can execute it; else the system's
    `/usr/bin/pythonX.Y` of the same version (pyenv under a mode-700 home is not reachable).
    """
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python is None:
        exe = os.path.realpath(sys.executable)
        prefix = os.path.realpath(sys.base_prefix)
        if _others_can_read(exe) and _others_can_read(prefix):
            python = exe
        else:
            python = f"/usr/bin/python{want}"
            if not os.path.exists(python):
                raise SandboxError(
                    f"the host interpreter {exe} is not readable by unprivileged users and {python} does not "
                    f"exist; install Python {want} system-wide (apt-get install python{want}) or pass python=..."
                )
    python = os.path.realpath(python)
    if _python_version(python) != want:
        raise SandboxError(f"worker interpreter {python} is not Python {want} like the host; pass python=...")
    if python.startswith("/usr/"):
        return python, ()
    prefix = str(Path(python).parent.parent)
    if not _others_can_read(prefix):
        raise SandboxError(f"worker interpreter prefix {prefix} is not readable by unprivileged users")
    return python, ((prefix, prefix),)


def _find(name: str, path: list[str]) -> Any:
    import importlib.metadata as md

    return next(iter(md.distributions(name=name, path=path)), None)


def _closure(record: PluginRecord) -> list[Any]:
    """The plugin's distribution, erp-plugins-core, msgpack and every installed requirement, recursively."""
    import importlib.metadata as md

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if record.folder is not None:  # a folder plugin: its folder, and what its manifest requires
        from .._folders import FolderDistribution

        search = list(sys.path)
        own: Any = FolderDistribution(record)
    elif not record.dist_path:
        raise SandboxError(f"plugin {record.name!r}: its distribution's files are unknown (no dist-info path)")
    else:
        search = [str(Path(record.dist_path).parent), *sys.path]
        own = md.PathDistribution(Path(record.dist_path))
    roots = [own, _find("erp-plugins-core", search), _find("msgpack", search)]
    todo = [d for d in roots if d is not None]
    seen: dict[str, Any] = {}
    while todo:
        dist = todo.pop()
        key = canonicalize_name(dist.metadata["Name"] or "")
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = _find(req.name, search)
            if dep is not None:
                todo.append(dep)
    return list(seen.values())


def _dist_files(dist: Any) -> list[tuple[str, str]]:
    """(host file, path inside the site) for every file of an installed distribution (or a folder plugin's)."""
    from .._folders import FolderDistribution, site_files

    if isinstance(dist, FolderDistribution):
        return site_files(dist.record)
    root = Path(dist._path).parent  # noqa: SLF001 - PathDistribution keeps its folder here
    out: list[tuple[str, str]] = []
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    editable = bool(direct.get("dir_info", {}).get("editable"))
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if not parts or parts[0] == ".." or Path(str(f)).is_absolute():
            continue
        if editable and str(f).endswith(".pth"):
            for line in (root / f).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "import")) and os.path.isdir(line):
                    out.extend(_tree_files(line))
            continue
        out.append((str(root / f), str(f)))
    return out


def _tree_files(top: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.endswith((".egg-info", ".dist-info")) and d != ".git"]
        for name in filenames:
            full = os.path.join(dirpath, name)
            out.append((full, os.path.relpath(full, top)))
    return out


def _check_runtime_dir(path: Path) -> None:
    st = os.stat(path)
    if stat.S_ISLNK(os.lstat(path).st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(f"runtime_dir {path} must be a directory owned by this user and writable only by it")
    if not _others_can_read(str(path)):
        raise SandboxError(
            f"runtime_dir {path} (or a parent) is not readable by unprivileged users; choose a directory such "
            "as /var/cache/erp-plugins whose parents are world-traversable"
        )


def default_runtime_dir() -> Path:
    """Where runtime sites are built: /var/cache/erp-plugins/sandbox for root, else the user's cache dir."""
    if os.geteuid() == 0:
        return Path("/var/cache/erp-plugins/sandbox")
    import platformdirs

    return Path(platformdirs.user_cache_dir("erp-plugins"), "sandbox")


#: Runtimes this process built, by what they were built from: every tenant's runner of a plugin shares one.
_built: dict[tuple[Any, ...], Runtime] = {}


def build_runtime(record: PluginRecord, runtime_dir: str | os.PathLike[str] | None = None,
                  python: str | None = None, forbidden: Iterable[str] = ()) -> Runtime:
    """Choose the interpreter and build (or reuse) the plugin's read-only runtime site.

    Working out the site (the dependency closure, a stat of each of its files) takes 0.2-0.5 s here, so the
    result is kept for this process, per distribution (its dist-info folder and that folder's mtime, which an
    upgrade or reinstall changes), runtime_dir, interpreter and forbidden paths, while the site exists: a
    host with a thousand tenants works it out once per plugin, not once per worker start.
    """
    forbidden = tuple(sorted(forbidden))
    root = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
    try:
        key: tuple[Any, ...] | None = (record.dist_path, os.stat(record.dist_path or "").st_mtime_ns,
                                       str(root), python, forbidden)
    except OSError:
        key = None
    cached = _built.get(key) if key is not None else None
    if cached is not None and os.path.exists(os.path.join(cached.site, ".complete")):
        mark_used(cached.site)
        return cached
    runtime = _build_runtime(record, root, python, forbidden)
    if key is not None:
        _built[key] = runtime
    return runtime


def _build_runtime(record: PluginRecord, root: Path, python: str | None, forbidden: tuple[str, ...]) -> Runtime:
    python, binds = choose_python(python)
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    _check_runtime_dir(root)
    files: dict[str, str] = {}
    for dist in _closure(record):
        for src, rel in _dist_files(dist):
            files.setdefault(rel, src)
    banned = {os.path.realpath(p) for p in forbidden}
    digest = hashlib.sha256(_python_version(python).encode() + b"\0site-layout-2")  # 2: worker bytecode
    for rel, src in sorted(files.items()):
        real = os.path.realpath(src)
        if real in banned or any(real.startswith(b + os.sep) for b in banned):
            raise SandboxError(f"plugin {record.name!r}: its runtime would include {real}, which must stay private")
        try:
            st = os.stat(src)
        except OSError:
            continue
        digest.update(f"{rel}\0{real}\0{st.st_mtime_ns}\0{st.st_size}\0{st.st_ino}\n".encode())
    target = root / f"site-{digest.hexdigest()[:24]}"
    if not (target / ".complete").exists():
        _materialize(root, target, files)
        prune_runtime_sites(root, keep=target)  # a new site usually means an upgrade left an old one unused
    mark_used(target)
    return Runtime(python=python, site=str(target), binds=binds)


#: A runtime site from which no worker started for this long is removed (when another site is built).
SITE_RETENTION_S = 30 * 86400
#: A `.build-*` directory this old belongs to a build that died half-way.
STALE_BUILD_S = 3600


def mark_used(site: str | os.PathLike[str]) -> None:
    """Record that a worker starts from `site` now (the mtime of its `.complete`), for `prune_runtime_sites`."""
    with contextlib.suppress(OSError):
        os.utime(Path(site) / ".complete")


def prune_runtime_sites(root: str | os.PathLike[str], *, keep: str | os.PathLike[str] | None = None,
                        retention: float = SITE_RETENTION_S, now: float | None = None) -> list[Path]:
    """Remove runtime sites unused for `retention` seconds and abandoned builds; returns what was removed.

    Every worker start marks its site used, so a site is only removed after no worker of any host on this
    machine started from it for the whole retention (30 days by default): long enough that a running host's
    worker restarting from it is not a realistic case, and the next restart would rebuild it anyway.
    """
    root, now = Path(root), time.time() if now is None else now
    removed: list[Path] = []
    for entry in root.iterdir() if root.is_dir() else ():
        if keep is not None and entry == Path(keep):
            continue
        try:
            if entry.name.startswith("site-"):
                stale = now - (entry / ".complete").stat().st_mtime > retention
            elif entry.name.startswith(".build-"):
                stale = now - entry.stat().st_mtime > STALE_BUILD_S
            else:
                continue
        except FileNotFoundError:  # a site without .complete is a half-renamed build: leave it to its builder
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        log.info("removed %d unused sandbox runtime site(s) under %s", len(removed), root)
    return removed


def _compile_worker(build: Path) -> None:
    """Bytecode for the worker's own modules, so its cold start does not compile them (best effort).

    Written atomically next to the hard links (never into a linked file); valid for the worker because it
    runs the same Python minor version as the host (choose_python checks) and the sources keep their mtimes.
    """
    import importlib.util
    import py_compile

    for rel in _WORKER_MODULES:
        src = build / rel
        if src.exists():
            with contextlib.suppress(OSError, py_compile.PyCompileError):
                cfile = importlib.util.cache_from_source(str(src))
                py_compile.compile(str(src), cfile=cfile, doraise=True)
                os.chmod(cfile, 0o644)


def _materialize(root: Path, target: Path, files: dict[str, str]) -> None:
    build = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        os.chmod(build, 0o755)  # noqa: S103 - the unprivileged worker must read the runtime site
        for rel, src in files.items():
            dst = build / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                st = os.stat(src)
            except OSError:
                continue
            try:
                if not st.st_mode & stat.S_IROTH:
                    raise OSError(errno.EPERM, "not world-readable")
                os.link(src, dst)
            except FileExistsError:
                continue
            except OSError:
                shutil.copy2(src, dst)
                os.chmod(dst, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
        _compile_worker(build)
        for dirpath, _dirs, _files in os.walk(build):
            os.chmod(dirpath, 0o755)  # noqa: S103 - as above
        (build / ".complete").write_text("ok\n")
        os.chmod(build / ".complete", 0o644)
        try:
            os.rename(build, target)
        except OSError:  # another process built it first
            shutil.rmtree(build, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise

