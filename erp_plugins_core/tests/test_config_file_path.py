"""Config keys marked `format: file-path`: host paths that the host reads for a sandboxed plugin at start."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from erp_plugins_core._config import file_path_keys, resolve, to_stored, validate_config
from erp_plugins_core._errors import ConfigError
from erp_plugins_core._manifest import load_manifest
from erp_plugins_core._secrets import SecretBox

MANIFEST = load_manifest("""
name: fp
version: "1"
plugin_type: integration
api_version: "1.0"
config_schema:
  type: object
  properties:
    key_file: {type: string, format: file-path, sensitive: true}
    ca_file: {type: string, format: file-path}
    name: {type: string}
""", "plugin.yaml")


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key(), source="test")


def test_the_keys_are_found() -> None:
    assert file_path_keys(MANIFEST) == {"key_file", "ca_file"}


@pytest.mark.parametrize(("value", "why"), [
    ("https://example.com/key.json", "is a URL, not a file path"),
    ("key.json", "is not an absolute path"),
])
def test_a_url_or_relative_path_is_refused_naming_the_key(value, why) -> None:
    with pytest.raises(ConfigError, match=f"config key ca_file: '{value}' {why}"):
        validate_config({"ca_file": value}, MANIFEST)
    with pytest.raises(ConfigError) as info:
        validate_config({"key_file": value}, MANIFEST)
    assert why in str(info.value) and value not in str(info.value)  # a sensitive value is never quoted


def test_paths_inline_content_and_references_are_accepted() -> None:
    for value in ("/etc/x.pem", '{"type": "x"}', "[1]", "env:KEY_FILE", "file:/run/secrets/k"):
        validate_config({"key_file": value}, MANIFEST)


def test_sandboxed_the_host_reads_the_file(tmp_path, box) -> None:
    key = tmp_path / "key.json"
    key.write_text('{"secret": "s3cr3t-value"}\n')
    ca = tmp_path / "ca.pem"
    ca.write_text("CERT")
    stored = to_stored(validate_config({"key_file": str(key), "ca_file": str(ca), "name": "/not/a/file"},
                                       MANIFEST), MANIFEST, box)
    runtime, secrets = resolve(stored, MANIFEST, box, read_paths=True)
    assert runtime == {"key_file": '{"secret": "s3cr3t-value"}\n', "ca_file": "CERT", "name": "/not/a/file"}
    assert '{"secret": "s3cr3t-value"}\n' in secrets and "CERT" not in secrets  # only the sensitive key's content
    in_process, _ = resolve(stored, MANIFEST, box)  # a trusted plugin reads its own files
    assert in_process["key_file"] == str(key) and in_process["ca_file"] == str(ca)


def test_an_unreadable_file_names_the_path_and_the_host(tmp_path, box) -> None:
    missing = tmp_path / "gone.json"
    stored = to_stored({"key_file": str(missing)}, MANIFEST, box)
    with pytest.raises(ConfigError) as info:
        resolve(stored, MANIFEST, box, read_paths=True)
    text = str(info.value)
    assert f"cannot read {missing}: No such file or directory" in text
    assert "the host tried to read it for the sandboxed plugin" in text
