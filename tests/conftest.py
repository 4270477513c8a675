"""End-to-end fixtures: real wheels of the four distributions (and sample plugins) in a fresh virtual env."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ["erp_plugins_core", "erp_plugin_openai", "erp_plugin_ollama", "erp_plugin_google"]
SAMPLES = ROOT / "tests" / "samples" / "erp_samples"

sys.path.insert(0, str(ROOT / "tests"))  # the loopback fake servers: `from servers.ollama_fake import ...`


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of the four distributions and the sample plugins, built once per test session."""
    out = tmp_path_factory.mktemp("wheels")
    # build from clean copies: an in-tree build/ folder left by an earlier build could ship deleted modules
    copies = tmp_path_factory.mktemp("sources")
    ignore = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "tests")
    sources = []
    for src in [ROOT / d for d in DISTRIBUTIONS] + [SAMPLES]:
        shutil.copytree(src, copies / src.name, ignore=ignore)
        sources.append(str(copies / src.name))
    # no build isolation: the test environment has setuptools>=77 (requirements-dev.txt), and an isolated
    # build would install it afresh for each of the five wheels
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), *sources], check=True, timeout=600)
    return out


@dataclass
class Env:
    """A virtual environment with the wheels installed, and helpers to run things in it."""

    root: Path
    state: Path
    extra_env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def env(self, **more: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ERP_PLUGINS", "VIRTUAL_ENV"))}
        return {**base, **self.extra_env, "ERP_PLUGINS_STATE": str(self.state), **more}

    def cli(self, *args: str, code: int | None = 0, **env: str) -> subprocess.CompletedProcess[str]:
        """Run the installed `erp-plugins` script."""
        proc = subprocess.run([str(self.root / "bin" / "erp-plugins"), *args], capture_output=True, text=True,
                              env=self.env(**env), timeout=180)
        assert "Traceback" not in proc.stderr, proc.stderr
        if code is not None:
            assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def cli_json(self, *args: str, code: int | None = 0, **env: str) -> object:
        return json.loads(self.cli(*args, "--json", code=code, **env).stdout)

    def script(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run Python code in the environment (its last line of stdout is usually JSON)."""
        proc = subprocess.run([self.python, "-c", code], capture_output=True, text=True, env=self.env(**env),
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc


@pytest.fixture(scope="session")
def e2e_env(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A fresh virtual environment (no system site-packages) with every wheel installed."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    wheels = sorted(str(p) for p in wheelhouse.glob("*.whl"))
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *wheels], check=True, timeout=900)
    home = tmp_path_factory.mktemp("home")
    from cryptography.fernet import Fernet

    extra = {
        "ERP_PLUGINS_SECRET_KEY": Fernet.generate_key().decode(),
        "ERP_PLUGINS_CACHE_DIR": str(home / "cache"),
        "HOME": str(home),
    }
    yield Env(root, home / "state.db", extra)
