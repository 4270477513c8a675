"""PluginRecord: one discovered plugin (a distribution's entry point or a plugins folder), its manifest and errors."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

from ._manifest import Manifest

_FIELDS = ("name", "entry_point", "distribution", "dist_version", "dist_path", "manifest_path", "manifest", "errors",
           "folder")


class PluginRecord:
    """One plugin as installed: where it comes from, its manifest (if readable) and what is wrong with it.

    Immutable, compared and shown like a frozen dataclass. A record read from the discovery cache holds its
    manifest as the cached data and builds the `Manifest` on first access, so a cache hit costs little for
    plugins the process never looks at.
    """

    __slots__ = ("name", "entry_point", "distribution", "dist_version", "dist_path", "manifest_path", "errors",
                 "folder", "_manifest", "_manifest_data")
    name: str
    entry_point: str
    distribution: str
    dist_version: str
    dist_path: str | None  # the .dist-info folder, for RECORD checks; None when unknown
    manifest_path: str | None
    errors: tuple[str, ...]
    folder: str | None  # a folder plugin's folder (`--plugins-dir`); None for a distribution's plugin
    _manifest: Manifest | None
    _manifest_data: dict[str, Any] | None  # a validated manifest's model_dump, built into `_manifest` lazily

    def __init__(self, name: str, entry_point: str, distribution: str, dist_version: str, dist_path: str | None,
                 manifest_path: str | None, manifest: Manifest | None, errors: tuple[str, ...] = (),
                 folder: str | None = None) -> None:
        init = object.__setattr__
        init(self, "name", name)
        init(self, "entry_point", entry_point)
        init(self, "distribution", distribution)
        init(self, "dist_version", dist_version)
        init(self, "dist_path", dist_path)
        init(self, "manifest_path", manifest_path)
        init(self, "errors", errors)
        init(self, "folder", folder)
        init(self, "_manifest", manifest)
        init(self, "_manifest_data", None)

    @property
    def manifest(self) -> Manifest | None:
        """The validated manifest, or None when it could not be read."""
        m = self._manifest
        if m is None and self._manifest_data is not None:
            m = Manifest.from_validated(self._manifest_data)
            object.__setattr__(self, "_manifest", m)
            object.__setattr__(self, "_manifest_data", None)
        return m

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"PluginRecord({', '.join(f'{f}={getattr(self, f)!r}' for f in _FIELDS)})"

    def __getstate__(self) -> tuple[Any, ...]:  # copy and pickle, despite __setattr__ refusing
        return tuple(getattr(self, slot) for slot in PluginRecord.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for slot, value in zip(PluginRecord.__slots__, state, strict=True):
            object.__setattr__(self, slot, value)

    @property
    def module(self) -> str:
        """The module the entry point names."""
        return self.entry_point.partition(":")[0].strip()

    @property
    def attr(self) -> str:
        """The class name the entry point names."""
        return self.entry_point.partition(":")[2].strip()

    def with_errors(self, *errors: str) -> PluginRecord:
        """A copy with more errors (the manifest is shared, built or not)."""
        copy = object.__new__(PluginRecord)
        for slot in PluginRecord.__slots__:
            object.__setattr__(copy, slot, getattr(self, slot))
        object.__setattr__(copy, "errors", self.errors + errors)
        return copy

    @property
    def source(self) -> str:
        """Where the plugin comes from: `distribution` (an entry point) or `folder` (a plugins folder)."""
        return "folder" if self.folder is not None else "distribution"

    def with_network(self, allowed: bool) -> PluginRecord:
        """A copy whose manifest's `resources.network_access` is `allowed` (a tenant's grant of network.external)."""
        m = self.manifest
        if m is None or m.resources.network_access == allowed:
            return self
        copy = self.with_errors()
        resources = m.resources.model_copy(update={"network_access": allowed})
        object.__setattr__(copy, "_manifest", m.model_copy(update={"resources": resources}))
        object.__setattr__(copy, "_manifest_data", None)
        return copy

    def distribution_object(self) -> md.Distribution | None:
        """The installed distribution, for file-level checks (None for a folder plugin: it has no RECORD)."""
        return md.PathDistribution(Path(self.dist_path)) if self.dist_path else None

    def code_distribution(self) -> md.Distribution | None:
        """What holds the plugin's code, as a distribution (a folder plugin's folder seen as one), for the code scan."""
        if self.folder is not None:
            from ._folders import FolderDistribution

            return FolderDistribution(self)
        return self.distribution_object()
