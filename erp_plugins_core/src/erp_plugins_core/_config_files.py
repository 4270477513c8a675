"""Files a plugin's config names and the host reads: `file:/path` references of sensitive keys, and keys whose
schema says `format: file-path` (read for a sandboxed plugin, which has no file system). Both are read at every
start, UTF-8, at most MAX_FILE_BYTES, and every failure names the file and the fix.
"""

from __future__ import annotations

import os
from typing import Any

from ._errors import ConfigError
from ._manifest import Manifest

FILE_PREFIX = "file:"
FILE_PATH_FORMAT = "file-path"
#: Largest file the host reads for a config value (secrets and key files are small; this keeps a mistake cheap).
MAX_FILE_BYTES = 1024 * 1024


def _where(manifest: Manifest, key: str) -> str:
    return f"plugin {manifest.name} config key {key}"


def file_reference(value: Any, key: str, manifest: Manifest) -> str | None:
    """The path if `value` is a `file:/path` reference given for a sensitive key, else None."""
    if key in manifest.sensitive_keys and isinstance(value, str) and value.startswith(FILE_PREFIX):
        return value[len(FILE_PREFIX):]
    return None


def _read(path: str, where: str, why: str, unreadable: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}; {unreadable}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: {path} is larger than {MAX_FILE_BYTES // 1024} KiB; {why}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text; {why}") from None


def read_file(path: str, key: str, manifest: Manifest) -> str:
    """The text of a `file:` reference's file (one trailing newline dropped); ConfigError naming it and the fix."""
    fix = f"fix the file, or enable the plugin again with another --config {key}=..."
    text = _read(path, _where(manifest, key), fix, fix)
    return text[:-1] if text.endswith("\n") else text


def file_path_keys(manifest: Manifest) -> frozenset[str]:
    """Top-level config keys whose schema says `format: file-path` (a host path the host reads for a sandbox)."""
    props = manifest.schema.get("properties")
    if not isinstance(props, dict):
        return frozenset()
    return frozenset(k for k, p in props.items() if isinstance(p, dict) and p.get("format") == FILE_PATH_FORMAT)


def file_path_problem(value: Any) -> str | None:
    """Why a `format: file-path` value is neither an absolute host path nor content, or None when it is fine."""
    if not isinstance(value, str) or value.lstrip().startswith(("{", "[")):
        return None  # content given inline (JSON), or a type error the schema reports
    if "://" in value:
        return "is a URL, not a file path; give an absolute path to a file on the host"
    if not os.path.isabs(value):
        return "is not an absolute path; give /path/to/the/file on the host"
    return None


def read_host_path(path: str, key: str, manifest: Manifest) -> str:
    """A `format: file-path` file's text, read by the host for a sandboxed plugin; ConfigError saying so."""
    why = "the host tried to read it for the sandboxed plugin (its schema says format: file-path)"
    return _read(path, _where(manifest, key), why, f"{why}; give a path readable by the host's user")
