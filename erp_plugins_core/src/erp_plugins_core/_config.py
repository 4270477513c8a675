"""A tenant's config for a plugin: parsed from `--config KEY=VALUE`, validated against the manifest's JSON Schema,
stored with sensitive literals encrypted, resolved (env references read, secrets decrypted) when the plugin starts.

Three forms of a config exist. The *given* form comes from the administrator (values converted to the schema's
types, `env:NAME` references as text). The *stored* form goes into the state: the same, except that a sensitive
literal becomes `{"$secret": "<fernet token>"}`. The *runtime* form is what the plugin receives: references
read from the environment, secrets decrypted, everything validated again. Every error names the plugin, the key
and the rule, on one line, and never shows a sensitive value.

`env:NAME` is recognised on top-level keys only. So is `file:/absolute/path`, for sensitive keys only (as with
Docker or Kubernetes secrets mounted as files): the file's text, without one trailing newline, is read when the
plugin starts, so a sandboxed plugin gets the content without any file system. `config show` shows a reference
as it was given even for a sensitive key: it names where the value comes from, not the value.

A key whose schema says `format: file-path` holds a host path (absolute), or the content itself (a JSON object
or array). For a sandboxed plugin the host reads such a path when the plugin starts and hands over the content,
as for `file:`; a trusted plugin in the host's process gets the path. A URL or a relative path is refused.
Reading those files is `_config_files`.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema
from ._config_files import (
    FILE_PATH_FORMAT,
    FILE_PREFIX,
    file_path_keys,
    file_path_problem,
    file_reference,
    read_file,
    read_host_path,
)
from ._errors import ConfigError
from ._manifest import Manifest
from ._redact import REDACTED, Redactor
from ._secrets import SecretBox

__all__ = [
    "ENV_PREFIX",
    "FILE_PATH_FORMAT",
    "FILE_PREFIX",
    "SECRET_MARK",
    "apply_defaults",
    "env_reference",
    "file_path_keys",
    "file_reference",
    "parse_cli_config",
    "redacted",
    "resolve",
    "to_stored",
    "validate_config",
]

ENV_PREFIX = "env:"
SECRET_MARK = "$secret"  # noqa: S105 - the marker key, not a password
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_MAX_SHOWN = 80  # characters of a non-sensitive bad value quoted in an error


def env_reference(value: Any) -> str | None:
    """The variable name if `value` is an `env:NAME` reference, else None."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return value[len(ENV_PREFIX):]
    return None


def _is_reference(value: Any, key: str, manifest: Manifest) -> bool:
    """Whether `value` names where the value comes from (`env:` or, for a sensitive key, `file:`)."""
    return env_reference(value) is not None or file_reference(value, key, manifest) is not None


def _is_secret_mark(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {SECRET_MARK} and isinstance(value[SECRET_MARK], str)


def _properties(schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    return props if isinstance(props, dict) else {}


def _where(manifest: Manifest, key: str) -> str:
    return f"plugin {manifest.name} config key {key}"


def _key_schema(manifest: Manifest, key: str) -> dict[str, Any]:
    """The schema of top-level `key`; ConfigError naming the allowed keys if the schema does not allow it."""
    schema = manifest.schema
    props = _properties(schema)
    if key in props:
        prop = props[key]
        return prop if isinstance(prop, dict) else {}
    extra = schema.get("additionalProperties", False)
    if extra is True or isinstance(extra, dict):
        return extra if isinstance(extra, dict) else {}
    allowed = ", ".join(sorted(props)) or "none (this plugin takes no config)"
    raise ConfigError(f"plugin {manifest.name} has no config key {key!r}; allowed keys: {allowed}")


def _types(prop: Mapping[str, Any]) -> list[str]:
    kind = prop.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    return []


def _convert(text: str, prop: Mapping[str, Any]) -> Any:
    """`text` as the first of the property's types it parses as; ValueError naming the expected type(s)."""
    kinds = _types(prop)
    if not kinds:
        return text
    order = ["null", "boolean", "integer", "number", "array", "object", "string"]
    for kind in sorted(kinds, key=lambda k: order.index(k) if k in order else len(order)):
        stripped = text.strip()
        if kind == "string":
            return text
        if kind == "null" and stripped.lower() == "null":
            return None
        if kind == "boolean" and stripped.lower() in _TRUE | _FALSE:
            return stripped.lower() in _TRUE
        if kind == "integer" and re.fullmatch(r"[+-]?\d+", stripped):
            return int(stripped)
        if kind == "number":
            if re.fullmatch(r"[+-]?\d+", stripped):
                return int(stripped)
            try:
                number = float(stripped)
            except ValueError:
                continue
            if number == number and number not in (float("inf"), float("-inf")):
                return number
        if kind in {"array", "object"}:
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):
                continue
            if isinstance(parsed, list if kind == "array" else dict):
                return parsed
    hints = {"boolean": "boolean (true/false/yes/no/1/0)", "array": "array (JSON, e.g. [1, 2])",
             "object": "object (JSON, e.g. {\"a\": 1})"}
    raise ValueError(" or ".join(hints.get(k, k) for k in kinds))


def _shown(value: Any) -> str:
    """A non-sensitive value for an error message: strings quoted, others as JSON; one line, bounded."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", " ").replace("\r", " ")
    text = text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."
    return repr(text) if isinstance(value, str) else text


def parse_cli_config(pairs: Iterable[str], manifest: Manifest) -> dict[str, Any]:
    """`--config KEY=VALUE` items as a dict, each value converted to its schema type (`env:NAME` kept as text)."""
    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            shown = f"{key!r}" if key else "an item"
            raise ConfigError(
                f"malformed --config {shown} for plugin {manifest.name}: use KEY=VALUE, e.g. model=gpt-4o"
            )
        prop = _key_schema(manifest, key)
        if key in out:
            raise ConfigError(f"{_where(manifest, key)} is given twice; give each --config key once")
        name = env_reference(text)
        if name is not None:
            if not _ENV_NAME_RE.match(name):
                raise ConfigError(
                    f"{_where(manifest, key)}: {name!r} is not an environment variable name; use env:NAME with "
                    f"letters, digits and '_'"
                )
            out[key] = text
            continue
        path = file_reference(text, key, manifest)
        if path is not None:
            if not os.path.isabs(path):
                raise ConfigError(
                    f"{_where(manifest, key)}: {path!r} is not an absolute path; use file:/path/to/the/file"
                )
            out[key] = text
            continue
        try:
            out[key] = _convert(text, prop)
        except ValueError as exc:
            got = "(sensitive value not shown)" if key in manifest.sensitive_keys else f"got {_shown(text)}"
            raise ConfigError(f"{_where(manifest, key)}: expected {exc}, {got}") from None
    return out


# --- Validation -----------------------------------------------------------------------------------------------


def apply_defaults(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` with every absent property that has a `default` filled in, recursively into objects."""
    out = dict(config)
    for key, prop in _properties(schema).items():
        if not isinstance(prop, dict):
            continue
        if key not in out and "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        if isinstance(out.get(key), dict) and not _is_secret_mark(out[key]) and _properties(prop):
            out[key] = apply_defaults(out[key], prop)
    return out


def _path_text(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: jsonschema.ValidationError, manifest: Manifest, sensitive: bool) -> str:
    """One line for one schema error, built from its validator and path, never quoting a sensitive value."""
    path = list(error.absolute_path)
    where = _where(manifest, _path_text(path)) if path else f"plugin {manifest.name} config"
    rule, want = error.validator, error.validator_value
    instance = error.instance
    if rule == "required" and isinstance(instance, dict):
        missing = [k for k in want if k not in instance]
        keys = ", ".join(_path_text([*path, k]) for k in missing)
        return f"plugin {manifest.name} config key {keys} is required; give it with --config {missing[0]}=..."
    if rule == "additionalProperties" and isinstance(instance, dict):
        allowed = set(_properties(error.schema))
        extra = sorted(k for k in instance if k not in allowed)
        return f"{where}: unknown key(s) {', '.join(extra)}; allowed keys: {', '.join(sorted(allowed)) or 'none'}"
    got = "" if sensitive or not path else f", got {_shown(instance)}"
    if rule == "type":
        kinds = want if isinstance(want, list) else [want]
        actual = "" if sensitive else f", got {type(instance).__name__}"
        return f"{where}: must be of type {' or '.join(map(str, kinds))}{actual}"
    messages = {
        "enum": lambda: f"must be one of {', '.join(json.dumps(v) for v in want)}",
        "const": lambda: f"must be {json.dumps(want)}",
        "minimum": lambda: f"must be >= {want}",
        "maximum": lambda: f"must be <= {want}",
        "exclusiveMinimum": lambda: f"must be > {want}",
        "exclusiveMaximum": lambda: f"must be < {want}",
        "multipleOf": lambda: f"must be a multiple of {want}",
        "minLength": lambda: f"must be at least {want} characters long",
        "maxLength": lambda: f"must be at most {want} characters long",
        "pattern": lambda: f"must match the pattern {want}",
        "format": lambda: f"must be a valid {want}",
        "minItems": lambda: f"must have at least {want} items",
        "maxItems": lambda: f"must have at most {want} items",
        "uniqueItems": lambda: "must not repeat items",
        "minProperties": lambda: f"must have at least {want} keys",
        "maxProperties": lambda: f"must have at most {want} keys",
    }
    if rule in messages:
        return f"{where}: {messages[rule]()}{got}"
    if sensitive or not path:
        return f"{where}: does not satisfy the schema rule {rule!r}"
    return f"{where}: {error.message.splitlines()[0][:200]}"


def _errors(config: Mapping[str, Any], manifest: Manifest, skip: set[str], secrets: Iterable[str]) -> list[str]:
    import jsonschema  # imported when a config is validated, not when the CLI starts (~80 ms)

    validator = jsonschema.Draft202012Validator(manifest.schema, format_checker=jsonschema.FormatChecker())
    sensitive = manifest.sensitive_keys
    lines = []
    for error in sorted(validator.iter_errors(dict(config)), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if path and path[0] in skip:
            continue  # an env: reference is checked once it is resolved
        lines.append(_describe(error, manifest, bool(path) and path[0] in sensitive))
    # belt and braces: no sensitive value survives even in a message of a rule not described above
    redactor = Redactor(secrets)
    return [redactor.text(line) for line in dict.fromkeys(lines)]


def _sensitive_values(config: Mapping[str, Any], manifest: Manifest) -> list[str]:
    out = []
    for key in manifest.sensitive_keys:
        value = config.get(key)
        if value is None or _is_reference(value, key, manifest) or _is_secret_mark(value):
            continue
        out.append(value if isinstance(value, str) else json.dumps(value, default=str))
        if not isinstance(value, str):
            out.append(str(value))
    return out


def _unknown_keys(config: Mapping[str, Any], manifest: Manifest) -> None:
    for key in config:
        _key_schema(manifest, key)


def validate_config(config: Mapping[str, Any], manifest: Manifest) -> dict[str, Any]:
    """The given config with defaults applied, validated (Draft 2020-12); ConfigError listing every problem.

    `env:` and `file:` references are not type-checked here (that happens in `resolve`); unknown keys are errors.
    """
    _unknown_keys(config, manifest)
    full = apply_defaults(config, manifest.schema)
    skip = {k for k, v in full.items() if _is_reference(v, k, manifest)}
    problems = _errors(full, manifest, skip, _sensitive_values(full, manifest))
    for key in sorted(file_path_keys(manifest) - skip):
        why = file_path_problem(full.get(key))
        if why is not None:
            shown = "the value (sensitive, not shown)" if key in manifest.sensitive_keys else repr(full[key])
            problems.append(f"{_where(manifest, key)}: {shown} {why}")
    if problems:
        raise ConfigError("; ".join(problems))
    return full


# --- Storing and resolving ------------------------------------------------------------------------------------


def to_stored(config: Mapping[str, Any], manifest: Manifest, box: SecretBox) -> dict[str, Any]:
    """The stored form: sensitive literals encrypted as `{"$secret": token}` (JSON of the value inside)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in manifest.sensitive_keys and value is not None and not _is_reference(value, key, manifest):
            if not _is_secret_mark(value):  # already stored (a config carried over): keep its token
                value = {SECRET_MARK: box.encrypt(json.dumps(value))}
        out[key] = value
    return out


def resolve(
    stored: Mapping[str, Any],
    manifest: Manifest,
    box: SecretBox,
    environ: Mapping[str, str] | None = None,
    *,
    read_paths: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """The runtime config (env references read, secrets decrypted, validated again) and its secret values.

    The secret values (of sensitive keys, however given) are for the Redactor of the plugin's logs and results.
    `read_paths`: the plugin is sandboxed, so the host reads each `format: file-path` path and passes the content.
    """
    env = os.environ if environ is None else environ
    _unknown_keys(stored, manifest)
    runtime: dict[str, Any] = {}
    secret_values: list[str] = []
    for key, value in stored.items():
        sensitive = key in manifest.sensitive_keys
        name = env_reference(value)
        if name is not None:
            if name not in env:
                raise ConfigError(
                    f"{_where(manifest, key)}: environment variable {name} is not set; set it for the host, "
                    f"or enable the plugin again with another --config {key}=..."
                )
            text = env[name]
            if sensitive:
                secret_values.append(text)
            try:
                value = _convert(text, _key_schema(manifest, key))
            except ValueError as exc:
                got = "(sensitive value not shown)" if sensitive else f"got {_shown(text)}"
                raise ConfigError(
                    f"{_where(manifest, key)}: environment variable {name}: expected {exc}, {got}"
                ) from None
        elif (path := file_reference(value, key, manifest)) is not None:
            text = read_file(path, key, manifest)
            secret_values.append(text)
            try:
                value = _convert(text, _key_schema(manifest, key))
            except ValueError as exc:
                raise ConfigError(
                    f"{_where(manifest, key)}: {path}: expected {exc}, (sensitive value not shown)"
                ) from None
        elif _is_secret_mark(value):
            plain = box.decrypt(value[SECRET_MARK], what=f"secret for {_where(manifest, key)}")
            try:
                value = json.loads(plain)
            except ValueError:
                value = plain
        if read_paths and key in file_path_keys(manifest) and isinstance(value, str) and os.path.isabs(value):
            value = read_host_path(value, key, manifest)
            if sensitive:
                secret_values.append(value)
        runtime[key] = value
    runtime = apply_defaults(runtime, manifest.schema)
    secret_values += _sensitive_values(runtime, manifest)
    secret_values = list(dict.fromkeys(secret_values))
    problems = _errors(runtime, manifest, set(), secret_values)
    if problems:
        raise ConfigError("; ".join(problems))
    return runtime, secret_values


def redacted(stored: Mapping[str, Any], manifest: Manifest) -> dict[str, Any]:
    """The stored config for display: sensitive values as `***` (an `env:` or `file:` reference shown as is)."""
    out: dict[str, Any] = {}
    for key, value in stored.items():
        if _is_secret_mark(value) or (key in manifest.sensitive_keys and value is not None
                                      and not _is_reference(value, key, manifest)):
            value = REDACTED
        out[key] = value
    return out
