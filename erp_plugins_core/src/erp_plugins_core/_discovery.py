"""Discovery: find plugins through the `erp_plugins` entry point group and read their manifests, never importing.

The result is cached on disk (`_cachefile`). The cache key is the nanosecond mtime, inode and (folders only) ctime
of every `sys.path` directory (an install, upgrade or removal adds or removes a `.dist-info` there) and of every
manifest file read last time (editable installs), and, with plugins folders (`_folders`), of each plugins folder and
plugin folder (a plugin folder or one of its files added or removed). Like git's "racy clean" rule, a cache written
less than two seconds after the newest of those timestamps is not trusted, so changes within one clock tick are
not missed. The cache also keeps what `erp-plugins list` prints, so the command line answers it from the file.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from . import _cachefile
from ._cachefile import RACY_SECONDS
from ._errors import ManifestError
from ._manifest import Manifest, load_manifest
from ._record import _FIELDS, PluginRecord

GROUP = "erp_plugins"
MANIFEST_FILE = "plugin.yaml"
_RACY_SECONDS = RACY_SECONDS  # a module attribute, so tests can narrow the racy-clean window


def _fields(rec: PluginRecord) -> dict[str, Any]:
    return {f: getattr(rec, f) for f in _FIELDS}


@dataclass
class Discovery:
    """Everything discovery found: plugin records and the installed distributions' versions."""

    records: list[PluginRecord]
    versions: dict[str, str]  # canonical distribution name -> version (plugins' and their requirements')
    manifest_files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # plugins folders and plugin folders the cache key covers
    plugins_dirs: list[str] = field(default_factory=list)
    from_cache: bool = False
    validated: bool = False  # records carry the catalog's checks already (see `discover(validate=...)`)
    listing: Any = None  # what `list` prints for these records (see `discover(listing=...)`), kept in the cache

    def installed_version(self, name: str) -> str | None:
        """The installed version of a distribution, or None when it is not installed."""
        return self.versions.get(canonicalize_name(name))


# --- Scanning -------------------------------------------------------------------------------------------

#: A header line as the email package's parser takes it (`email.feedparser.headerRE`, less the continuation).
_HEADER = re.compile(r"[\041-\071\073-\176]*:")


def _plain_name_version(text: str) -> tuple[str, str] | None:
    """`Name` and `Version` as `email.message_from_string(text)` gives them (first of each, "" when absent), read
    from the header lines alone; None when a line is one the email parser treats specially (a carriage return, a
    unix-from, a field without a name, a continued Name or Version), which the caller leaves to it."""
    found: dict[str, str] = {}
    last = ""
    for line in text.split("\n"):
        if "\r" in line or line.startswith("From "):
            return None
        if line[:1] in (" ", "\t"):
            if last in ("name", "version"):
                return None  # a folded value
            continue
        if not _HEADER.match(line):
            break  # the blank line before the body, or the body itself
        i = line.find(":")
        if i == 0:
            return None
        last = line[:i].lower()
        if last in ("name", "version") and last not in found:
            found[last] = line[i + 1:].lstrip(" \t")
    return found.get("name", ""), found.get("version", "")


def _name_version(dist: md.Distribution) -> tuple[str, str]:
    """The distribution's metadata `Name` and `Version` ("" when absent), as `dist.metadata` gives them.

    The header lines are read directly when they are plain (nearly always), which spares the email package's
    parse of the whole file, long description included, for every plugin of a cold scan.
    """
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
    plain = _plain_name_version(text) if text else None
    if plain is not None:
        return plain
    meta = dist.metadata
    return meta["Name"] or "", meta["Version"] or ""



def _manifest_location(dist: md.Distribution, module: str, files: list[md.PackagePath] | None) -> Path | None:
    """The plugin.yaml beside the entry point's module, found in the distribution's file list.

    Editable installs list no package files; for them the top-level package is located through the import
    system's finders (`find_spec` of a top-level name executes no package code).
    """
    parts = module.split(".")
    candidates = ["/".join(parts) + "/" + MANIFEST_FILE, "/".join(parts[:-1] + [MANIFEST_FILE])]
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


def _missing_module(dist: md.Distribution, module: str, files: list[md.PackagePath] | None) -> str | None:
    """Why the entry point's module is not among the distribution's files (RECORD), or None when it is.

    Read from the file list only; nothing is imported. An editable install lists no package files, so there
    the module is looked for under the top-level package's folder (as the manifest is).
    """
    parts = module.split(".")
    base = "/".join(parts)
    if files:
        listed = {f.as_posix() for f in files}
        if base + ".py" in listed or base + "/__init__.py" in listed:
            return None
        if any(p.startswith(base + ".") and p.endswith((".so", ".pyd", ".pyc")) for p in listed):
            return None  # an extension or bytecode-only module
        tops = {p.split("/", 1)[0].removesuffix(".py") for p in listed}
        if parts[0] in tops:
            return f"module {module} is not among the distribution's files (RECORD); fix the entry point or ship it"
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return f"module {module} is not installed (no package {parts[0]} in the distribution or on sys.path)"
    if len(parts) == 1:
        return None
    for root in spec.submodule_search_locations or []:
        path = Path(root, *parts[1:])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() or any(
            path.parent.glob(parts[-1] + ".*.so")
        ):
            return None
    return f"module {module} is not among the distribution's files (RECORD); fix the entry point or ship it"


def _main_agrees(manifest: Manifest, ep: md.EntryPoint, path: Path) -> list[str]:
    """The seed's `main_file`/`main_class`, when a distribution's manifest gives them, must name the entry point's."""
    module, _, attr = (p.strip() for p in ep.value.partition(":"))
    out = []
    if manifest.main_class is not None and manifest.main_class != attr:
        out.append(f"{path}: main_class: {manifest.main_class!r} differs from the entry point's class {attr!r} "
                   f"({ep.name} = {ep.value}); make them agree or drop main_class")
    if manifest.main_file is not None and manifest.main_file != module.rsplit(".", 1)[-1] + ".py":
        out.append(f"{path}: main_file: {manifest.main_file!r} differs from the entry point's module {module} "
                   f"({module.rsplit('.', 1)[-1]}.py); make them agree or drop main_file")
    return out


def _read_one(dist: md.Distribution, ep: md.EntryPoint, dist_name: str, version: str) -> PluginRecord:
    dist_path = getattr(dist, "_path", None)
    base = PluginRecord(
        name=ep.name,
        entry_point=ep.value,
        distribution=dist_name,
        dist_version=version,
        dist_path=str(dist_path) if dist_path else None,
        manifest_path=None,
        manifest=None,
    )
    module, _, attr = ep.value.partition(":")
    if not module.strip() or not attr.strip():
        return base.with_errors(
            f"entry point {ep.name} = {ep.value!r} of {dist_name}: must be 'package.module:ClassName'"
        )
    files = dist.files  # RECORD, parsed once for both look-ups
    path = _manifest_location(dist, module.strip(), files)
    if path is None:
        return base.with_errors(
            f"{dist_name}: no {MANIFEST_FILE} next to module {module.strip()}; ship it as package data "
            f"in that module's package"
        )
    try:
        manifest = load_manifest(path.read_bytes(), str(path))
    except OSError as exc:
        problem = f"{path}: cannot read: {exc.strerror}"
        return PluginRecord(**{**_fields(base), "manifest_path": str(path), "errors": (problem,)})
    except ManifestError as exc:
        return PluginRecord(**{**_fields(base), "manifest_path": str(path), "errors": (str(exc),)})
    errors: list[str] = []
    missing = _missing_module(dist, module.strip(), files)
    if missing:
        errors.append(f"entry point {ep.name} = {ep.value!r} of {dist_name}: {missing}")
    errors.extend(_main_agrees(manifest, ep, path))
    if manifest.name != ep.name:
        errors.append(
            f"{path}: name: {manifest.name!r} differs from the entry point name {ep.name!r}; make them equal"
        )
    if manifest.version != version:
        errors.append(
            f"{path}: version: {manifest.version!r} differs from distribution {dist_name} {version}; "
            "make them equal"
        )
    return PluginRecord(**{**_fields(base), "manifest_path": str(path), "manifest": manifest, "errors": tuple(errors)})


def scan(plugins_dirs: list[str] | None = None) -> Discovery:
    """Read every installed distribution's `erp_plugins` entry points and manifests, and the folder plugins of
    `plugins_dirs` (no cache).

    `entry_points(group=...)` already drops distributions shadowed by an earlier `sys.path` entry (as for
    imports); each plugin distribution's metadata is parsed once. `versions` holds the plugin distributions
    and every distribution a manifest requires, which is all the dependency check asks about.
    """
    records: list[PluginRecord] = []
    versions: dict[str, str] = {}
    names: dict[int, tuple[str, str]] = {}  # id(distribution) -> (Name, Version)
    for ep in md.entry_points(group=GROUP):
        dist = ep.dist
        if dist is None:
            continue
        known = names.get(id(dist))
        if known is None:
            known = names[id(dist)] = _name_version(dist)
            if known[0]:
                versions.setdefault(canonicalize_name(known[0]), known[1])
        if known[0]:
            records.append(_read_one(dist, ep, *known))
    watched: list[str] = []
    if plugins_dirs:
        from ._folders import scan_folders

        folder_records, watched = scan_folders(plugins_dirs)
        records.extend(folder_records)
    wanted = {canonicalize_name(req.name) for rec in records if rec.manifest for req in rec.manifest.requirements}
    for key in sorted(wanted - versions.keys()):
        try:
            versions[key] = md.version(key)
        except md.PackageNotFoundError:
            pass
    claimed: dict[str, list[PluginRecord]] = defaultdict(list)
    for rec in records:
        claimed[rec.name].append(rec)
    out: list[PluginRecord] = []
    for rec in records:
        owners = claimed[rec.name]
        if len(owners) > 1:
            names_text = " and ".join(sorted(f"folder {o.folder}" if o.folder else o.distribution for o in owners))
            rec = rec.with_errors(
                f"plugin name {rec.name!r} is claimed by {names_text}; neither is loaded until one is uninstalled "
                "or removed"
            )
        out.append(rec)
    out.sort(key=lambda r: (r.name, r.distribution))
    return Discovery(out, versions, [r.manifest_path for r in out if r.manifest_path], folders=watched,
                     plugins_dirs=list(plugins_dirs or []))


# --- Cache (the file and its key: `_cachefile`) ----------------------------------------------------------


def cache_path(plugins_dirs: Sequence[str] = ()) -> Path | None:
    """Where the discovery cache lives for this interpreter and sys.path; None when caching is disabled."""
    path = _cachefile.cache_path(plugins_dirs)
    return Path(path) if path is not None else None


def _record_to_data(rec: PluginRecord) -> list[Any]:
    """A record as plain data, in `_FIELDS` order (the manifest as its JSON dump)."""
    m = rec._manifest
    manifest = m.model_dump(mode="json") if m is not None else rec._manifest_data
    return [rec.name, rec.entry_point, rec.distribution, rec.dist_version, rec.dist_path, rec.manifest_path,
            manifest, list(rec.errors), rec.folder]


def _record_from_data(data: list[Any]) -> PluginRecord:
    """The record `_record_to_data` gave, its manifest left as data until first accessed."""
    name, entry_point, distribution, dist_version, dist_path, manifest_path, manifest, errors, folder = data
    rec = PluginRecord(name, entry_point, distribution, dist_version, dist_path, manifest_path, None, tuple(errors),
                       folder)
    object.__setattr__(rec, "_manifest_data", manifest)
    return rec


def _load_cache(path: Path, plugins_dirs: list[str]) -> Discovery | None:
    import marshal

    data = _cachefile.read(str(path), plugins_dirs, _RACY_SECONDS)
    if data is None:
        return None
    try:
        # the records are a nested document, read here only: `list` answers from `listing` without them
        records = [_record_from_data(r) for r in marshal.loads(data["records"])]  # noqa: S302 - see _cachefile.load
        return Discovery(records, data["versions"], data["manifest_files"], folders=data["folders"],
                         plugins_dirs=data["plugins_dirs"], from_cache=True, validated=data["validated"],
                         listing=data.get("listing"))
    except (ValueError, KeyError, TypeError, EOFError):
        return None


def _save_cache(path: Path, found: Discovery) -> None:
    import marshal

    _cachefile.write(str(path), {
        "manifest_files": found.manifest_files,
        "folders": found.folders,
        "plugins_dirs": found.plugins_dirs,
        "records": marshal.dumps([_record_to_data(r) for r in found.records]),
        "versions": found.versions,
        "validated": found.validated,
        "listing": found.listing,
    })


def discover(*, use_cache: bool = True,
             validate: Callable[[Discovery], list[PluginRecord]] | None = None,
             plugins_dirs: list[str] | None = None,
             listing: Callable[[list[PluginRecord]], Any] | None = None) -> Discovery:
    """Installed plugins, from the cache when nothing was installed, upgraded or removed since it was written.

    `validate` (the catalog's checks) runs on a fresh scan before it is cached, so a cache hit carries the
    validated records and `validated` is true; it depends only on what the cache key covers. `listing` turns
    the validated records into what `erp-plugins list` prints (plain data), cached with them so that the
    command line answers `list` from the cache file alone.
    """
    dirs = list(plugins_dirs or [])
    path = cache_path(dirs) if use_cache else None
    if path is not None:
        cached = _load_cache(path, dirs)
        if cached is not None:
            return cached
    found = scan(dirs)
    if validate is not None:
        found.records = validate(found)
        found.validated = True
        if listing is not None:
            found.listing = listing(found.records)
    if path is not None:
        _save_cache(path, found)
    return found
