"""The manifest (plugin.yaml): a strict pydantic model of every contract field, read with the loader of `_yaml`.

Every problem becomes a ManifestError whose lines name the file, the field path and what is allowed.
"""

from __future__ import annotations

import keyword
import re
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._errors import ManifestError
from ._hookspecs import HOOKS, parse_type
from ._interface import PluginType
from ._metaschema import meta_schema_validator, surely_valid
from ._permissions import PERMISSIONS, is_plugin_permission
from ._yaml import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES  # re-exported
from ._yaml import load_yaml

SUPPORTED_API_MAJOR = 1

_NAME_RE = r"^[a-z][a-z0-9_]{1,62}$"
_PROVIDED_RE = r"^[a-z][a-z0-9_]*_[a-z0-9_]+$"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG])i?B?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}

_NUMBER_TEXT = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def _number_text(value: Any) -> Any:
    """A number written as a string in the original design's style (`cpu_limit: "0.5"`) as that number."""
    if isinstance(value, str) and _NUMBER_TEXT.match(value):
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


#: A float that may also be written as a string holding a number, as the original design's manifests do.
Number = Annotated[float, BeforeValidator(_number_text)]
Seconds = Annotated[Number, Field(gt=0, le=86400)]
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    # defer_build: validators are built on first validation, so a process that only reads manifests from
    # the discovery cache (`from_validated`, e.g. `erp-plugins list`) never pays for building them
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class HookEntry(_Strict):
    """One manifest `hooks` entry: the plugin method that implements a contract hook."""

    name: str = Field(description="a contract hook name (see the hook reference), or a hook a plugin in "
                      "dependencies provides")
    method: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="the plugin class's method")]
    description: str = ""

    @field_validator("name")
    @classmethod
    def _known_hook(cls, value: str) -> str:
        # a name that is no core hook may be one a dependency provides: the catalog checks that
        if value not in HOOKS and not re.fullmatch(_PROVIDED_RE, value):
            raise ValueError(f"unknown hook {value!r}; allowed: {', '.join(HOOKS)}, or a hook a plugin in "
                             "dependencies provides (<plugin>_<name>)")
        return value


class ProvidedHook(_Strict):
    """One manifest `provides_hooks` entry: a hook this plugin defines, for other plugins to implement."""

    name: Annotated[str, Field(pattern=_PROVIDED_RE, description="the providing plugin's name, _, and a word")]
    description: str = Field("", description="what implementers do; shown in docs and `list`")
    arguments: dict[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")], str] = Field(
        default_factory=dict, description="argument name -> type: str, int, float, bool, dict or list, optionally "
        "with | None")
    returns: str = Field("None", description="the result's type, as for arguments, or None")
    permission: str | None = Field(None, description="the permission an implementer needs (a core one, or "
                                   "<provider>.<word> of the providing plugin)")
    firstresult: bool = Field(False, description="calls stop at the first plugin that answers (host.first "
                              "semantics)")

    @field_validator("arguments")
    @classmethod
    def _argument_types(cls, value: dict[str, str]) -> dict[str, str]:
        for arg, text in value.items():
            if keyword.iskeyword(arg) or arg == "self":
                raise ValueError(f"{arg}: a Python keyword (or self) cannot name an argument; choose another name")
            if not isinstance(text, str):
                raise ValueError(f"{arg}: type must be text such as str or int | None, got {type(text).__name__}")
            try:
                parse_type(text)
            except ValueError as exc:
                raise ValueError(f"{arg}: {exc}") from None
        return value

    @field_validator("returns")
    @classmethod
    def _returns(cls, value: str) -> str:
        if value != "None":
            parse_type(value)
        return value


class HealthCheck(_Strict):
    """How often the host checks the plugin's health, and how long one check may take (seconds)."""

    interval: Seconds = 60.0
    timeout: Seconds = 10.0
    endpoint: str | None = Field(
        None, description="the original design's health URL path (e.g. /health); recorded and shown, while the host "
        "always asks the plugin's health_check()")


class Resources(_Strict):
    """Limits the plugin runs under when sandboxed."""

    memory_limit: str = Field("512MB", description='memory cap such as "256MB" or "1GB"')
    cpu_limit: Annotated[Number, Field(gt=0, le=64)] = 1.0
    network_access: bool = False
    file_system_access: bool = False
    timeout: Seconds = Field(30.0, description="seconds one hook call may take")

    @field_validator("memory_limit")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def memory_bytes(self) -> int:
        """`memory_limit` in bytes."""
        return parse_size(self.memory_limit)


class Security(_Strict):
    """Whether the plugin is sandboxed, and what its sandbox allows."""

    sandbox: bool = True
    network_isolation: bool = True
    file_permissions: Literal["none", "read-only", "read-write"] = "none"


class Deliveries(_Strict):
    """How the host delivers this plugin's events and background jobs: in order or not, and how many tries."""

    ordered: bool = Field(
        True, description="within one tenant, run this plugin's deliveries one at a time in emit order (also across "
        "retries); false lets a later one run while an earlier one waits for its retry")
    max_attempts: int | None = Field(
        None, ge=1, le=100, description="runs of one delivery before it is kept as failed; unset: "
        "the host's ERP_PLUGINS_JOB_ATTEMPTS (default 5). Stored with each delivery, so a queued one keeps the limit "
        "it was queued with")


class Manifest(_Strict):
    """A validated plugin.yaml."""

    name: Annotated[str, Field(pattern=_NAME_RE, description="plugin name = entry point name")]
    version: str = Field(description="equal to the distribution's version")
    description: str = ""
    author: str = ""
    license: str = ""
    plugin_type: PluginType
    api_version: str = Field(description=f"plugin API version; this core accepts {SUPPORTED_API_MAJOR}.x")
    dependencies: list[str] = Field(default_factory=list, description="PEP 508 requirement strings")
    permissions: list[str] = Field(default_factory=list)
    config_schema: dict[str, Any] = Field(default_factory=dict, description="JSON Schema of the config")
    hooks: list[HookEntry] = Field(default_factory=list)
    provides_hooks: list[ProvidedHook] = Field(
        default_factory=list, description="hooks this plugin defines for other plugins (names start with its name + _)")
    main_file: str | None = Field(None, description="a folder plugin's module file, in its folder (e.g. plugin.py)")
    main_class: str | None = Field(
        None, description="the plugin class in main_file (in a distribution: the entry point's class)")
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    resources: Resources = Field(default_factory=Resources)
    security: Security = Field(default_factory=Security)
    deliveries: Deliveries = Field(
        default_factory=Deliveries, description="how the host delivers events and background jobs to this plugin")

    @field_validator("plugin_type", mode="before")
    @classmethod
    def _plugin_type(cls, value: Any) -> Any:
        # strict mode would refuse the plain string YAML gives; accept exactly the enum's values
        if isinstance(value, str) and value in PluginType._value2member_map_:
            return PluginType(value)
        raise ValueError(f"unknown plugin_type {value!r}; allowed: {', '.join(t.value for t in PluginType)}")

    @field_validator("main_file")
    @classmethod
    def _main_file(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\.py", value):
            raise ValueError(f"{value!r} is not a .py file name in the plugin's folder (e.g. plugin.py)")
        return value

    @field_validator("main_class")
    @classmethod
    def _main_class(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_IDENTIFIER, value):
            raise ValueError(f"{value!r} is not a Python class name")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError(f"{value!r} is not a PEP 440 version (e.g. \"1.2.0\")") from None
        return value

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)?", value):
            raise ValueError(f"{value!r} is not MAJOR.MINOR (e.g. \"1.0\")")
        if int(value.split(".")[0]) != SUPPORTED_API_MAJOR:
            raise ValueError(f"api_version {value} is not supported; this core accepts {SUPPORTED_API_MAJOR}.x")
        return value

    @field_validator("dependencies")
    @classmethod
    def _dependencies(cls, value: list[str]) -> list[str]:
        for i, text in enumerate(value):
            try:
                Requirement(text)
            except InvalidRequirement as exc:
                raise ValueError(f"[{i}] {text!r} is not a PEP 508 requirement: {str(exc).splitlines()[0]}") from None
        return value

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: list[str]) -> list[str]:
        for perm in value:
            if perm not in PERMISSIONS and not is_plugin_permission(perm):
                raise ValueError(f"unknown permission {perm!r}; allowed: {', '.join(PERMISSIONS)}, or "
                                 "<plugin>.<word> for a hook a plugin in dependencies provides")
        return value

    @model_validator(mode="after")
    def _provided(self) -> Manifest:
        seen: set[str] = set()
        for i, hook in enumerate(self.provides_hooks):
            where = f"provides_hooks.{i}.name"
            if not hook.name.startswith(self.name + "_"):
                raise ValueError(f"{where}: {hook.name!r} must start with the plugin's name and _ "
                                 f"({self.name}_...)")
            if hook.name in HOOKS:
                raise ValueError(f"{where}: {hook.name!r} clashes with the core hook of that name; choose another")
            if hook.name in seen:
                raise ValueError(f"{where}: {hook.name!r} is provided twice")
            seen.add(hook.name)
            perm = hook.permission
            if perm is not None and perm not in PERMISSIONS and not perm.startswith(self.name + "."):
                raise ValueError(f"provides_hooks.{i}.permission: {perm!r} is neither a core permission nor "
                                 f"{self.name}.<word>")
            if perm is not None and not is_plugin_permission(perm) and perm not in PERMISSIONS:
                raise ValueError(f"provides_hooks.{i}.permission: {perm!r} is not <plugin>.<word>")
        return self

    @field_validator("config_schema")
    @classmethod
    def _config_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        schema = normalize_schema(value)
        if surely_valid(schema):  # the usual case, proven without jsonschema (see `surely_valid`)
            return value
        # the first error, as jsonschema's check_schema reports it
        error = next(meta_schema_validator().iter_errors(schema), None)
        if error is not None:
            where = "/".join(str(p) for p in error.path) or "(top)"
            raise ValueError(f"not a valid JSON Schema at {where}: {error.message}")
        return value

    @classmethod
    def from_validated(cls, data: dict[str, Any]) -> Manifest:
        """Rebuild a manifest dumped by `model_dump(mode="json")` after validation, without re-validating.

        Used by the discovery cache, whose content this process validated when it wrote it.
        """
        return cls.model_construct(
            **{
                **data,
                "plugin_type": PluginType(data["plugin_type"]),
                "hooks": [HookEntry.model_construct(**h) for h in data["hooks"]],
                "provides_hooks": [ProvidedHook.model_construct(**h) for h in data.get("provides_hooks", [])],
                "health_check": HealthCheck.model_construct(**data["health_check"]),
                "resources": Resources.model_construct(**data["resources"]),
                "security": Security.model_construct(**data["security"]),
                "deliveries": Deliveries.model_construct(**data.get("deliveries", {})),  # caches written before it
            }
        )

    @property
    def requirements(self) -> list[Requirement]:
        """`dependencies` parsed."""
        return [Requirement(d) for d in self.dependencies]

    @property
    def schema(self) -> dict[str, Any]:
        """`config_schema` as standard JSON Schema (property-level `required`/`sensitive` folded out)."""
        return normalize_schema(self.config_schema)

    @property
    def sensitive_keys(self) -> frozenset[str]:
        """Config keys marked `sensitive: true`."""
        props = self.config_schema.get("properties", {})
        return frozenset(k for k, p in props.items() if isinstance(p, dict) and p.get("sensitive") is True)


def parse_size(text: str) -> int:
    """Bytes in a size such as "256MB", "1.5GB" or "512M"; ValueError naming the allowed form otherwise."""
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f'{text!r} is not a size; use a number with KB, MB or GB, e.g. "256MB"')
    value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if value < 16 * 1024**2:
        raise ValueError(f"{text!r} is below the 16MB a Python worker needs")
    return value


def normalize_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The original design's schema dialect as standard JSON Schema.

    A property may carry `required: true` (moved into the object's `required` list) and `sensitive: true`
    (an annotation the host uses for redaction; JSON Schema ignores it).
    """
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    required = list(schema.get("required", [])) if isinstance(schema.get("required", []), list) else schema["required"]
    new_props: dict[str, Any] = {}
    for key, prop in props.items():
        if isinstance(prop, dict) and isinstance(prop.get("required"), bool):
            prop = dict(prop)
            if prop.pop("required") and isinstance(required, list) and key not in required:
                required.append(key)
        new_props[key] = prop
    out = {**schema, "properties": new_props}
    if required:
        out["required"] = required
    return out


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at `loc` inside a Manifest (for "unknown field" messages)."""
    model: Any = Manifest
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)), annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top)"
    msg = " ".join(err["msg"].removeprefix("Value error, ").split())
    kind = err["type"]
    if not err["loc"] and kind == "value_error":  # a whole-manifest check names its own field
        return msg
    if kind == "extra_forbidden":
        return f"{loc}: unknown field; allowed here: {', '.join(_allowed_fields(err['loc'][:-1]))}"
    if kind == "string_pattern_mismatch" and loc == "name":
        return f"name: {err['input']!r} must be lowercase letters, digits and underscores, starting with a letter"
    if kind == "missing":
        return f"{loc}: required field is missing"
    if kind == "string_type":
        return f"{loc}: {msg}, got {type(err['input']).__name__} {err['input']!r} (quote it in YAML, e.g. \"1.0\")"
    if kind in {"int_type", "float_type", "bool_type", "list_type", "dict_type", "model_type"}:
        return f"{loc}: {msg}, got {type(err['input']).__name__}"
    return f"{loc}: {msg}"


def parse_manifest(data: Any, source: str) -> Manifest:
    """Validate already-parsed YAML as a Manifest; ManifestError listing every problem otherwise."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: manifest must be a mapping of fields, got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise ManifestError(f"{source}: {problems}") from None


def load_manifest(data: bytes | str, source: str) -> Manifest:
    """Read plugin.yaml text into a Manifest; every problem is a ManifestError naming `source` and the field."""
    return parse_manifest(load_yaml(data, source), source)
