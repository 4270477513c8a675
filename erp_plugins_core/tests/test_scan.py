"""Code scan of real installed wheels: bandit's findings plus the allow-list and builtin-call pass, with file:line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from erp_plugins_core._scan import Finding, allowed_imports, scan_distribution


def _load_wheelkit():
    spec = importlib.util.spec_from_file_location("_wheelkit", Path(__file__).parent / "data_integrity" / "wheelkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelkit = _load_wheelkit()

# Each line the scan must report carries `# expect: RULE[,RULE]`; the tests read the expected lines from the source.
RISKY_PY = '''"""Risky sample: every construct the scan must report."""

from __future__ import annotations

import ctypes  # expect: ERP001
import json
import subprocess  # expect: B404
from typing import TYPE_CHECKING

import packaging.version
import yaml  # expect: ERP001
from _thread import start_new_thread  # expect: ERP001

from erp_plugins_core import PluginInterface

from . import helpers

if TYPE_CHECKING:
    import socket


def run(code: str, path: str) -> object:
    value = eval(code)  # expect: B307
    exec(code)  # nosec  # expect: B102
    compiled = compile(code, "<sample>", "exec")  # expect: ERP002
    module = __import__("os")  # expect: ERP003
    with open(path) as handle:  # expect: ERP004
        handle.read()
    subprocess.run(["true"], check=False)  # expect: B603,B607
    return value, compiled, module, json, ctypes, packaging.version, yaml, start_new_thread, PluginInterface, helpers
'''
HELPERS_PY = '''"""Helpers of the risky sample."""

import importlib
import socket  # expect: ERP001


def load(name: str) -> object:
    return importlib.import_module(name)  # expect: ERP003


def connect() -> socket.socket:
    return socket.create_connection(("127.0.0.1", 9))
'''
CLEAN_PY = '''"""A well-behaved plugin: standard library, its declared requirement, the core, its own modules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from packaging.version import Version

from erp_plugins_core import PluginInterface

from .util import shout


class CleanPlugin(PluginInterface):
    def describe(self, text: str) -> str:
        logging.getLogger(__name__).info("describe")
        return json.dumps({"text": shout(text), "version": str(Version("1.0")), "home": str(Path.home())})
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scan")
    kit = wheelkit.WheelKit(root)
    risky = kit.build("erp-sample-risky", "1.0", {
        "erp_sample_risky/__init__.py": '"""Risky sample distribution."""\n',
        "erp_sample_risky/plugin.py": RISKY_PY,
        "erp_sample_risky/helpers.py": HELPERS_PY,
        "erp_sample_risky/broken.py": "def broken(:\n    pass\n",
        "erp_sample_risky/plugin.yaml": "name: sample_risky\n",
    }, requires=["packaging>=20", "erp-plugins-core"])
    clean = kit.build("erp-sample-clean", "1.0", {
        "erp_sample_clean/__init__.py": '"""Clean sample distribution."""\n',
        "erp_sample_clean/plugin.py": CLEAN_PY,
        "erp_sample_clean/util.py": "def shout(text: str) -> str:\n    return text.upper()\n",
    }, requires=["packaging", "erp-plugins-core>=0.1"])
    return kit.install(root / "site", risky, clean)


def expected(source: str, rel: str) -> set[tuple[str, int, str]]:
    found = set()
    for number, line in enumerate(source.splitlines(), start=1):
        if "# expect: " in line:
            for rule in line.split("# expect: ", 1)[1].split(","):
                found.add((rel, number, rule.strip()))
    return found


def test_risky_plugin_findings_have_file_line_and_rule(site: Path, capfd: pytest.CaptureFixture[str]) -> None:
    findings = scan_distribution(wheelkit.installed(site, "erp-sample-risky"))

    assert capfd.readouterr() == ("", "")  # bandit's logging and progress stay silent
    got = {(f.file, f.line, f.rule) for f in findings}
    want = (expected(RISKY_PY, "erp_sample_risky/plugin.py") | expected(HELPERS_PY, "erp_sample_risky/helpers.py")
            | {("erp_sample_risky/broken.py", 1, "ERP005")})
    assert got == want
    assert findings == sorted(findings, key=lambda f: (f.file, f.line, f.rule, f.message))


def test_messages_say_what_was_found(site: Path) -> None:
    findings = scan_distribution(wheelkit.installed(site, "erp-sample-risky"))

    def message(file: str, marker: str, rule: str) -> str:
        source = {"plugin.py": RISKY_PY, "helpers.py": HELPERS_PY}[file]
        line = next(n for n, text in enumerate(source.splitlines(), start=1) if marker in text)
        [found] = [f for f in findings if f.file == f"erp_sample_risky/{file}" and f.line == line and f.rule == rule]
        return found.message

    assert message("plugin.py", "import yaml", "ERP001") == (
        "import of 'yaml' outside the allow-list (not the standard library, not this plugin, and not a declared "
        "requirement)"
    )
    assert message("plugin.py", "_thread", "ERP001").endswith("(a private standard-library module)")
    assert "'socket'" in message("helpers.py", "import socket", "ERP001")
    assert "compile()" in message("plugin.py", "compile(", "ERP002")
    assert "__import__()" in message("plugin.py", "__import__(", "ERP003")
    assert "importlib.import_module()" in message("helpers.py", "import_module(", "ERP003")
    assert "open()" in message("plugin.py", "open(", "ERP004")
    eval_message = message("plugin.py", "eval(", "B307")
    assert "eval" in eval_message and "bandit" in eval_message and "severity MEDIUM" in eval_message
    [broken] = [f for f in findings if f.file == "erp_sample_risky/broken.py"]
    assert broken.message.startswith("cannot be parsed: ")
    ctypes_line = RISKY_PY.splitlines().index("import ctypes  # expect: ERP001") + 1
    [ctypes_finding] = [f for f in findings if f.line == ctypes_line and f.file.endswith("plugin.py")]
    assert str(ctypes_finding) == (
        f"erp_sample_risky/plugin.py:{ctypes_line}: ERP001 import of 'ctypes' outside the allow-list "
        "(a risky standard-library module)"
    )


def test_clean_plugin_has_no_findings(site: Path) -> None:
    assert scan_distribution(wheelkit.installed(site, "erp-sample-clean")) == []


def test_allow_list(site: Path) -> None:
    allowed = allowed_imports(wheelkit.installed(site, "erp-sample-risky"))

    assert {"json", "pathlib", "typing", "__future__", "erp_plugins_core", "erp_sample_risky", "packaging"} <= allowed
    assert not {"subprocess", "ctypes", "socket", "pickle", "_thread", "yaml"} & allowed


def test_finding_is_a_value() -> None:
    finding = Finding("pkg/mod.py", 3, "ERP004", "open() opens a file directly")
    assert finding == Finding("pkg/mod.py", 3, "ERP004", "open() opens a file directly")
    assert str(finding) == "pkg/mod.py:3: ERP004 open() opens a file directly"
