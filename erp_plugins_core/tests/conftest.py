"""Fixtures for the core's unit tests: installed-layout sample plugins in a temporary site directory."""

from __future__ import annotations

import base64
import hashlib
import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

BASE_MANIFEST = """\
name: {name}
version: "{version}"
plugin_type: business_logic
api_version: "1.0"
"""


def _record_line(root: Path, path: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.relative_to(root).as_posix()},sha256={digest},{len(data)}"


class SiteDir:
    """A directory laid out as pip installs wheels (package + .dist-info with METADATA, entry points, RECORD)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def install(
        self,
        dist: str,
        version: str = "1.0.0",
        *,
        plugins: dict[str, tuple[str, str]] | None = None,
        requires: list[str] | None = None,
    ) -> Path:
        """Install distribution `dist`; `plugins` maps plugin name -> (plugin.yaml text, plugin.py source)."""
        pkg = dist.replace("-", "_")
        files: list[Path] = []
        eps = []
        for pname, (manifest, code) in (plugins or {}).items():
            pdir = self.root / pkg / pname
            pdir.mkdir(parents=True, exist_ok=True)
            for fname, text in (("__init__.py", ""), ("plugin.py", textwrap.dedent(code)), ("plugin.yaml", manifest)):
                (pdir / fname).write_text(text)
                files.append(pdir / fname)
            eps.append(f"{pname} = {pkg}.{pname}.plugin:Plugin")
        (self.root / pkg).mkdir(exist_ok=True)
        (self.root / pkg / "__init__.py").write_text("")
        files.append(self.root / pkg / "__init__.py")
        info = self.root / f"{pkg}-{version}.dist-info"
        info.mkdir()
        meta = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires or [])
        (info / "METADATA").write_text(meta)
        (info / "entry_points.txt").write_text("[erp_plugins]\n" + "\n".join(eps) + "\n")
        (info / "top_level.txt").write_text(pkg + "\n")
        lines = [_record_line(self.root, f) for f in files + [info / "METADATA", info / "entry_points.txt",
                                                              info / "top_level.txt"]]
        lines.append(f"{info.name}/RECORD,,")
        (info / "RECORD").write_text("\n".join(lines) + "\n")
        importlib.invalidate_caches()
        return info


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SiteDir]:
    """An empty site directory placed first on sys.path; discovery sees only it and what is installed."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("ERP_PLUGINS_CACHE_DIR", str(tmp_path / "cache"))
    before = set(sys.modules)
    yield SiteDir(root)
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        if getattr(mod, "__file__", "") and str(root) in (mod.__file__ or ""):
            del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh Fernet key for the test, so the user's key file is never touched."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("ERP_PLUGINS_SECRET_KEY", key)
    return key


@pytest.fixture
def manifest_text() -> Callable[..., str]:
    """Build plugin.yaml text: the required fields plus extra YAML."""

    def build(name: str, version: str = "1.0.0", extra: str = "") -> str:
        return BASE_MANIFEST.format(name=name, version=version) + textwrap.dedent(extra)

    return build
