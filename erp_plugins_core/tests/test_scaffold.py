"""`erp-plugins new`: names, refusal to overwrite, valid files for every plugin type, and generated tests that pass
(and fail when the plugin is broken)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from scaffoldkit import install_project

from erp_plugins_core import ConfigError, PluginError, PluginType, load_manifest
from erp_plugins_core._cli import cli
from erp_plugins_core._hookspecs import HOOKS
from erp_plugins_core._scaffold import KIND_BY_TYPE, Names, render, scaffold

ALL_TYPES = [t.value for t in PluginType]


@pytest.mark.parametrize("name", ["", "a", "A", "Invoice", "1abc", "_abc", "a-b", "a b", "a.b", "x" * 64, "ä_b"])
def test_invalid_names_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="invalid plugin name .* lowercase letters, digits and underscores"):
        scaffold(name, "business_logic", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_invalid_type_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="invalid plugin type 'ai'; allowed: ai_provider, integration"):
        scaffold("invoice_ocr", "ai", tmp_path)


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "invoice_ocr").mkdir()
    (tmp_path / "invoice_ocr" / "mine.txt").write_text("keep")
    (tmp_path / "a_file").write_text("keep")
    for name in ("invoice_ocr", "a_file"):
        with pytest.raises(PluginError, match=f"{name} already exists; choose another name"):
            scaffold(name, "business_logic", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "invoice_ocr"]  # no temporary folder left
    assert (tmp_path / "invoice_ocr" / "mine.txt").read_text() == "keep"


def test_names():
    assert Names.of("invoice_ocr") == Names("invoice_ocr", "erp-plugin-invoice-ocr", "erp_plugin_invoice_ocr",
                                            "InvoiceOcrPlugin")
    assert Names.of("erp_plugin_x2") == Names("erp_plugin_x2", "erp-plugin-x2", "erp_plugin_x2", "ErpPluginX2Plugin")
    assert Names.of("a__1").class_name == "A1Plugin"


def test_creates_missing_directory(tmp_path):
    path = scaffold("invoice_ocr", "workflow", tmp_path / "new" / "dir")
    assert path == tmp_path / "new" / "dir" / "invoice_ocr"
    assert (path / "src" / "erp_plugin_invoice_ocr" / "plugin.yaml").is_file()


@pytest.mark.parametrize("plugin_type", ALL_TYPES)
def test_every_type_is_consistent(plugin_type):
    files = render("invoice_ocr", plugin_type)
    assert set(files) == {
        "pyproject.toml", "README.md", "tests/test_plugin.py",
        "src/erp_plugin_invoice_ocr/__init__.py", "src/erp_plugin_invoice_ocr/plugin.py",
        "src/erp_plugin_invoice_ocr/plugin.yaml",
    }
    project = tomllib.loads(files["pyproject.toml"])
    manifest = load_manifest(files["src/erp_plugin_invoice_ocr/plugin.yaml"], "plugin.yaml")
    assert manifest.name == "invoice_ocr" and manifest.plugin_type.value == plugin_type
    assert manifest.version == project["project"]["version"]
    assert manifest.security.sandbox is True
    assert project["project"]["name"] == "erp-plugin-invoice-ocr"
    assert project["project"]["entry-points"]["erp_plugins"] == {
        "invoice_ocr": "erp_plugin_invoice_ocr.plugin:InvoiceOcrPlugin"
    }
    assert project["tool"]["setuptools"]["package-data"] == {"erp_plugin_invoice_ocr": ["plugin.yaml"]}
    assert project["tool"]["pytest"]["ini_options"]["asyncio_mode"] == "auto"
    assert any(r.startswith("pytest-asyncio") for r in project["project"]["optional-dependencies"]["test"])
    assert any(r.startswith("erp-plugins-core>=") for r in project["project"]["dependencies"])
    assert manifest.hooks, "every scaffold implements at least one hook"
    for hook in manifest.hooks:
        perm = HOOKS[hook.name].permission
        assert perm is None or perm in manifest.permissions
        assert f"def {hook.method}(" in files["src/erp_plugin_invoice_ocr/plugin.py"]
    assert "class InvoiceOcrPlugin(" in files["src/erp_plugin_invoice_ocr/plugin.py"]
    # the one rule of worker templates, where the author starts writing
    assert "Module-level code runs once per plugin, before any tenant exists" in \
        files["src/erp_plugin_invoice_ocr/plugin.py"]
    for rel, text in files.items():
        if rel.endswith(".py"):
            compile(text, rel, "exec")
    assert "erp-plugins check invoice_ocr" in files["README.md"]


def test_cli_new(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["new", "invoice_ocr", "--type", "ai_provider", "--dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert f"created {tmp_path / 'invoice_ocr'}" in ok.output
    # the hint installs the test extra (pytest-asyncio), without which the generated tests cannot run
    assert f"next: pip install -e '{tmp_path / 'invoice_ocr'}[test]' && " in ok.output
    manifest = (tmp_path / "invoice_ocr" / "src" / "erp_plugin_invoice_ocr" / "plugin.yaml").read_text()
    assert "plugin_type: ai_provider" in manifest
    again = runner.invoke(cli, ["new", "invoice_ocr", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output
    bad = runner.invoke(cli, ["new", "Invoice-OCR", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "invalid plugin name 'Invoice-OCR'" in bad.output and "Traceback" not in bad.output


def _run_generated_tests(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "ERP_PLUGINS_CACHE": "0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--erp-unsafe-no-sandbox"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("plugin_type", sorted(set(KIND_BY_TYPE.values())))
def test_generated_tests_pass_and_can_fail(tmp_path, plugin_type):
    plugin_type = next(t for t, k in KIND_BY_TYPE.items() if k == plugin_type)
    name = f"gen_{plugin_type}"
    project = scaffold(name, plugin_type, tmp_path)
    site = tmp_path / "site"
    install_project(project, site)
    done = _run_generated_tests(project, site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout

    # The same tests against a broken plugin (its first hook raises), installed afresh: they fail.
    package = project / "src" / f"erp_plugin_{name}"
    text = (package / "plugin.py").read_text()
    method = load_manifest((package / "plugin.yaml").read_text(), "m").hooks[0].method
    head, sep, rest = text.partition(f"    async def {method}(")
    body_start = rest.index('"""', rest.index('"""') + 3) + 3
    broken = head + sep + rest[:body_start] + "\n        raise RuntimeError('broken on purpose')" + rest[body_start:]
    (package / "plugin.py").write_text(broken)
    install_project(project, tmp_path / "site2")
    failed = _run_generated_tests(project, tmp_path / "site2")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "broken on purpose" in failed.stdout
    assert " passed" in failed.stdout  # conformance still passes: it does not call hooks


def test_check_and_list_see_the_scaffold(tmp_path, monkeypatch):
    project = scaffold("seen_plugin", "notification", tmp_path)
    install_project(project, tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("ERP_PLUGINS_CACHE", "0")
    runner = CliRunner()
    checked = runner.invoke(cli, ["--state", str(tmp_path / "s.db"), "check", "seen_plugin", "--json"])
    assert checked.exit_code == 0, checked.output
    [report] = json.loads(checked.output)
    assert report["valid"] is True and report["errors"] == [] and report["findings"] == []
    listed = runner.invoke(cli, ["--state", str(tmp_path / "s.db"), "list", "--json"])
    [entry] = [p for p in json.loads(listed.output) if p["name"] == "seen_plugin"]
    assert entry["distribution"] == "erp-plugin-seen-plugin" and entry["valid"] is True
    assert entry["hooks"] == ["send_notification"] and entry["plugin_type"] == "notification"
    assert entry["permissions"] == ["notifications.send"]


def test_templates_are_package_resources():
    """Every template is found as a resource of the package (tests/test_e2e_scaffold.py proves the wheel has them)."""
    from importlib.resources import files

    root = files("erp_plugins_core") / "templates"
    for kind in set(KIND_BY_TYPE.values()):
        for tmpl in ("plugin.py.tmpl", "plugin.yaml.tmpl", "test_plugin.py.tmpl"):
            assert (root / kind / tmpl).is_file()
