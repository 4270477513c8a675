"""Helpers for tests and benchmarks of sandboxed plugins: the test corpus built into real wheels and installed
into a fresh site directory, plugin records for it, and the processes a worker leaves on the host."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from erp_plugins_core._discovery import PluginRecord
from erp_plugins_core._manifest import load_manifest

CORPUS = Path(__file__).parent / "hostile"


@contextlib.contextmanager
def reachable_dir(prefix: str) -> Iterator[Path]:
    """A fresh folder under /tmp that workers' unprivileged uids can traverse (pytest's tmp_path is mode 700),
    removed afterwards: for runtime sites and data roots."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build_site(work: Path, dists: list[str] | None = None) -> Path:
    """Build the corpus distributions `dists` (all `sbx_*` when None) as wheels and install them into
    `work/site` with `pip install --target`, as a plugin's own packages are installed."""
    wheels = work / "wheels"
    names = dists or sorted(p.name for p in CORPUS.iterdir() if (p / "pyproject.toml").exists())
    for name in names:
        shutil.copytree(CORPUS / name, work / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    *[str(work / n) for n in names]], check=True)
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
                    *[str(w) for w in wheels.glob("*.whl")]], check=True)
    return site


def record(site: Path, name: str, dist: str | None = None) -> PluginRecord:
    """The discovery record of corpus plugin `name` (of distribution `dist`, default the same name)."""
    path = site / name / "plugin.yaml"
    manifest = load_manifest(path.read_bytes(), str(path))
    dist = dist or name
    return PluginRecord(
        name=name, entry_point=f"{name}.plugin:Plugin", distribution=dist.replace("_", "-"), dist_version="0.1.0",
        dist_path=str(site / f"{dist}-0.1.0.dist-info"), manifest_path=str(path), manifest=manifest,
    )


def uid_of(pid: int | str) -> int | None:
    """The real uid of a live (not zombie) process, or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").strip().startswith(("Z", "X")):
        return None
    return int(fields["Uid"].split()[0]) if "Uid" in fields else None


def processes_of(uids: set[int]) -> dict[int, int]:
    """Live processes (pid -> uid) running as one of `uids`: what is left of those workers on the host."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            uid = uid_of(entry)
            if uid is not None and uid in uids:
                found[int(entry)] = uid
    return found
