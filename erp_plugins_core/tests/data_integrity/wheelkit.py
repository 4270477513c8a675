"""Builds real wheels of tiny sample distributions and installs them with pip, for the integrity and scan tests.

The wheels are built by flit_core's PEP 517 backend through `python -m build --no-isolation` (flit_core is fetched
once with `pip download` and put on PYTHONPATH): about 0.4 s a wheel instead of 2-3 s for an isolated build.
Installation is `pip install --no-deps --target SITE`, exactly how the host installs a plugin's site directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import Distribution, distributions
from pathlib import Path


def _run(argv: list[str], **kwargs: object) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


class WheelKit:
    """Writes sample projects under `root`, builds their wheels and installs them into site directories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backend = root / "backend"
        self.wheels = root / "wheels"
        self.wheels.mkdir(parents=True, exist_ok=True)
        self._pythonpath: str | None = None

    def _backend_path(self) -> str:
        if self._pythonpath is None:
            try:
                import flit_core  # noqa: F401

                self._pythonpath = ""
            except ImportError:
                _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(self.backend),
                      "flit_core>=3.4"])
                wheel = next(self.backend.glob("flit_core-*.whl"))
                self._pythonpath = str(wheel)
        return self._pythonpath

    def build(self, name: str, version: str, files: dict[str, str], requires: list[str] | None = None,
              tag: str = "", scripts: dict[str, str] | None = None) -> Path:
        """Build the wheel of project `name` `version` whose package files (paths relative to the project's `src`)
        are `files`, with console `scripts` (name: "module:function"); `tag` tells apart two builds of the same
        name and version. Returns the wheel's path."""
        project = self.root / "projects" / f"{name}-{version}{tag}"
        deps = ", ".join(f'"{r}"' for r in (requires or []))
        (project / "src").mkdir(parents=True, exist_ok=True)
        (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
            [build-system]
            requires = ["flit_core>=3.4"]
            build-backend = "flit_core.buildapi"

            [project]
            name = "{name}"
            version = "{version}"
            description = "sample distribution for the integrity tests"
            dependencies = [{deps}]
            """) + ("[project.scripts]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in scripts.items()) if scripts else ""))
        for rel, text in files.items():
            target = project / "src" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        out = self.root / "out" / f"{name}-{version}{tag}"
        env = dict(os.environ)
        backend = self._backend_path()
        if backend:
            env["PYTHONPATH"] = backend + os.pathsep + env.get("PYTHONPATH", "")
        _run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--wheel",
              "--outdir", str(out), str(project)], env=env)
        return next(out.glob("*.whl"))

    def install(self, site: Path, *wheels: Path) -> Path:
        """Install `wheels` into the folder `site` with pip (no dependencies), as the host does; returns `site`."""
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-input", "--disable-pip-version-check",
              "--target", str(site), *map(str, wheels)])
        return site


def installed(site: Path, name: str) -> Distribution:
    """The distribution `name` installed in `site` (and only there)."""
    found = [d for d in distributions(path=[str(site)]) if d.metadata["Name"] == name]
    assert len(found) == 1, f"{name} installed {len(found)} times in {site}"
    return found[0]
