"""plugin.yaml is a valid manifest that matches the distribution and the plugin class."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

import erp_plugin_ollama
from erp_plugin_ollama.plugin import CONFIG_KEYS, DEFAULTS, OllamaProvider
from erp_plugins_core._manifest import load_manifest

HERE = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((HERE / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def manifest():
    text = resources.files("erp_plugin_ollama").joinpath("plugin.yaml").read_bytes()
    return load_manifest(text, "erp_plugin_ollama/plugin.yaml")


def test_manifest_matches_distribution_and_entry_point(manifest) -> None:
    assert manifest.name == "local_llm_provider" == erp_plugin_ollama.PLUGIN_NAME
    assert manifest.version == PYPROJECT["project"]["version"] == erp_plugin_ollama.__version__
    assert manifest.plugin_type.value == "ai_provider" and manifest.api_version == "1.0"
    assert PYPROJECT["project"]["entry-points"]["erp_plugins"] == {
        "local_llm_provider": "erp_plugin_ollama.plugin:OllamaProvider"}
    assert set(manifest.permissions) == {"ai.generate", "ai.embeddings"}
    assert {h.name: h.method for h in manifest.hooks} == {
        "ai_request": "generate_response", "ai_stream": "generate_streaming_response",
        "ai_embedding": "generate_embeddings"}
    for hook in manifest.hooks:
        assert callable(getattr(OllamaProvider, hook.method))
    assert manifest.resources.network_access is True
    assert manifest.resources.timeout > DEFAULTS["timeout"]  # the SDK's timeout fires before the host's
    assert manifest.security.sandbox is True and manifest.security.network_isolation is False


def test_config_schema_keys_defaults(manifest) -> None:
    props = manifest.config_schema["properties"]
    assert set(props) == CONFIG_KEYS
    assert {k: p["default"] for k, p in props.items() if "default" in p} == DEFAULTS
    assert manifest.sensitive_keys == frozenset()
    assert manifest.schema["required"] == ["model"]


def test_config_schema_accepts_defaults_and_rejects_bad_values(manifest) -> None:
    validator = jsonschema.Draft202012Validator(manifest.schema)
    validator.validate({"model": "llama3.2", **DEFAULTS})
    validator.validate({"model": "m", "context_length": 8192, "embedding_model": "e", "keep_alive": "5m"})
    validator.validate({"model": "m", "keep_alive": -1})
    for bad in ({}, {"model": ""}, {"model": "m", "temperature": 2.5}, {"model": "m", "context_length": 0},
                {"model": "m", "keep_alive": True}, {"model": "m", "timeout": 0}, {"model": "m", "api_key": "x"}):
        assert list(validator.iter_errors(bad)), bad


def test_importing_the_package_does_not_import_the_sdk() -> None:
    code = "import sys, erp_plugin_ollama; print('ollama' in sys.modules, 'erp_plugin_ollama.plugin' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
