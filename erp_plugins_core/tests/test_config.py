"""Config: CLI parsing and type conversion, schema validation with defaults, encrypted storage, env resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from erp_plugins_core._config import (
    SECRET_MARK,
    parse_cli_config,
    redacted,
    resolve,
    to_stored,
    validate_config,
)
from erp_plugins_core._errors import ConfigError
from erp_plugins_core._manifest import Manifest, parse_manifest
from erp_plugins_core._secrets import SecretBox
from erp_plugins_core._state import SQLiteStateStore, TenantPlugin

SECRET = "sk-PLANTED-0123456789abcdefXYZ"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "api_key": {"type": "string", "sensitive": True, "required": True, "minLength": 10},
        "model": {"type": "string", "default": "gpt-4o-mini", "enum": ["gpt-4o-mini", "gpt-4o"]},
        "max_tokens": {"type": "integer", "minimum": 1, "default": 256},
        "temperature": {"type": "number", "maximum": 2, "default": 0.7},
        "stream": {"type": "boolean", "default": False},
        "stop": {"type": "array", "items": {"type": "string"}},
        "options": {
            "type": "object",
            "default": {},
            "properties": {"retries": {"type": "integer", "default": 3}, "region": {"type": "string"}},
        },
        "pin": {"type": "integer", "sensitive": True},
        "base_url": {"type": ["string", "null"]},
    },
}


def _manifest(schema: dict[str, Any] | None = None) -> Manifest:
    data: dict[str, Any] = {"name": "demo_ai", "version": "1.0.0", "plugin_type": "ai_provider",
                            "api_version": "1.0"}
    if schema is not None:
        data["config_schema"] = schema
    return parse_manifest(data, "demo/plugin.yaml")


@pytest.fixture
def manifest() -> Manifest:
    return _manifest(SCHEMA)


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


# --- parse_cli_config -----------------------------------------------------------------------------------------


def test_cli_values_are_converted_to_schema_types(manifest: Manifest) -> None:
    parsed = parse_cli_config(
        ["max_tokens=12", "temperature=0.5", "stream=yes", 'stop=["a", "b"]', 'options={"retries": 1}',
         "model=gpt-4o", "api_key=env:OPENAI_API_KEY", "pin=1234", "base_url=null"],
        manifest,
    )
    assert parsed == {"max_tokens": 12, "temperature": 0.5, "stream": True, "stop": ["a", "b"],
                      "options": {"retries": 1}, "model": "gpt-4o", "api_key": "env:OPENAI_API_KEY", "pin": 1234,
                      "base_url": None}
    assert parse_cli_config(["temperature=1"], manifest) == {"temperature": 1}
    assert parse_cli_config(["base_url=http://x/?a=b"], manifest) == {"base_url": "http://x/?a=b"}  # first '='
    assert parse_cli_config(["model="], manifest) == {"model": ""}


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("1", True), ("0", False),
                                             ("YES", True), ("no", False), ("on", True), ("off", False)])
def test_booleans(manifest: Manifest, text: str, value: bool) -> None:
    assert parse_cli_config([f"stream={text}"], manifest) == {"stream": value}


def test_unknown_key_names_it_and_lists_allowed(manifest: Manifest) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cli_config(["modle=gpt-4o"], manifest)
    message = str(info.value)
    assert "plugin demo_ai has no config key 'modle'" in message
    assert "allowed keys: api_key, base_url, max_tokens, model, options, pin, stop, stream, temperature" in message


def test_plugin_without_config_schema_takes_no_keys() -> None:
    with pytest.raises(ConfigError, match="no config key 'a'; allowed keys: none"):
        parse_cli_config(["a=1"], _manifest())


@pytest.mark.parametrize("item", ["model", "=gpt-4o", ""])
def test_malformed_item_says_use_key_value(manifest: Manifest, item: str) -> None:
    with pytest.raises(ConfigError, match="use KEY=VALUE"):
        parse_cli_config([item], manifest)


@pytest.mark.parametrize(
    ("item", "expected"),
    [("max_tokens=many", "expected integer, got 'many'"), ("max_tokens=1.5", "expected integer"),
     ("temperature=hot", "expected number"), ("stream=maybe", "expected boolean (true/false/yes/no/1/0)"),
     ("stop=a,b", "expected array (JSON"), ('options=[1]', "expected object (JSON"),
     ("temperature=nan", "expected number")],
)
def test_bad_type_names_key_and_type(manifest: Manifest, item: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cli_config([item], manifest)
    assert f"plugin demo_ai config key {item.split('=')[0]}: {expected}" in str(info.value)


def test_bad_type_of_sensitive_value_is_not_echoed(manifest: Manifest) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cli_config([f"pin={SECRET}"], manifest)
    message = str(info.value)
    assert "config key pin: expected integer" in message and "not shown" in message
    assert SECRET not in message


def test_duplicate_key_and_bad_env_name(manifest: Manifest) -> None:
    with pytest.raises(ConfigError, match="model is given twice"):
        parse_cli_config(["model=gpt-4o", "model=gpt-4o-mini"], manifest)
    with pytest.raises(ConfigError, match="not an environment variable name"):
        parse_cli_config(["api_key=env:BAD-NAME"], manifest)


# --- validate_config ------------------------------------------------------------------------------------------


def test_defaults_are_applied_recursively(manifest: Manifest) -> None:
    config = validate_config({"api_key": SECRET, "options": {"region": "eu"}}, manifest)
    assert config == {"api_key": SECRET, "model": "gpt-4o-mini", "max_tokens": 256, "temperature": 0.7,
                      "stream": False, "options": {"region": "eu", "retries": 3}}
    assert validate_config({"api_key": SECRET}, manifest)["options"] == {"retries": 3}


def test_given_values_win_over_defaults(manifest: Manifest) -> None:
    config = validate_config(parse_cli_config(["api_key=env:K", "max_tokens=5", "stream=true"], manifest), manifest)
    assert config["max_tokens"] == 5 and config["stream"] is True and config["api_key"] == "env:K"


def test_missing_required_key(manifest: Manifest) -> None:
    with pytest.raises(ConfigError, match="plugin demo_ai config key api_key is required; give it with --config"):
        validate_config({}, manifest)


def test_rule_errors_name_key_and_rule(manifest: Manifest) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"api_key": SECRET, "max_tokens": 0, "model": "gpt-5", "temperature": 3,
                         "options": {"retries": "x"}}, manifest)
    message = str(info.value)
    assert "config key max_tokens: must be >= 1, got 0" in message
    assert "config key model: must be one of \"gpt-4o-mini\", \"gpt-4o\", got 'gpt-5'" in message
    assert "config key temperature: must be <= 2" in message
    assert "config key options.retries: must be of type integer, got str" in message
    assert "\n" not in message


def test_wrong_type_in_a_dict(manifest: Manifest) -> None:
    with pytest.raises(ConfigError, match="config key stream: must be of type boolean, got str"):
        validate_config({"api_key": SECRET, "stream": "notbool"}, manifest)


def test_sensitive_value_never_in_validation_errors(manifest: Manifest) -> None:
    short = "sk-short"  # violates minLength 10
    with pytest.raises(ConfigError) as info:
        validate_config({"api_key": short}, manifest)
    assert "config key api_key: must be at least 10 characters long" in str(info.value)
    assert short not in str(info.value)
    with pytest.raises(ConfigError) as info:
        validate_config({"api_key": 12345678901234}, manifest)
    assert "config key api_key: must be of type string" in str(info.value)
    assert "12345678901234" not in str(info.value) and "int" not in str(info.value)


def test_sensitive_value_not_echoed_by_top_level_rules() -> None:
    schema = {"type": "object", "properties": {"token": {"type": "string", "sensitive": True}},
              "not": {"properties": {"token": {"const": SECRET}}}}
    with pytest.raises(ConfigError) as info:
        validate_config({"token": SECRET}, _manifest(schema))
    assert "does not satisfy the schema rule 'not'" in str(info.value) and SECRET not in str(info.value)


def test_unknown_key_in_validate(manifest: Manifest) -> None:
    with pytest.raises(ConfigError, match="no config key 'colour'"):
        validate_config({"api_key": SECRET, "colour": "red"}, manifest)


def test_env_references_are_not_type_checked_before_resolution(manifest: Manifest) -> None:
    config = validate_config({"api_key": "env:KEY", "max_tokens": "env:MAX_TOKENS", "pin": "env:PIN"}, manifest)
    assert config["max_tokens"] == "env:MAX_TOKENS"


def test_additional_properties_schema_allows_extra_keys() -> None:
    m = _manifest({"type": "object", "properties": {"a": {"type": "integer"}},
                   "additionalProperties": {"type": "integer"}})
    assert parse_cli_config(["a=1", "b=2"], m) == {"a": 1, "b": 2}
    with pytest.raises(ConfigError, match="config key b: must be of type integer"):
        validate_config({"b": "x"}, m)


# --- to_stored / resolve / redacted -----------------------------------------------------------------------------


def test_sensitive_literals_are_encrypted_and_resolved(manifest: Manifest, box: SecretBox) -> None:
    given = validate_config(parse_cli_config([f"api_key={SECRET}", "pin=4321", "max_tokens=env:MAXT"], manifest),
                            manifest)
    stored = to_stored(given, manifest, box)
    assert set(stored["api_key"]) == {SECRET_MARK} and SECRET not in repr(stored)
    assert set(stored["pin"]) == {SECRET_MARK} and "4321" not in repr(stored)
    assert stored["max_tokens"] == "env:MAXT" and stored["model"] == "gpt-4o-mini"
    assert to_stored(stored, manifest, box) == stored  # storing again keeps tokens as they are
    runtime, secrets = resolve(stored, manifest, box, environ={"MAXT": "99"})
    assert runtime["api_key"] == SECRET and runtime["pin"] == 4321 and runtime["max_tokens"] == 99
    assert runtime["options"] == {"retries": 3}
    assert SECRET in secrets and "4321" in secrets


def test_env_reference_for_a_sensitive_key_is_never_stored(manifest: Manifest, box: SecretBox) -> None:
    stored = to_stored(validate_config({"api_key": "env:OPENAI_API_KEY"}, manifest), manifest, box)
    assert stored["api_key"] == "env:OPENAI_API_KEY"
    runtime, secrets = resolve(stored, manifest, box, environ={"OPENAI_API_KEY": SECRET})
    assert runtime["api_key"] == SECRET and secrets == [SECRET]


def test_file_reference_for_a_sensitive_key_is_read_at_start_and_never_stored(
        manifest: Manifest, box: SecretBox, tmp_path: Path) -> None:
    key_file = tmp_path / "api_key"
    key_file.write_text(SECRET + "\n")  # as secret files usually end
    given = validate_config(parse_cli_config([f"api_key=file:{key_file}", "pin=1234"], manifest), manifest)
    stored = to_stored(given, manifest, box)
    assert stored["api_key"] == f"file:{key_file}" and SECRET not in repr(stored)
    assert redacted(stored, manifest)["api_key"] == f"file:{key_file}"
    runtime, secrets = resolve(stored, manifest, box)
    assert runtime["api_key"] == SECRET and SECRET in secrets  # one trailing newline dropped, redacted later
    key_file.write_text("short")  # read again at every start, and validated again
    with pytest.raises(ConfigError, match="config key api_key: .*10") as info:
        resolve(stored, manifest, box)
    assert "short" not in str(info.value)


def test_file_references_only_for_sensitive_keys(manifest: Manifest) -> None:
    given = parse_cli_config(["base_url=file:/etc/hostname"], manifest)  # not sensitive: an ordinary string
    assert given["base_url"] == "file:/etc/hostname"
    with pytest.raises(ConfigError, match="'relative/key' is not an absolute path; use file:/path/to/the/file"):
        parse_cli_config(["api_key=file:relative/key"], manifest)


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read {path}: No such file or directory"),
    (b"\xff\xfe", "{path} is not UTF-8 text"),
    (b"x" * (1024 * 1024 + 1), "{path} is larger than 1024 KiB"),
])
def test_unreadable_key_file_is_a_clear_error(manifest: Manifest, box: SecretBox, tmp_path: Path,
                                              content: bytes | None, message: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        resolve({"api_key": f"file:{path}"}, manifest, box)
    assert str(info.value).startswith(f"plugin demo_ai config key api_key: {message.format(path=path)}; fix the file")


def test_unset_environment_variable_names_it(manifest: Manifest, box: SecretBox) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({"api_key": "env:OPENAI_API_KEY"}, manifest, box, environ={})
    assert str(info.value).startswith(
        "plugin demo_ai config key api_key: environment variable OPENAI_API_KEY is not set")


def test_resolved_values_are_validated_again(manifest: Manifest, box: SecretBox) -> None:
    with pytest.raises(ConfigError, match="environment variable MAXT: expected integer, got 'lots'"):
        resolve({"api_key": SECRET, "max_tokens": "env:MAXT"}, manifest, box, environ={"MAXT": "lots"})
    with pytest.raises(ConfigError, match="config key max_tokens: must be >= 1"):
        resolve({"api_key": SECRET, "max_tokens": "env:MAXT"}, manifest, box, environ={"MAXT": "0"})
    with pytest.raises(ConfigError) as info:  # a sensitive value from the environment that breaks a rule
        resolve({"api_key": "env:K"}, manifest, box, environ={"K": "sk-short"})
    assert "api_key: must be at least 10 characters long" in str(info.value) and "sk-short" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        resolve({"api_key": SECRET, "pin": "env:PIN"}, manifest, box, environ={"PIN": "x" + SECRET})
    assert "pin: environment variable PIN: expected integer" in str(info.value) and SECRET not in str(info.value)


def test_wrong_key_names_the_config_key(manifest: Manifest, box: SecretBox) -> None:
    stored = to_stored({"api_key": SECRET}, manifest, box)
    with pytest.raises(ConfigError) as info:
        resolve(stored, manifest, SecretBox(Fernet.generate_key()))
    message = str(info.value)
    assert "secret for plugin demo_ai config key api_key cannot be decrypted" in message and SECRET not in message


def test_wrong_key_file_is_a_clear_error(manifest: Manifest, tmp_path: Path) -> None:
    key_file = tmp_path / "secret.key"
    stored = to_stored({"api_key": SECRET}, manifest, SecretBox(key_file=key_file, create=True))
    key_file.write_bytes(Fernet.generate_key())  # someone replaced the key file
    with pytest.raises(ConfigError, match=f"api_key cannot be decrypted with key file {key_file}: the key changed"):
        resolve(stored, manifest, SecretBox(key_file=key_file))


def test_redacted_for_config_show(manifest: Manifest, box: SecretBox) -> None:
    stored = to_stored({"api_key": SECRET, "pin": "env:PIN", "model": "gpt-4o", "base_url": None}, manifest, box)
    shown = redacted(stored, manifest)
    assert shown == {"api_key": "***", "pin": "env:PIN", "model": "gpt-4o", "base_url": None}
    assert redacted({"api_key": SECRET}, manifest) == {"api_key": "***"}  # even a clear value (never stored so)


def test_planted_secret_never_in_the_raw_state_files(manifest: Manifest, tmp_path: Path) -> None:
    box = SecretBox(key_file=tmp_path / "keys" / "secret.key", create=True)
    state = tmp_path / "state" / "state.db"
    given = validate_config(parse_cli_config([f"api_key={SECRET}", "model=gpt-4o"], manifest), manifest)
    stored = to_stored(given, manifest, box)
    needle = SECRET.encode()

    def scan() -> list[Path]:
        files = sorted(state.parent.iterdir())
        assert files, "no state files written"
        return [f for f in files if needle in f.read_bytes()]

    with SQLiteStateStore(state) as store:
        with store.transaction() as tx:
            record = tx.put(TenantPlugin("acme", "demo_ai", enabled=True, config=stored))
        assert SECRET not in repr(record) and SECRET not in repr(store.list())
        assert Path(f"{state}-wal").exists()
        assert scan() == []  # while the WAL holds the data
        runtime, _ = resolve(store.get("acme", "demo_ai").config, manifest, box)  # type: ignore[union-attr]
        assert runtime["api_key"] == SECRET
    assert scan() == []  # after the checkpoint on close
    assert needle not in (tmp_path / "keys" / "secret.key").read_bytes()
