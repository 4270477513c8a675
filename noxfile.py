"""Development sessions: `nox -l` lists them. Each session builds its own virtual environment."""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
DISTRIBUTIONS = ["erp_plugins_core", "erp_plugin_openai", "erp_plugin_ollama", "erp_plugin_google"]
PLUGINS = DISTRIBUTIONS[1:]
WHEELS = ROOT / "dist"

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Every test against editable installs of the four distributions."""
    session.install("-r", "requirements-dev.txt", *(arg for d in DISTRIBUTIONS for arg in ("-e", f"./{d}")))
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole workspace."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def wheels(session: nox.Session) -> None:
    """Build the four wheels into dist/."""
    session.install("build")
    WHEELS.mkdir(exist_ok=True)
    for dist in DISTRIBUTIONS:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(WHEELS), f"./{dist}")


@nox.session(name="e2e-wheels")
def e2e_wheels(session: nox.Session) -> None:
    """Build the four wheels, install them (no source tree) and run the end-to-end tests in that environment."""
    session.install("build")
    out = Path(session.create_tmp()) / "wheels"
    for dist in DISTRIBUTIONS:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(out), f"./{dist}")
    session.install(*sorted(str(p) for p in out.glob("*.whl")))
    session.install("-r", "requirements-dev.txt")  # the e2e fixtures build wheels without isolation
    session.run("python", "-m", "pytest", "tests", "-m", "e2e", *session.posargs)


@nox.session(name="plugin")
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One first-party plugin's own tests with only the core and that plugin installed."""
    session.install("pytest", "pytest-asyncio", "pytest-timeout", "./erp_plugins_core", f"./{plugin}")
    session.run("python", "-m", "pytest", f"{plugin}/tests", "-p", "no:cacheprovider", *session.posargs)
