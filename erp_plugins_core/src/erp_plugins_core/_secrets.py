"""Encryption of sensitive literal config values, with a key kept outside the state file.

A sensitive config value given literally (not as `env:NAME`) is stored as a Fernet token (AES-128-CBC with
HMAC-SHA256, from `cryptography`), never in clear. The key never goes into the state database, so a copy of the
database alone (a backup, a file sent with a bug report) reveals no secret. Where the key comes from, first match:

1. `$ERP_PLUGINS_SECRET_KEY`: the key itself (Fernet's 44-character url-safe base64), for containers and CI;
2. `$ERP_PLUGINS_SECRET_KEY_FILE`: a file holding it;
3. `secret.key` in the user's config dir (platformdirs `user_config_dir("erp-plugins")`), created with mode 0600
   (folder 0700) the first time a secret is stored. It is one key per OS user, shared by every state file of
   that user, and separate from the state file even where the platform puts config and data in one folder.

Losing or changing the key makes the stored secrets undecryptable: the plugin then fails to start with an error
naming the config key, and enabling it again with the value (or with `env:NAME`) repairs it. Neither the key nor
a decrypted value ever appears in an exception message or repr.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import platformdirs
from cryptography.fernet import Fernet, InvalidToken

from ._errors import ConfigError

__all__ = ["KEY_ENV", "KEY_FILE_ENV", "SecretBox", "default_key_path"]

KEY_ENV = "ERP_PLUGINS_SECRET_KEY"
KEY_FILE_ENV = "ERP_PLUGINS_SECRET_KEY_FILE"
_HOW_TO_REPAIR = (
    f"restore the original key (file, ${KEY_ENV} or ${KEY_FILE_ENV}), or enable the plugin again with the value"
)


def default_key_path() -> Path:
    """`secret.key` in the user's config dir for erp-plugins."""
    return platformdirs.user_config_path("erp-plugins") / "secret.key"


def _fernet(key: bytes | str, source: str) -> Fernet:
    """A Fernet for `key`; ConfigError naming `source` (never the key) when it is not a Fernet key."""
    try:
        return Fernet(key.strip() if isinstance(key, (bytes, str)) else key)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{source} does not hold a Fernet key (44 url-safe base64 characters); generate one with "
            f"`python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"`"
        ) from None


class SecretBox:
    """Encrypts and decrypts secret strings with one Fernet key, loaded (or, from the default file, created) lazily."""

    __slots__ = ("_fernet_obj", "_key_file", "_create", "source")

    def __init__(self, key: bytes | str | None = None, *, key_file: str | os.PathLike[str] | None = None,
                 create: bool = False, source: str | None = None) -> None:
        """Use `key` itself, or the key in `key_file` (created on first encrypt when `create` is true).

        `source` names where the key came from in error messages (default: the key file, or "the given key").
        """
        if (key is None) == (key_file is None):
            raise TypeError("SecretBox needs exactly one of key or key_file")
        self._key_file = Path(key_file).expanduser() if key_file is not None else None
        self._create = create
        self.source = source or (f"key file {self._key_file}" if self._key_file is not None else "the given key")
        self._fernet_obj: Fernet | None = _fernet(key, self.source) if key is not None else None

    @property
    def key_file(self) -> Path | None:
        """The file the key is read from, or None when it came from the environment or the caller."""
        return self._key_file

    @classmethod
    def from_environment(cls, state_path: str | os.PathLike[str] | None = None,
                         environ: Mapping[str, str] | None = None) -> SecretBox:
        """The box for the key chosen as the module docstring says; `state_path` must not be the key file."""
        env = os.environ if environ is None else environ
        if env.get(KEY_ENV, "").strip():
            return cls(env[KEY_ENV], source=f"${KEY_ENV}")
        if env.get(KEY_FILE_ENV, "").strip():
            path, create = Path(env[KEY_FILE_ENV]).expanduser(), False
        else:
            path, create = default_key_path(), True
        if state_path is not None and path.resolve() == Path(state_path).expanduser().resolve():
            raise ConfigError(f"the secret key file {path} is the state file itself; keep the key in another file")
        return cls(key_file=path, create=create)

    def __repr__(self) -> str:
        return f"SecretBox({self.source})"

    # -- the key --------------------------------------------------------------------------------------------------

    def _load(self, creating: bool) -> Fernet:
        if self._fernet_obj is not None:
            return self._fernet_obj
        assert self._key_file is not None
        path = self._key_file
        if not path.exists():
            if not (creating and self._create):
                raise FileNotFoundError(path)
            self._write_new_key(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read secret key file {path}: {exc.strerror or exc}; make it readable") from None
        self._fernet_obj = _fernet(data, self.source)
        return self._fernet_obj

    @staticmethod
    def _write_new_key(path: Path) -> None:
        """Create the key file 0600 atomically; if another process wins the race, its key is used."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, Fernet.generate_key() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # atomic and fails if the file exists: never a half-written key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        except OSError as exc:
            raise ConfigError(
                f"cannot create secret key file {path}: {exc.strerror or exc}; make its folder writable or set "
                f"${KEY_FILE_ENV} (or ${KEY_ENV})"
            ) from None
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # -- use ------------------------------------------------------------------------------------------------------

    def encrypt(self, plain: str) -> str:
        """A Fernet token (text) for `plain`; creates the default key file on first use."""
        try:
            fernet = self._load(creating=True)
        except FileNotFoundError:
            raise ConfigError(
                f"secret key file {self._key_file} does not exist; create it or unset ${KEY_FILE_ENV}"
            ) from None
        return fernet.encrypt(plain.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str, what: str = "a stored secret") -> str:
        """The clear text of `token`; ConfigError naming `what` (e.g. "plugin X config key api_key") otherwise."""
        try:
            fernet = self._load(creating=False)
        except FileNotFoundError:
            raise ConfigError(
                f"{what} cannot be decrypted: secret key file {self._key_file} does not exist (deleted or moved?); "
                f"{_HOW_TO_REPAIR}"
            ) from None
        try:
            return fernet.decrypt(token.encode("ascii") if isinstance(token, str) else token).decode("utf-8")
        except (InvalidToken, UnicodeError, TypeError, ValueError):
            raise ConfigError(
                f"{what} cannot be decrypted with {self.source}: the key changed since the value was stored? "
                f"{_HOW_TO_REPAIR}"
            ) from None
