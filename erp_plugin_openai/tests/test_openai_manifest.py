"""plugin.yaml is a valid manifest that matches the distribution and the plugin class."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

import erp_plugin_openai
from erp_plugin_openai.plugin import CONFIG_KEYS, DEFAULTS, OpenAIProvider
from erp_plugins_core._manifest import load_manifest

HERE = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((HERE / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def manifest():
    text = resources.files("erp_plugin_openai").joinpath("plugin.yaml").read_bytes()
    return load_manifest(text, "erp_plugin_openai/plugin.yaml")


def test_manifest_matches_distribution_and_entry_point(manifest) -> None:
    assert manifest.name == "openai_provider" == erp_plugin_openai.PLUGIN_NAME
    assert manifest.version == PYPROJECT["project"]["version"] == erp_plugin_openai.__version__
    assert manifest.plugin_type.value == "ai_provider" and manifest.api_version == "1.0"
    assert PYPROJECT["project"]["entry-points"]["erp_plugins"] == {
        "openai_provider": "erp_plugin_openai.plugin:OpenAIProvider"}
    assert set(manifest.permissions) == {"ai.generate", "ai.embeddings"}
    assert {h.name: h.method for h in manifest.hooks} == {
        "ai_request": "generate_response", "ai_stream": "generate_streaming_response",
        "ai_embedding": "generate_embeddings"}
    for hook in manifest.hooks:
        assert callable(getattr(OpenAIProvider, hook.method))
    assert manifest.resources.network_access is True and manifest.resources.timeout == 60
    assert manifest.resources.memory_limit == "1GB"
    assert manifest.security.sandbox is True and manifest.security.network_isolation is False


def test_config_schema_keys_defaults_and_secrets(manifest) -> None:
    props = manifest.config_schema["properties"]
    assert set(props) == CONFIG_KEYS
    assert {k: p["default"] for k, p in props.items() if "default" in p} == DEFAULTS
    assert manifest.sensitive_keys == {"api_key"}
    assert manifest.schema["required"] == ["api_key"]


def test_config_schema_accepts_defaults_and_rejects_bad_values(manifest) -> None:
    validator = jsonschema.Draft202012Validator(manifest.schema)
    defaults = {k: p["default"] for k, p in manifest.config_schema["properties"].items() if "default" in p}
    validator.validate({"api_key": "sk-x", **defaults})
    validator.validate({"api_key": "sk-x", "max_tokens": 100, "base_url": "http://h/v1", "organization": "o"})
    for bad in ({}, {"api_key": ""}, {"api_key": "k", "temperature": 2.5}, {"api_key": "k", "max_tokens": 0},
                {"api_key": "k", "max_retries": -1}, {"api_key": "k", "timeout": 0}, {"api_key": "k", "x": 1}):
        assert list(validator.iter_errors(bad)), bad


def test_importing_the_package_does_not_import_the_sdk() -> None:
    code = "import sys, erp_plugin_openai; print('openai' in sys.modules, 'erp_plugin_openai.plugin' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
