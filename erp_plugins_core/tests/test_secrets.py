"""SecretBox: where the key comes from, how it is created, and the errors when it is wrong or missing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from erp_plugins_core._errors import ConfigError
from erp_plugins_core._secrets import KEY_ENV, KEY_FILE_ENV, SecretBox, default_key_path

PLAIN = "sk-test-PLANTED-secret-1234567890"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No key variables set; the user's config dir is a fresh temporary folder."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def test_round_trip_with_a_given_key() -> None:
    box = SecretBox(Fernet.generate_key())
    token = box.encrypt(PLAIN)
    assert PLAIN not in token
    assert box.decrypt(token) == PLAIN
    assert box.encrypt(PLAIN) != token  # fresh IV each time


def test_default_key_file_is_created_lazily_0600(clean_env: Path, tmp_path: Path) -> None:
    key_path = default_key_path()
    assert key_path == clean_env / "erp-plugins" / "secret.key"
    box = SecretBox.from_environment(tmp_path / "state.db")
    assert not key_path.exists()  # nothing is created until a secret is stored
    token = box.encrypt(PLAIN)
    assert key_path.exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert [p.name for p in key_path.parent.iterdir()] == ["secret.key"]  # no temporary file left behind
    # another process (a new box) reads the same key
    assert SecretBox.from_environment(tmp_path / "state.db").decrypt(token) == PLAIN
    assert str(key_path) in repr(box)
    assert key_path.read_text().strip() not in repr(box)


def test_existing_key_file_is_not_replaced(clean_env: Path) -> None:
    key_path = default_key_path()
    key_path.parent.mkdir(parents=True)
    key = Fernet.generate_key()
    key_path.write_bytes(key + b"\n")
    token = SecretBox.from_environment().encrypt(PLAIN)
    assert key_path.read_bytes() == key + b"\n"
    assert Fernet(key).decrypt(token.encode()).decode() == PLAIN


def test_key_from_environment_variable(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEY_ENV, key)
    box = SecretBox.from_environment()
    assert box.decrypt(box.encrypt(PLAIN)) == PLAIN
    assert key not in repr(box) and KEY_ENV in repr(box)
    assert not default_key_path().exists()


def test_key_from_key_file_variable(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "my.key"
    key_file.write_bytes(Fernet.generate_key())
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    box = SecretBox.from_environment()
    assert box.decrypt(box.encrypt(PLAIN)) == PLAIN
    # a named key file is never created on the fly: a typo in the variable must not silently make a new key
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "typo.key"))
    with pytest.raises(ConfigError, match="does not exist"):
        SecretBox.from_environment().encrypt(PLAIN)
    assert not (tmp_path / "typo.key").exists()


def test_wrong_key_is_a_clear_error_without_the_value(tmp_path: Path) -> None:
    key_file = tmp_path / "secret.key"
    key_file.write_bytes(Fernet.generate_key())
    token = SecretBox(key_file=key_file).encrypt(PLAIN)
    key_file.write_bytes(Fernet.generate_key())  # the key file changed
    with pytest.raises(ConfigError) as info:
        SecretBox(key_file=key_file).decrypt(token, what="secret for plugin openai_provider config key api_key")
    message = str(info.value)
    assert "secret for plugin openai_provider config key api_key cannot be decrypted" in message
    assert "key changed" in message and str(key_file) in message and "enable the plugin again" in message
    assert PLAIN not in message and token not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_garbage_token_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        SecretBox(Fernet.generate_key()).decrypt("not-a-token")


def test_missing_key_file_on_decrypt(tmp_path: Path) -> None:
    key_file = tmp_path / "secret.key"
    box = SecretBox(key_file=key_file, create=True)
    token = box.encrypt(PLAIN)
    key_file.unlink()
    with pytest.raises(ConfigError, match="does not exist .deleted or moved") as info:
        SecretBox(key_file=key_file, create=True).decrypt(token, what="secret for key api_key")
    assert not key_file.exists()  # decrypting never creates a new key
    assert PLAIN not in str(info.value)


def test_malformed_key_is_refused_without_echoing_it(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = "this-is-not-a-fernet-key-but-a-secret"
    monkeypatch.setenv(KEY_ENV, bad)
    with pytest.raises(ConfigError, match=f"\\${KEY_ENV} does not hold a Fernet key") as info:
        SecretBox.from_environment()
    assert bad not in str(info.value)


def test_malformed_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "secret.key"
    key_file.write_text("short\n")
    with pytest.raises(ConfigError, match="does not hold a Fernet key") as info:
        SecretBox(key_file=key_file).encrypt(PLAIN)
    assert str(key_file) in str(info.value) and "short" not in str(info.value)


def test_key_file_must_not_be_the_state_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "state.db"))
    with pytest.raises(ConfigError, match="is the state file itself"):
        SecretBox.from_environment(tmp_path / "state.db")


def test_exactly_one_key_source() -> None:
    with pytest.raises(TypeError):
        SecretBox()
