"""Discovery: find plugins through the `erp_plugins` entry point group and read their manifests, never importing.

The result is cached on disk. The cache key is the nanosecond mtime, inode and ctime of every `sys.path`
directory (an install, upgrade or removal adds or removes a `.dist-info` there) and of every manifest file
read last time (editable installs). Like git's "racy clean" rule, a cache written less than two seconds
after the newest of those timestamps is not trusted, so changes within one clock tick are not missed.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from ._errors import ManifestError
from ._manifest import Manifest, load_manifest

GROUP = "erp_plugins"
MANIFEST_FILE = "plugin.yaml"
CACHE_FORMAT = 1
_RACY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class PluginRecord:
    """One plugin as installed: where it comes from, its manifest (if readable) and what is wrong with it."""

    name: str
    entry_point: str
    distribution: str
    dist_version: str
    dist_path: str | None  # the .dist-info folder, for RECORD checks; None when unknown
    manifest_path: str | None
    manifest: Manifest | None
    errors: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The module the entry point names."""
        return self.entry_point.partition(":")[0].strip()

    @property
    def attr(self) -> str:
        """The class name the entry point names."""
        return self.entry_point.partition(":")[2].strip()

    def with_errors(self, *errors: str) -> PluginRecord:
        """A copy with more errors."""
        return PluginRecord(**{**_fields(self), "errors": self.errors + errors})

    def distribution_object(self) -> md.Distribution | None:
        """The installed distribution, for file-level checks."""
        return md.PathDistribution(Path(self.dist_path)) if self.dist_path else None


def _fields(rec: PluginRecord) -> dict[str, Any]:
    return {f: getattr(rec, f) for f in PluginRecord.__slots__}


@dataclass
class Discovery:
    """Everything discovery found: plugin records and the installed distributions' versions."""

    records: list[PluginRecord]
    versions: dict[str, str]  # canonical distribution name -> version
    manifest_files: list[str] = field(default_factory=list)
    from_cache: bool = False

    def installed_version(self, name: str) -> str | None:
        """The installed version of a distribution, or None when it is not installed."""
        return self.versions.get(canonicalize_name(name))


# --- Scanning -------------------------------------------------------------------------------------------


def _manifest_location(dist: md.Distribution, module: str) -> Path | None:
    """The plugin.yaml beside the entry point's module, found in the distribution's file list.

    Editable installs list no package files; for them the top-level package is located through the import
    system's finders (`find_spec` of a top-level name executes no package code).
    """
    parts = module.split(".")
    candidates = ["/".join(parts) + "/" + MANIFEST_FILE, "/".join(parts[:-1] + [MANIFEST_FILE])]
    files = dist.files
    if files:
        listed = {f.as_posix() for f in files if f.name == MANIFEST_FILE}
        for cand in candidates:
            if cand in listed:
                return Path(str(dist.locate_file(cand)))
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in (parts[1:], parts[1:-1]):
            path = Path(root, *sub, MANIFEST_FILE)
            if path.is_file():
                return path
    return None


def _read_one(dist: md.Distribution, ep: md.EntryPoint, dist_name: str) -> PluginRecord:
    dist_path = getattr(dist, "_path", None)
    base = PluginRecord(
        name=ep.name,
        entry_point=ep.value,
        distribution=dist_name,
        dist_version=dist.version,
        dist_path=str(dist_path) if dist_path else None,
        manifest_path=None,
        manifest=None,
    )
    module, _, attr = ep.value.partition(":")
    if not module.strip() or not attr.strip():
        return base.with_errors(
            f"entry point {ep.name} = {ep.value!r} of {dist_name}: must be 'package.module:ClassName'"
        )
    path = _manifest_location(dist, module.strip())
    if path is None:
        return base.with_errors(
            f"{dist_name}: no {MANIFEST_FILE} next to module {module.strip()}; ship it as package data "
            f"in that module's package"
        )
    try:
        manifest = load_manifest(path.read_bytes(), str(path))
    except OSError as exc:
        return PluginRecord(**{**_fields(base), "manifest_path": str(path), "errors": (f"{path}: cannot read: {exc.strerror}",)})
    except ManifestError as exc:
        return PluginRecord(**{**_fields(base), "manifest_path": str(path), "errors": (str(exc),)})
    errors: list[str] = []
    if manifest.name != ep.name:
        errors.append(
            f"{path}: name: {manifest.name!r} differs from the entry point name {ep.name!r}; make them equal"
        )
    if manifest.version != dist.version:
        errors.append(
            f"{path}: version: {manifest.version!r} differs from distribution {dist_name} {dist.version}; "
            "make them equal"
        )
    return PluginRecord(**{**_fields(base), "manifest_path": str(path), "manifest": manifest, "errors": tuple(errors)})


def scan() -> Discovery:
    """Read every installed distribution's `erp_plugins` entry points and manifests (no cache)."""
    records: list[PluginRecord] = []
    versions: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        key = canonicalize_name(name)
        if not key or key in versions:  # an earlier sys.path entry shadows later copies, as for imports
            continue
        versions[key] = dist.version
        for ep in dist.entry_points:
            if ep.group == GROUP:
                records.append(_read_one(dist, ep, name))
    claimed: dict[str, list[PluginRecord]] = defaultdict(list)
    for rec in records:
        claimed[rec.name].append(rec)
    out: list[PluginRecord] = []
    for rec in records:
        owners = claimed[rec.name]
        if len(owners) > 1:
            names = " and ".join(sorted(o.distribution for o in owners))
            rec = rec.with_errors(
                f"plugin name {rec.name!r} is claimed by {names}; neither is loaded until one is uninstalled"
            )
        out.append(rec)
    out.sort(key=lambda r: (r.name, r.distribution))
    return Discovery(out, versions, [r.manifest_path for r in out if r.manifest_path])


# --- Cache ----------------------------------------------------------------------------------------------


def _stat_key(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size]


def _fingerprint(manifest_files: list[str]) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "python": sys.version,
        "path": {p: _stat_key(p) for p in sys.path if p},
        "manifests": {p: _stat_key(p) for p in manifest_files},
    }


def _newest_ns(fp: dict[str, Any]) -> int:
    stamps = [max(v[0], v[1]) for part in ("path", "manifests") for v in fp[part].values() if v]
    return max(stamps, default=0)


def cache_path() -> Path | None:
    """Where the discovery cache lives for this interpreter and sys.path; None when caching is disabled."""
    if os.environ.get("ERP_PLUGINS_CACHE", "1").lower() in {"0", "false", "no", "off"}:
        return None
    root = os.environ.get("ERP_PLUGINS_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("erp-plugins")
    import hashlib

    ident = hashlib.sha256("\0".join([sys.prefix, sys.executable, *sys.path]).encode()).hexdigest()[:16]
    return Path(root, f"discovery-{ident}.json")


def _record_to_json(rec: PluginRecord) -> dict[str, Any]:
    data = _fields(rec)
    data["manifest"] = rec.manifest.model_dump(mode="json") if rec.manifest else None
    data["errors"] = list(rec.errors)
    return data


def _record_from_json(data: dict[str, Any]) -> PluginRecord:
    manifest = Manifest.from_validated(data["manifest"]) if data["manifest"] is not None else None
    return PluginRecord(**{**data, "manifest": manifest, "errors": tuple(data["errors"])})


def _load_cache(path: Path) -> Discovery | None:
    try:
        data = json.loads(path.read_bytes())
        manifest_files = data["manifest_files"]
        if data["fingerprint"] != _fingerprint(manifest_files):
            return None
        if _newest_ns(data["fingerprint"]) > data["written_ns"] - _RACY_SECONDS * 1e9:
            return None
        return Discovery(
            [_record_from_json(r) for r in data["records"]], data["versions"], manifest_files, from_cache=True
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_cache(path: Path, found: Discovery) -> None:
    data = {
        "fingerprint": _fingerprint(found.manifest_files),
        "written_ns": time.time_ns(),
        "manifest_files": found.manifest_files,
        "records": [_record_to_json(r) for r in found.records],
        "versions": found.versions,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".discovery-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache folder only costs speed


def discover(*, use_cache: bool = True) -> Discovery:
    """Installed plugins, from the cache when nothing was installed, upgraded or removed since it was written."""
    path = cache_path() if use_cache else None
    if path is not None:
        cached = _load_cache(path)
        if cached is not None:
            return cached
    found = scan()
    if path is not None:
        _save_cache(path, found)
    return found
