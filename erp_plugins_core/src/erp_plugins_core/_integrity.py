"""Installed-file integrity: a plugin distribution's files against its wheel RECORD, and the lock of approved ones.

A wheel's RECORD lists every installed file with its sha256 and size. `verify_distribution` re-hashes them and names
files that were changed, deleted or added after installation. RECORD lives next to the files it describes, so someone
who can rewrite a plugin's files can rewrite its RECORD too: on its own this check catches accidents and careless
tampering. The lock (`build_lock`, `check_lock`) closes that gap: it stores the sha256 of each approved RECORD, so a
distribution whose RECORD matches the lock and whose files match its RECORD is byte for byte what was approved.

Not covered: `__pycache__/*.pyc` files are not in RECORD with hashes (pip writes them after installation), so a changed
cached bytecode file is not detected; workers should run with `PYTHONPYCACHEPREFIX` (or `sys.pycache_prefix`) pointing
at a private directory so site-packages bytecode is never read. Files outside the distribution's own package
directories (a stray `.pth` or `sitecustomize.py` in site-packages) are not this module's business.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import Distribution, PathDistribution
from pathlib import Path
from typing import Literal

from packaging.utils import canonicalize_name

from ._errors import IntegrityError

__all__ = [
    "FileProblem",
    "LockEntry",
    "build_lock",
    "check_lock",
    "distribution_name",
    "editable_location",
    "lock_from_json",
    "lock_to_json",
    "record_digest",
    "verify_distribution",
]

_CHUNK = 1 << 20  # hash in 1 MiB reads: constant memory whatever the file size
_LOCK_FORMAT = "erp-plugins-lock/1"
# Hash names PEP 376/427 allow in RECORD; md5 and sha1 are explicitly forbidden there.
_ALLOWED_HASHES = frozenset({"sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512", "blake2b",
                             "blake2s"})
_RECORD_NAMES = frozenset({"RECORD", "RECORD.jws", "RECORD.p7s"})


@dataclass(frozen=True)
class FileProblem:
    """One installed file that does not match the distribution's RECORD.

    `path` is relative to the site-packages directory, with `/` separators, as written in RECORD.
    """

    path: str
    problem: Literal["changed", "missing", "unexpected"]
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass(frozen=True)
class LockEntry:
    """An approved distribution: its canonical name, exact version and the sha256 (hex) of its RECORD file."""

    distribution: str
    version: str
    record_sha256: str


# --- reading a distribution ------------------------------------------------------------------------------------


def distribution_name(dist: Distribution) -> str:
    """The distribution's canonical name (PEP 503: lower case, runs of `-_.` as `-`)."""
    return canonicalize_name(dist.metadata["Name"] or "")


def _metadata_dir(dist: Distribution) -> Path | None:
    # importlib.metadata has no public accessor for the .dist-info folder; PathDistribution keeps it in `_path`.
    if isinstance(dist, PathDistribution):
        path = getattr(dist, "_path", None)
        if isinstance(path, Path):
            return path
    return None


def _site_dir(dist: Distribution) -> Path:
    return Path(str(dist.locate_file("")))


def editable_location(dist: Distribution) -> str | None:
    """The source folder of an editable (`pip install -e`) install, or None when `dist` is a regular install.

    Read from PEP 610 `direct_url.json`. An editable install runs code from a source tree that RECORD does not
    describe, so its files cannot be verified and it cannot be locked.
    """
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    dir_info = data.get("dir_info")
    if isinstance(dir_info, dict) and dir_info.get("editable") is True:
        url = data.get("url")
        if isinstance(url, str) and url.startswith("file://"):
            return url[len("file://"):]
        return str(url)
    return None


def _read_record_bytes(dist: Distribution) -> bytes | None:
    meta = _metadata_dir(dist)
    if meta is not None:
        try:
            return (meta / "RECORD").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IntegrityError(
                f"cannot read the RECORD of {distribution_name(dist)} in {meta}: {exc.strerror}; check its permissions"
            ) from exc
    text = dist.read_text("RECORD")
    return None if text is None else text.encode("utf-8")


def _no_record_problem(dist: Distribution) -> FileProblem:
    where = editable_location(dist)
    if where is not None:
        detail = (
            f"editable install from {where}: its code lives in a source tree that no RECORD describes, so its files "
            "cannot be verified; install the distribution from a wheel to verify it"
        )
    else:
        detail = (
            "no RECORD: the distribution was not installed from a wheel (egg-info or `setup.py develop`), so its "
            "files cannot be verified; reinstall it from a wheel with pip"
        )
    return FileProblem(path="RECORD", problem="missing", detail=detail)


def _parse_record(raw: bytes) -> list[tuple[str, str, str]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    rows: list[tuple[str, str, str]] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row:
            continue
        if len(row) != 3:
            raise ValueError(f"line {number} has {len(row)} fields, RECORD lines have 3 (path,hash,size)")
        path, digest, size = row
        rows.append((posixpath.normpath(path), digest, size))
    return rows


# --- verifying files -------------------------------------------------------------------------------------------


def _file_digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode("ascii")


def _outside_site(rel: str) -> bool:
    # Console scripts and data files RECORD places outside site-packages (`../../bin/x`) are never imported by the
    # host, and `pip install --target` moves them so the RECORD path no longer points at them: not verified.
    return rel.startswith(("/", "../")) or rel == ".."


def _check_file(site: Path, rel: str, digest: str, size: str) -> FileProblem | None:
    if not digest:
        name = posixpath.basename(rel)
        if name in _RECORD_NAMES or name.endswith(".pyc"):
            return None  # RECORD cannot hash itself; pip adds the .pyc it compiles without hashes
        return FileProblem(rel, "changed", "listed in RECORD without a hash, so it cannot be verified")
    algorithm, sep, expected = digest.partition("=")
    if not sep or algorithm not in _ALLOWED_HASHES:
        return FileProblem(rel, "changed", f"RECORD gives hash {digest!r}; only sha256-family hashes can be verified")
    target = site / rel
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return FileProblem(rel, "missing", "missing (listed in RECORD, not on disk)")
    except OSError as exc:
        return FileProblem(rel, "changed", f"cannot be read ({exc.strerror})")
    if stat.S_ISLNK(info.st_mode):
        return FileProblem(rel, "changed", "replaced by a symbolic link after installation (wheels install files)")
    if not stat.S_ISREG(info.st_mode):
        return FileProblem(rel, "changed", "is no longer a regular file")
    if size.strip():
        try:
            expected_size = int(size)
        except ValueError:
            return FileProblem(rel, "changed", f"RECORD gives size {size!r}, which is not a number")
        if info.st_size != expected_size:
            return FileProblem(
                rel, "changed",
                f"changed after installation (size {info.st_size} bytes, RECORD says {expected_size})",
            )
    try:
        actual = _file_digest(target, algorithm)
    except OSError as exc:
        return FileProblem(rel, "changed", f"cannot be read ({exc.strerror})")
    if actual != expected:
        return FileProblem(rel, "changed", f"changed after installation ({algorithm} differs from RECORD)")
    return None


def _package_roots(recorded: Iterable[str], meta_name: str) -> list[str]:
    """Topmost regular-package folders the distribution owns: those whose `__init__.py` it installed.

    Walking only these keeps namespace folders shared with other distributions (like `google/`) out of the search.
    """
    packages = {
        posixpath.dirname(path)
        for path in recorded
        if posixpath.basename(path) == "__init__.py"
        and not path.startswith(("../", meta_name + "/"))
        and not path.split("/", 1)[0].endswith(".data")
    }
    roots = []
    for pkg in sorted(packages):
        parts = pkg.split("/")
        if not any("/".join(parts[:i]) in packages for i in range(1, len(parts))):
            roots.append(pkg)
    return roots


def _unexpected(site: Path, roots: list[str], recorded: set[str]) -> list[FileProblem]:
    problems: list[FileProblem] = []
    for root in roots:
        for current, dirnames, filenames in os.walk(site / root):
            rel_dir = Path(current).relative_to(site).as_posix()
            in_cache = posixpath.basename(rel_dir) == "__pycache__"
            for name in list(dirnames):
                if os.path.islink(os.path.join(current, name)):
                    rel = f"{rel_dir}/{name}"
                    problems.append(FileProblem(rel, "unexpected", "symbolic link to a folder, not listed in RECORD"))
                    dirnames.remove(name)
            dirnames.sort()
            for name in sorted(filenames):
                rel = f"{rel_dir}/{name}"
                if rel in recorded or (in_cache and name.endswith(".pyc")):
                    continue
                if name.endswith(".pyc"):
                    detail = "not listed in RECORD (a .pyc outside __pycache__ is importable without its source)"
                else:
                    detail = "not listed in RECORD (added after installation)"
                problems.append(FileProblem(rel, "unexpected", detail))
    return problems


def verify_distribution(dist: Distribution) -> list[FileProblem]:
    """Every problem with `dist`'s installed files, compared with its RECORD; empty when all match.

    Checks each hashed RECORD entry's size and hash (read in 1 MiB chunks), names missing files, and names files
    inside the distribution's own package folders that RECORD does not list (compiled `__pycache__/*.pyc` excepted).
    Entries outside the site directory (console scripts in `../../bin`) are not checked: the host never runs them.
    A distribution without RECORD, or an editable install, gives one problem with path "RECORD" that says why it
    cannot be verified.
    """
    if editable_location(dist) is not None:
        return [_no_record_problem(dist)]
    raw = _read_record_bytes(dist)
    if raw is None:
        return [_no_record_problem(dist)]
    meta = _metadata_dir(dist)
    meta_name = meta.name if meta is not None else ""
    try:
        rows = _parse_record(raw)
    except ValueError as exc:
        return [FileProblem(f"{meta_name}/RECORD", "changed", f"RECORD is malformed: {exc}")]
    site = _site_dir(dist)
    inside = [(rel, digest, size) for rel, digest, size in rows if not _outside_site(rel)]
    problems = [p for rel, digest, size in inside if (p := _check_file(site, rel, digest, size)) is not None]
    recorded = {rel for rel, _, _ in inside}
    problems.extend(_unexpected(site, _package_roots(recorded, meta_name), recorded))
    return sorted(problems, key=lambda p: (p.path, p.problem))


# --- the lock --------------------------------------------------------------------------------------------------


def record_digest(dist: Distribution) -> str:
    """The sha256 (hex) of `dist`'s RECORD file as stored on disk; what the lock approves.

    Raises IntegrityError when there is no RECORD (not installed from a wheel, or editable).
    """
    raw = None if editable_location(dist) is not None else _read_record_bytes(dist)
    if raw is None:
        problem = _no_record_problem(dist)
        raise IntegrityError(f"{distribution_name(dist)} {dist.version}: {problem.detail}")
    return hashlib.sha256(raw).hexdigest()


def build_lock(dists: Iterable[Distribution]) -> dict[str, LockEntry]:
    """A lock approving exactly `dists` as installed now, keyed by canonical distribution name.

    When a name appears twice (the same distribution on two paths) the first wins, as it does for imports.
    Raises IntegrityError for a distribution that cannot be verified (no RECORD, or editable).
    """
    lock: dict[str, LockEntry] = {}
    for dist in dists:
        name = distribution_name(dist)
        if name in lock:
            continue
        lock[name] = LockEntry(distribution=name, version=dist.version, record_sha256=record_digest(dist))
    return lock


def lock_to_json(lock: dict[str, LockEntry]) -> str:
    """The lock as a stable JSON document (sorted by name), for the state store."""
    entries = [
        {"distribution": e.distribution, "version": e.version, "record_sha256": e.record_sha256}
        for _, e in sorted(lock.items())
    ]
    return json.dumps({"format": _LOCK_FORMAT, "distributions": entries}, indent=2) + "\n"


def _lock_error(what: str) -> IntegrityError:
    return IntegrityError(f"the approved-distributions lock is malformed: {what}; run `erp-plugins lock` to rebuild it")


def lock_from_json(text: str) -> dict[str, LockEntry]:
    """Parse and validate a lock written by `lock_to_json`; IntegrityError naming the fault when it is malformed."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _lock_error(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _lock_error(f"expected a JSON object, found {type(data).__name__}")
    if data.get("format") != _LOCK_FORMAT:
        raise _lock_error(f"field 'format' is {data.get('format')!r}, expected {_LOCK_FORMAT!r}")
    extra = set(data) - {"format", "distributions"}
    if extra:
        raise _lock_error(f"unknown field(s) {', '.join(sorted(extra))}")
    entries = data.get("distributions")
    if not isinstance(entries, list):
        raise _lock_error("field 'distributions' must be a list")
    lock: dict[str, LockEntry] = {}
    for index, item in enumerate(entries):
        where = f"distributions[{index}]"
        if not isinstance(item, dict) or set(item) != {"distribution", "version", "record_sha256"}:
            raise _lock_error(f"{where} must be an object with exactly distribution, version and record_sha256")
        for key in ("distribution", "version", "record_sha256"):
            if not isinstance(item[key], str) or not item[key]:
                raise _lock_error(f"{where}.{key} must be a non-empty string")
        digest = item["record_sha256"]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _lock_error(f"{where}.record_sha256 must be 64 lower-case hex digits")
        name = canonicalize_name(item["distribution"])
        if name in lock:
            raise _lock_error(f"{where} repeats distribution {name!r}")
        lock[name] = LockEntry(distribution=name, version=item["version"], record_sha256=digest)
    return lock


def check_lock(dist: Distribution, lock: dict[str, LockEntry]) -> list[str]:
    """Why `dist` as installed is not what the lock approved; empty when it is.

    Compares name, exact version and RECORD digest. Together with an empty `verify_distribution(dist)` this means
    every file is byte for byte the approved one.
    """
    name = distribution_name(dist)
    entry = lock.get(name)
    if entry is None:
        return [f"{name} {dist.version} is not approved: it is not in the lock; run `erp-plugins lock` to approve it"]
    problems: list[str] = []
    if dist.version != entry.version:
        problems.append(
            f"{name}: version {dist.version} is installed but {entry.version} was approved; "
            "run `erp-plugins lock` to approve the new version"
        )
    try:
        digest = record_digest(dist)
    except IntegrityError as exc:
        problems.append(str(exc))
        return problems
    if digest != entry.record_sha256:
        problems.append(
            f"{name} {dist.version}: RECORD differs from the approved one (sha256 {digest[:12]}..., approved "
            f"{entry.record_sha256[:12]}...): its files changed since `erp-plugins lock`"
        )
    return problems
