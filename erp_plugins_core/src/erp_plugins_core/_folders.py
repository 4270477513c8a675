"""Local plugin folders (`--plugins-dir`, `ERP_PLUGINS_PATH`): plugins written to the original design.

Each subfolder of a plugins folder that holds a `plugin.yaml` with `main_file` and `main_class` is a plugin, as
datasette's `--plugins-dir` and Odoo's addons path work. Discovery reads only the manifest and checks that
`main_file` exists; nothing is imported. When the plugin runs, its folder is the package
`erp_folder_plugins.<name>` (so relative imports between its files work), in the host's process when trusted,
else in a sandbox whose runtime site is the folder plus the core and the distributions its manifest requires.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import io
import os
import sys
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ._discovery import MANIFEST_FILE, PluginRecord
from ._errors import ManifestError
from ._manifest import load_manifest
from ._searchpath import PATH_ENV, plugins_dirs  # re-exported; light, as the command line's cached list needs them

__all__ = ["PATH_ENV", "FolderDistribution", "candidate_folders", "folder_files", "plugins_dirs", "prepare_import",
           "read_folder", "scan_folders", "site_files"]

#: The package a folder plugin's files live in when it runs: `erp_folder_plugins.<name>.<main_file stem>`.
PACKAGE = "erp_folder_plugins"
_SKIP_DIRS = frozenset({"__pycache__", ".git", ".venv", "node_modules"})


def candidate_folders(dirs: Iterable[str]) -> list[Path]:
    """Every subfolder of `dirs` that holds a plugin.yaml, in name order per folder."""
    found: list[Path] = []
    for top in dirs:
        try:
            entries = sorted(os.scandir(top), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in _SKIP_DIRS or not entry.is_dir():
                continue
            if os.path.isfile(os.path.join(entry.path, MANIFEST_FILE)):
                found.append(Path(entry.path))
    return found


def read_folder(folder: Path) -> PluginRecord:
    """The plugin in `folder`, validated from its manifest alone (never imported)."""
    manifest_path = folder / MANIFEST_FILE
    base = dict(name=folder.name, entry_point="", distribution=str(folder), dist_version="", dist_path=None,
                manifest_path=str(manifest_path), manifest=None, folder=str(folder))
    try:
        manifest = load_manifest(manifest_path.read_bytes(), str(manifest_path))
    except OSError as exc:
        return PluginRecord(**base, errors=(f"{manifest_path}: cannot read: {exc.strerror}",))
    except ManifestError as exc:
        return PluginRecord(**base, errors=(str(exc),))
    errors: list[str] = []
    entry_point = ""
    if not manifest.main_file or not manifest.main_class:
        missing = " and ".join(f for f in ("main_file", "main_class") if not getattr(manifest, f))
        errors.append(f"{manifest_path}: a folder plugin needs {missing} (e.g. main_file: plugin.py, "
                      "main_class: MyPlugin)")
    else:
        if not (folder / manifest.main_file).is_file():
            errors.append(f"{manifest_path}: main_file: {manifest.main_file!r} is not a file in {folder}")
        entry_point = f"{PACKAGE}.{manifest.name}.{manifest.main_file[:-3]}:{manifest.main_class}"
    return PluginRecord(**{**base, "name": manifest.name, "entry_point": entry_point,
                           "dist_version": manifest.version, "manifest": manifest}, errors=tuple(errors))


def scan_folders(dirs: Iterable[str]) -> tuple[list[PluginRecord], list[str]]:
    """The folder plugins under `dirs`, and the paths whose changes the discovery cache must notice."""
    dirs = list(dirs)
    folders = candidate_folders(dirs)
    watched = [*dirs, *(str(f) for f in folders)]
    return [read_folder(f) for f in folders], watched


def folder_files(folder: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """(absolute path, path relative to the folder) of every file of a folder plugin, caches and VCS left out."""
    top = os.fspath(folder)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(dirpath, name)
            yield full, os.path.relpath(full, top).replace(os.sep, "/")


class FolderDistribution(md.Distribution):
    """A folder plugin seen as a distribution, so the code scan and the sandbox's closure read it like one.

    Its metadata is made from the manifest (name, version, the distributions it requires); its file list is
    the folder's files. It has no RECORD hashes: file integrity does not apply to a folder.
    """

    def __init__(self, record: PluginRecord) -> None:
        assert record.folder is not None
        self._record = record
        self._folder = Path(record.folder)

    @property
    def record(self) -> PluginRecord:
        """The folder plugin this distribution stands for."""
        return self._record

    def read_text(self, filename: str) -> str | None:
        m = self._record.manifest
        if filename == "METADATA":
            lines = ["Metadata-Version: 2.1", f"Name: {self._record.name}",
                     f"Version: {m.version if m else '0'}"]
            lines += [f"Requires-Dist: {d}" for d in (m.dependencies if m else [])]
            return "\n".join(lines) + "\n"
        if filename == "RECORD":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for _, rel in folder_files(self._folder):
                writer.writerow([rel, "", ""])
            return out.getvalue()
        if filename == "top_level.txt":
            names = {p.name[:-3] if p.suffix == ".py" else p.name for p in self._folder.iterdir()
                     if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name not in _SKIP_DIRS}
            return "\n".join(sorted(names)) + "\n"
        return None

    def locate_file(self, path: str | os.PathLike[str]) -> Path:
        return self._folder / path


def site_files(record: PluginRecord) -> list[tuple[str, str]]:
    """(host file, path inside a runtime site) for a folder plugin: its files under `erp_folder_plugins/<name>/`."""
    assert record.folder is not None
    prefix = f"{PACKAGE}/{record.name}/"
    return [(src, prefix + rel) for src, rel in folder_files(record.folder)]


def prepare_import(record: PluginRecord) -> None:
    """Make `erp_folder_plugins.<name>` importable in this process as the folder (the in-process runner's step).

    The folder's own `__init__.py`, if any, is its package's code; otherwise it is a plain namespace for its
    files, as in the sandbox's runtime site.
    """
    import importlib.util

    assert record.folder is not None
    root = sys.modules.get(PACKAGE)
    if root is None:
        root = types.ModuleType(PACKAGE, "Folder plugins, one subpackage each (erp_plugins_core._folders).")
        root.__path__ = []
        sys.modules[PACKAGE] = root
    name = f"{PACKAGE}.{record.name}"
    existing: Any = sys.modules.get(name)
    if existing is not None and list(getattr(existing, "__path__", [])) == [record.folder]:
        return
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]  # the folder changed (or moved): import it afresh
    init = Path(record.folder, "__init__.py")
    if init.is_file():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[record.folder])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = types.ModuleType(name)
        module.__path__ = [record.folder]
        sys.modules[name] = module
    setattr(root, record.name, module)
