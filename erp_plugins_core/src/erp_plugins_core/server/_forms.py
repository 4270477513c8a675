"""A plugin's config form, generated from its manifest's JSON Schema, and the form's values read back.

Each property becomes a field of its type (number, select for enums and booleans, JSON text for arrays and
objects, a write-only password field for sensitive keys). Values go through the CLI's own conversion
(`parse_cli_config`) and the host's validation, so the messages are the CLI's; each is shown next to the
field it names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .._config import REDACTED, parse_cli_config
from .._errors import ConfigError

_KEY_RE = re.compile(r"config key ([A-Za-z0-9_\-]+)")
_SPLIT_RE = re.compile(r"; (?=plugin \S+ (?:config|has no config))")


@dataclass
class Field:
    """One input of the form."""

    key: str
    label: str
    kind: str  # text, number, integer, select, json, password
    description: str = ""
    required: bool = False
    default: Any = None
    options: list[str] = field(default_factory=list)
    value: str = ""
    is_set: bool = False  # sensitive keys: a value is stored
    error: str = ""


def _kind(prop: dict[str, Any], sensitive: bool) -> tuple[str, list[str]]:
    if sensitive:
        return "password", []
    if isinstance(prop.get("enum"), list):
        return "select", [v if isinstance(v, str) else json.dumps(v) for v in prop["enum"]]
    kinds = prop.get("type")
    kinds = [kinds] if isinstance(kinds, str) else (kinds or [])
    if "boolean" in kinds:
        return "select", ["true", "false"]
    if "integer" in kinds:
        return "integer", []
    if "number" in kinds:
        return "number", []
    if "array" in kinds or "object" in kinds:
        return "json", []
    return "text", []


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def build_fields(manifest: Any, current: dict[str, Any] | None) -> list[Field]:
    """The form's fields for `manifest`, filled with `current` (the redacted stored config, or None)."""
    schema = manifest.schema
    required = set(schema.get("required", [])) if isinstance(schema.get("required"), list) else set()
    fields = []
    for key, prop in (schema.get("properties") or {}).items():
        prop = prop if isinstance(prop, dict) else {}
        sensitive = key in manifest.sensitive_keys
        kind, options = _kind(prop, sensitive)
        value = (current or {}).get(key)
        f = Field(key=key, label=str(prop.get("title") or key), kind=kind, description=str(prop.get("description", "")),
                  required=key in required, default=prop.get("default"), options=options)
        if sensitive:
            f.is_set = value is not None
            # an env:/file: reference is not secret and is shown; a literal never is
            f.value = value if isinstance(value, str) and value != REDACTED and value.startswith(("env:", "file:")) \
                else ""
        else:
            f.value = _shown(value)
        fields.append(f)
    return fields


def read_form(manifest: Any, form: Any, keep_secret: Any) -> dict[str, Any]:
    """The config a submitted form asks for; ConfigError with the CLI's messages otherwise.

    A blank field means "not set" (the default applies), except a blank sensitive field of a key that has
    a stored value: `keep_secret(key)` gives that value back so it is kept.
    """
    pairs = []
    kept: dict[str, Any] = {}
    for key in (manifest.schema.get("properties") or {}):
        text = form.get(f"config.{key}")
        if not isinstance(text, str) or text == "":
            if key in manifest.sensitive_keys:
                value = keep_secret(key)
                if value is not None:
                    kept[key] = value
            continue
        pairs.append(f"{key}={text}")
    config = parse_cli_config(pairs, manifest)
    config.update(kept)
    return config


def field_errors(exc: ConfigError, fields: list[Field]) -> str:
    """Attach each problem of `exc` to the field it names; returns what names no field."""
    by_key = {f.key: f for f in fields}
    rest = []
    for problem in _SPLIT_RE.split(str(exc)):
        keys = [k for k in _KEY_RE.findall(problem) if k in by_key]
        if not keys:
            rest.append(problem)
        for k in keys:
            by_key[k].error = f"{by_key[k].error}; {problem}" if by_key[k].error else problem
    return "; ".join(rest)
