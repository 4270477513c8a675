"""Local plugin folders (`--plugins-dir`, `ERP_PLUGINS_PATH`, `PluginHost(plugins_dirs=...)`): the original design's
plugin.yaml with main_file and main_class, discovered without importing, run trusted or sandboxed, cached."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from erp_plugins_core import PluginHost
from erp_plugins_core._catalog import Catalog, deep_check
from erp_plugins_core._cli import cli
from erp_plugins_core._errors import ConfigError, ManifestError
from erp_plugins_core._folders import plugins_dirs
from erp_plugins_core._manifest import load_manifest

SECRET = "sk-seed-folder-secret-5150"

#: The original design's example manifest, as the seed wrote it.
SEED_MANIFEST = """\
name: openai_provider
version: "1.0.0"
description: "OpenAI GPT integration for AI-powered features"
author: "ERP Team"
plugin_type: ai_provider
api_version: "1.0"
main_file: plugin.py
main_class: OpenAIProvider
dependencies:
  - "openai>=1.0.0"
permissions:
  - ai.generate
  - network.external
config_schema:
  type: object
  properties:
    api_key:
      type: string
      required: true
      sensitive: true
    model:
      type: string
      enum: ["gpt-4", "gpt-3.5-turbo"]
      default: "gpt-4"
hooks:
  - name: ai_request
    method: generate_response
    description: "Generate AI response"
health_check:
  interval: 60
  timeout: 10
  endpoint: "/health"
resources:
  memory_limit: "512MB"
  cpu_limit: "0.5"
  timeout: "20"
security:
  sandbox: true
  network_isolation: false
  file_permissions: none
"""

#: A small main_file: answers from its config, with a helper module beside it (relative import).
SEED_CODE = """\
from erp_plugins_core import AIProviderPlugin

from .helpers import shout


class OpenAIProvider(AIProviderPlugin):
    async def initialize(self, config, context):
        await super().initialize(config, context)
        self.model = config["model"]
        return True

    async def generate_response(self, prompt, context):
        return f"{self.model}:{shout(prompt)}"

    async def generate_streaming_response(self, prompt, context):
        yield prompt

    async def generate_embeddings(self, texts):
        return [[0.0] for _ in texts]

    async def validate_model_config(self, config):
        return True

    async def health_check(self):
        return {"status": "healthy"}
"""


def write_plugin(top: Path, name: str, manifest: str, files: dict[str, str]) -> Path:
    folder = top / name
    folder.mkdir(parents=True)
    (folder / "plugin.yaml").write_text(manifest)
    for rel, text in files.items():
        (folder / rel).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch, secret_key):
    """A fresh discovery cache, and no folders from the environment."""
    monkeypatch.setenv("ERP_PLUGINS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ERP_PLUGINS_PATH", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def view_without_openai_dist(tmp_path_factory) -> Path:
    """site-packages seen through symlinks (folders) and copies (files), without the erp-plugin-openai
    distribution, whose plugin name the seed's manifest uses (a folder and a distribution of one name are both
    errors, tested separately)."""
    import sysconfig

    real = Path(sysconfig.get_paths()["purelib"])
    view = tmp_path_factory.mktemp("view") / "site-packages"
    view.mkdir()
    for entry in real.iterdir():
        if "erp_plugin_openai" in entry.name:
            continue
        if entry.is_dir():
            (view / entry.name).symlink_to(entry)
        else:  # a file is copied: the sandbox's runtime site hard-links files, and a link to a symlink dangles there
            shutil.copy2(entry, view / entry.name)
    return view


@pytest.fixture
def seed(isolated, monkeypatch, view_without_openai_dist):
    """The seed's openai_provider as a folder plugin, on a sys.path where no distribution claims that name."""
    import sysconfig

    real = sysconfig.get_paths()["purelib"]
    monkeypatch.setattr(sys, "path", [str(view_without_openai_dist) if p == real else p for p in sys.path
                                      if "erp_plugin_openai" not in p])
    top = isolated / "plugins"
    write_plugin(top, "openai_provider", SEED_MANIFEST,
                 {"plugin.py": SEED_CODE, "helpers.py": "def shout(text):\n    return text.upper()\n"})
    return top


def test_the_seed_manifest_loads_with_its_fields() -> None:
    m = load_manifest(SEED_MANIFEST, "plugin.yaml")
    assert (m.main_file, m.main_class, m.health_check.endpoint) == ("plugin.py", "OpenAIProvider", "/health")
    assert m.resources.cpu_limit == 0.5 and m.resources.timeout == 20.0
    assert m.permissions == ["ai.generate", "network.external"]


@pytest.mark.parametrize(("change", "expected"), [
    ('cpu_limit: "0.5"', 'cpu_limit: "lots"'),
    ("main_file: plugin.py", "main_file: ../evil.py"),
    ("main_class: OpenAIProvider", "main_class: 'Open AI'"),
])
def test_bad_seed_values_are_refused(change, expected) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(SEED_MANIFEST.replace(change, expected), "plugin.yaml")
    field = expected.split(":")[0].strip()
    assert field in str(info.value)


def test_plugins_dirs_come_from_arguments_then_the_environment(tmp_path, monkeypatch) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    monkeypatch.setenv("ERP_PLUGINS_PATH", os.pathsep.join([str(b), "", str(c), str(a)]))
    assert plugins_dirs([a]) == [str(a), str(b), str(c)]
    monkeypatch.setenv("ERP_PLUGINS_PATH", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"ERP_PLUGINS_PATH '.*missing' is not an existing folder"):
        plugins_dirs()
    monkeypatch.delenv("ERP_PLUGINS_PATH")
    with pytest.raises(ConfigError, match="--plugins-dir 'https://example.com/plugins' is a URL"):
        plugins_dirs(["https://example.com/plugins"])


def test_the_seed_folder_is_listed_valid_with_source_folder_and_nothing_imported(seed) -> None:
    catalog = Catalog.load(plugins_dirs=[seed])
    rec = catalog.get("openai_provider")
    assert rec is not None and rec.errors == (), rec.errors
    assert rec.source == "folder" and rec.folder == str(seed / "openai_provider")
    assert rec.entry_point == "erp_folder_plugins.openai_provider.plugin:OpenAIProvider"
    assert not any(m.startswith("erp_folder_plugins") for m in sys.modules)
    report = deep_check(rec)
    assert report.valid, report.errors
    assert any("file integrity does not apply to a folder plugin" in w for w in report.warnings)


def test_cli_lists_folder_plugins_from_the_option_and_the_environment(seed, monkeypatch, tmp_path) -> None:
    other = tmp_path / "more"
    write_plugin(other, "tiny", 'name: tiny\nversion: "0.1"\nplugin_type: workflow\napi_version: "1.0"\n'
                 "main_file: main.py\nmain_class: Tiny\n", {"main.py": "raise SystemExit('never imported')\n"})
    monkeypatch.setenv("ERP_PLUGINS_PATH", str(other))
    runner = CliRunner()
    out = runner.invoke(cli, ["--state", str(tmp_path / "s.db"), "--plugins-dir", str(seed), "list", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["openai_provider"]["source"] == "folder" and rows["openai_provider"]["valid"]
    assert rows["tiny"]["source"] == "folder" and rows["tiny"]["valid"]
    assert all(r["source"] == "distribution" for n, r in rows.items() if n not in ("openai_provider", "tiny"))
    bad = runner.invoke(cli, ["--plugins-dir", str(tmp_path / "nope"), "list"])
    assert bad.exit_code == 2 and "is not an existing folder" in bad.output and "Traceback" not in bad.output


def test_a_folder_and_a_distribution_of_one_name_are_both_errors(isolated) -> None:
    """In this environment erp-plugin-openai is installed: the seed's folder claims its name."""
    top = isolated / "plugins"
    write_plugin(top, "openai_provider", SEED_MANIFEST, {"plugin.py": SEED_CODE})
    catalog = Catalog.load(plugins_dirs=[top])
    both = [r for r in catalog.records if r.name == "openai_provider"]
    assert {r.source for r in both} == {"folder", "distribution"}
    for rec in both:
        assert any("claimed by erp-plugin-openai and folder" in e for e in rec.errors), rec.errors


@pytest.mark.parametrize(("manifest_tail", "files", "expected"), [
    ("main_class: P\n", {}, "a folder plugin needs main_file"),
    ("main_file: p.py\n", {"p.py": ""}, "a folder plugin needs main_class"),
    ("main_file: p.py\nmain_class: P\n", {}, "main_file: 'p.py' is not a file in"),
])
def test_folder_problems_are_named(isolated, manifest_tail, files, expected) -> None:
    top = isolated / "plugins"
    base = 'name: fp\nversion: "0.1"\nplugin_type: workflow\napi_version: "1.0"\n'
    write_plugin(top, "fp", base + manifest_tail, files)
    rec = Catalog.load(plugins_dirs=[top]).get("fp")
    assert any(expected in e for e in rec.errors), rec.errors


def test_a_distribution_whose_main_file_or_class_disagrees_with_its_entry_point(site, manifest_text) -> None:
    code = "from erp_plugins_core import PluginInterface\nclass Plugin(PluginInterface):\n    pass\n"
    site.install("erp-agree", plugins={"agree": (manifest_text("agree", extra="main_file: plugin.py\n"
                                                                "main_class: Plugin\n"), code)})
    site.install("erp-differ", plugins={"differ": (manifest_text("differ", extra="main_file: main.py\n"
                                                                  "main_class: Other\n"), code)})
    catalog = Catalog.load(use_cache=False)
    assert catalog.get("agree").errors == ()
    errors = " ".join(catalog.get("differ").errors)
    assert "main_class: 'Other' differs from the entry point's class 'Plugin'" in errors
    assert "main_file: 'main.py' differs from the entry point's module erp_differ.differ.plugin (plugin.py)" in errors


def test_the_cache_notices_folder_changes(isolated, monkeypatch) -> None:
    import erp_plugins_core._discovery as discovery

    monkeypatch.setattr(discovery, "_RACY_SECONDS", 0.0)  # the racy window itself: below
    top = isolated / "plugins"
    base = 'name: {0}\nversion: "{1}"\nplugin_type: workflow\napi_version: "1.0"\nmain_file: m.py\nmain_class: C\n'
    write_plugin(top, "one", base.format("one", "0.1"), {"m.py": ""})
    assert Catalog.load(plugins_dirs=[top]).get("one").dist_version == "0.1"
    assert Catalog.load(plugins_dirs=[top]).discovery.from_cache
    time.sleep(0.01)
    (top / "one" / "plugin.yaml").write_text(base.format("one", "0.2"))  # edited manifest
    found = Catalog.load(plugins_dirs=[top])
    assert not found.discovery.from_cache and found.get("one").dist_version == "0.2"
    write_plugin(top, "two", base.format("two", "0.1"), {"m.py": ""})  # a new plugin folder
    assert Catalog.load(plugins_dirs=[top]).get("two") is not None
    (top / "two" / "m.py").unlink()  # its main_file removed
    assert any("is not a file" in e for e in Catalog.load(plugins_dirs=[top]).get("two").errors)
    # another set of folders is another cache
    assert Catalog.load(plugins_dirs=[]).get("one") is None


def test_the_racy_window_holds_for_folders(isolated) -> None:
    top = isolated / "plugins"
    write_plugin(top, "one", 'name: one\nversion: "0.1"\nplugin_type: workflow\napi_version: "1.0"\n'
                 "main_file: m.py\nmain_class: C\n", {"m.py": ""})
    Catalog.load(plugins_dirs=[top])
    assert not Catalog.load(plugins_dirs=[top]).discovery.from_cache  # written within 2 s of the folder's change


async def test_a_trusted_folder_plugin_runs_in_process(seed, tmp_path) -> None:
    text = (seed / "openai_provider" / "plugin.yaml").read_text().replace("sandbox: true", "sandbox: false")
    (seed / "openai_provider" / "plugin.yaml").write_text(text)
    async with PluginHost(tmp_path / "s.db", health_loop=False, plugins_dirs=[seed]) as host:
        await host.enable("openai_provider", tenant="acme", config={"api_key": SECRET}, trust=True)
        assert not host._instances[("acme", "openai_provider")].runner.sandboxed
        assert await host.first("ai_request", tenant="acme", prompt="hi") == "gpt-4:HI"
        [report] = await host.health("acme")
        assert report.healthy, report.error
    assert "erp_folder_plugins.openai_provider.helpers" in sys.modules


def _need_sandbox() -> None:
    from erp_plugins_core._sandbox import sandbox_available

    reason = sandbox_available()
    if reason is not None:
        pytest.fail(f"the sandbox cannot start here, so sandboxed folder plugins are untested: {reason}")


async def test_the_seed_plugin_runs_sandboxed(seed, tmp_path) -> None:
    _need_sandbox()
    async with PluginHost(tmp_path / "s.db", health_loop=False, plugins_dirs=[seed]) as host:
        await host.enable("openai_provider", tenant="acme", config={"api_key": SECRET, "model": "gpt-3.5-turbo"})
        assert host._instances[("acme", "openai_provider")].runner.sandboxed
        [r] = await host.call("ai_request", tenant="acme", prompt="hello")
        assert (r.success, r.result) == (True, "gpt-3.5-turbo:HELLO"), r.error
        [report] = await host.health("acme")
        assert report.healthy, report.error
        assert SECRET not in json.dumps(host.config_of("openai_provider", tenant="acme"))


NET_PROBE = """\
import socket
from erp_plugins_core import PluginInterface


class Probe(PluginInterface):
    async def probe(self, prompt, context):
        try:
            with socket.create_connection(("127.0.0.1", int(prompt)), timeout=3) as s:
                return s.recv(16).decode()
        except OSError as exc:
            return f"refused: {type(exc).__name__}"
"""


@pytest.fixture
def listener():
    """A TCP server on the host's loopback that greets each connection."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hello-net")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


async def test_network_external_gates_the_network_per_tenant(isolated, tmp_path, listener) -> None:
    _need_sandbox()
    top = isolated / "plugins"
    write_plugin(top, "net_probe", 'name: net_probe\nversion: "0.1"\nplugin_type: integration\napi_version: "1.0"\n'
                 "main_file: probe.py\nmain_class: Probe\npermissions: [ai.generate, network.external]\n"
                 "hooks: [{name: ai_request, method: probe}]\nresources: {timeout: 20}\n", {"probe.py": NET_PROBE})
    async with PluginHost(tmp_path / "s.db", health_loop=False, plugins_dirs=[top]) as host:
        await host.enable("net_probe", tenant="granted")
        await host.enable("net_probe", tenant="denied", grant=["ai.generate"])
        [ok] = await host.call("ai_request", tenant="granted", prompt=str(listener))
        [no] = await host.call("ai_request", tenant="denied", prompt=str(listener))
    assert (ok.success, ok.result) == (True, "hello-net"), ok.error
    assert no.success and no.result.startswith("refused: "), no.result


def test_a_trusted_folder_plugin_with_scan_findings_needs_acceptance_of_its_exact_files(isolated, tmp_path) -> None:
    top = isolated / "plugins"
    folder = write_plugin(top, "risky", 'name: risky\nversion: "0.1"\nplugin_type: workflow\napi_version: "1.0"\n'
                          "main_file: main.py\nmain_class: Risky\nsecurity: {sandbox: false}\n",
                          {"main.py": "import subprocess\nfrom erp_plugins_core import PluginInterface\n\n\n"
                                      "class Risky(PluginInterface):\n    pass\n"})
    runner = CliRunner()
    base = ["--state", str(tmp_path / "s.db"), "--plugins-dir", str(top)]
    refused = runner.invoke(cli, [*base, "enable", "risky", "--tenant", "acme", "--trust"])
    assert refused.exit_code == 1 and "code-scan finding" in refused.output and "main.py" in refused.output
    checked = runner.invoke(cli, [*base, "check", "risky", "--json"])
    [report] = json.loads(checked.stdout)
    assert any(f["file"] == "main.py" for f in report["findings"])
    assert runner.invoke(cli, [*base, "check", "--accept-findings", "risky"]).exit_code in (0, 1)
    enabled = runner.invoke(cli, [*base, "enable", "risky", "--tenant", "acme", "--trust"])
    assert enabled.exit_code == 0, enabled.output
    # the acceptance is for these files: an edit needs a new review
    (folder / "main.py").write_text((folder / "main.py").read_text() + "\nimport socket\n")
    again = runner.invoke(cli, [*base, "enable", "risky", "--tenant", "other", "--trust"])
    assert again.exit_code == 1 and "code-scan finding" in again.output
