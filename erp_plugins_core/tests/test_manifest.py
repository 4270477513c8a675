"""The manifest model and its bounded YAML loader."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erp_plugins_core._errors import ManifestError
from erp_plugins_core._manifest import MAX_MANIFEST_BYTES, load_manifest, parse_size

GOOD = """
name: invoice_tools
version: "1.2.0"
description: Invoice helpers
plugin_type: business_logic
api_version: "1.0"
dependencies: ["other_plugin>=1.0", "requests>=2"]
permissions: [ai.generate, events.emit]
config_schema:
  type: object
  properties:
    api_key: {type: string, required: true, sensitive: true}
    retries: {type: integer, default: 3}
hooks:
  - {name: ai_request, method: answer, description: answers}
health_check: {interval: 30, timeout: 5}
resources: {memory_limit: 256MB, cpu_limit: 0.5, network_access: true, timeout: 12}
security: {sandbox: true, network_isolation: false, file_permissions: read-only}
"""


def fail(text: str) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(text, "pkg/plugin.yaml")
    message = str(info.value)
    assert message.startswith("pkg/plugin.yaml: ")
    assert "\n" not in message
    return message


def test_full_manifest_is_read_with_every_field() -> None:
    m = load_manifest(GOOD, "x")
    assert m.name == "invoice_tools" and m.version == "1.2.0"
    assert m.plugin_type.value == "business_logic"
    assert [r.name for r in m.requirements] == ["other_plugin", "requests"]
    assert m.hooks[0].name == "ai_request" and m.hooks[0].method == "answer"
    assert m.health_check.interval == 30 and m.health_check.timeout == 5
    assert m.resources.memory_bytes == 256 * 1024**2 and m.resources.cpu_limit == 0.5
    assert m.resources.timeout == 12 and m.resources.network_access is True
    assert m.security.file_permissions == "read-only" and m.security.network_isolation is False
    assert m.sensitive_keys == {"api_key"}
    assert m.schema["required"] == ["api_key"]
    assert "required" not in m.schema["properties"]["api_key"]


def test_defaults_follow_the_contract() -> None:
    m = load_manifest('name: ab\nversion: "1"\nplugin_type: workflow\napi_version: "1.3"\n', "x")
    assert m.description == "" and m.dependencies == [] and m.permissions == [] and m.hooks == []
    assert m.config_schema == {}
    assert (m.health_check.interval, m.health_check.timeout) == (60, 10)
    assert m.resources.memory_limit == "512MB" and m.resources.cpu_limit == 1.0
    assert m.resources.network_access is False and m.resources.file_system_access is False
    assert m.resources.timeout == 30
    assert m.security.sandbox is True and m.security.network_isolation is True
    assert m.security.file_permissions == "none"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("bogus: 1", "bogus: unknown field; allowed here: name, version"),
        ("resources: {memory: 1}", "resources.memory: unknown field; allowed here: memory_limit"),
        ("plugin_type: robot", "plugin_type: unknown plugin_type 'robot'; allowed: ai_provider"),
        ("hooks: [{name: MakeCoffee, method: m}]", "hooks.0.name: Value error, unknown hook 'MakeCoffee'"),
        ("permissions: [ai.everything]", "unknown permission 'ai.everything'; allowed: ai.generate"),
        ("dependencies: ['not a requirement!!']", "is not a PEP 508 requirement"),
        ("resources: {memory_limit: lots}", "memory_limit: Value error, 'lots' is not a size"),
        ("resources: {cpu_limit: -1}", "resources.cpu_limit: Input should be greater than 0"),
        ("resources: {timeout: fast}", "resources.timeout: Input should be a valid number"),
        ("security: {file_permissions: everything}", "security.file_permissions: Input should be 'none'"),
        ("security: {sandbox: 'yes'}", "security.sandbox: Input should be a valid boolean"),
        ("config_schema: {type: banana}", "config_schema: Value error, not a valid JSON Schema"),
        ("health_check: {interval: 0}", "health_check.interval: Input should be greater than 0"),
    ],
)
def test_bad_fields_name_file_field_and_allowed_values(change: str, expected: str) -> None:
    base = 'name: ab\nversion: "1.0"\nplugin_type: workflow\napi_version: "1.0"\n'
    key = change.split(":")[0]
    lines = [line for line in base.splitlines() if not line.startswith(key + ":")]
    message = fail("\n".join(lines) + "\n" + change + "\n")
    assert expected.replace("Value error, ", "") in message


def test_unquoted_version_gets_a_hint_to_quote_it() -> None:
    message = fail("name: ab\nversion: 1.0\nplugin_type: workflow\napi_version: 1.0\n")
    assert "version: Input should be a valid string, got float 1.0 (quote it in YAML" in message
    assert "api_version" in message


def test_api_version_gate_accepts_only_1x() -> None:
    fail_msg = fail('name: ab\nversion: "1"\nplugin_type: workflow\napi_version: "2.0"\n')
    assert "api_version 2.0 is not supported; this core accepts 1.x" in fail_msg
    assert load_manifest('name: ab\nversion: "1"\nplugin_type: workflow\napi_version: "1.9"\n', "x")


def test_missing_required_fields_are_named() -> None:
    message = fail("description: nothing else\n")
    for field in ("name", "version", "plugin_type", "api_version"):
        assert f"{field}: required field is missing" in message


def test_bad_plugin_name_says_what_is_allowed() -> None:
    assert "must be lowercase letters, digits and underscores" in fail(
        'name: Bad-Name\nversion: "1"\nplugin_type: workflow\napi_version: "1.0"\n'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "manifest is empty"),
        ("- a\n- b\n", "manifest must be a mapping"),
        ("name: a\nname: b\n", "duplicate key 'name'"),
        ("a: &x [*x]\n", "recursive YAML alias"),
        ("a: [1, 2\n", "invalid YAML (line"),
        ("---\na: 1\n---\nb: 2\n", "invalid YAML"),
        ("a: !!python/object:os.system x\n", "invalid YAML"),
        ("[" * 200 + "]" * 200, "nested deeper than"),
    ],
)
def test_malformed_yaml_is_a_manifest_error(text: str, expected: str) -> None:
    assert expected in fail(text)


def test_not_utf8_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(b"name: \xff\xfe", "p")


def test_oversized_manifest_is_rejected_before_parsing() -> None:
    text = "description: " + "x" * MAX_MANIFEST_BYTES
    start = time.perf_counter()
    assert "larger than the 1 MiB allowed" in fail(text)
    assert time.perf_counter() - start < 5  # generous: it must not parse 1 MiB of YAML first


def test_billion_laughs_is_rejected_fast_without_memory_growth() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    bomb = "\n".join(lines) + "\n"
    tracemalloc.start()
    try:
        message = fail(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "alias bomb" in message
    assert peak < 20 * 1024**2  # 10**12 nodes expanded would need terabytes


def test_parse_size_units() -> None:
    assert parse_size("1GB") == 1024**3 and parse_size("1.5G") == int(1.5 * 1024**3)
    assert parse_size("64MiB") == 64 * 1024**2
    with pytest.raises(ValueError, match="below the 16MB"):
        parse_size("1MB")


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), yaml_values.map(lambda v: yaml.safe_dump(v))))
def test_arbitrary_yaml_only_ever_raises_manifest_error(text: str) -> None:
    try:
        load_manifest(text, "fuzz.yaml")
    except ManifestError as exc:
        assert str(exc).startswith("fuzz.yaml: ")


fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=8), st.integers(), st.just("ok_name")),
        "version": st.one_of(st.text(max_size=5), st.floats(), st.just("1.0")),
        "plugin_type": st.one_of(st.text(max_size=8), st.just("workflow")),
        "api_version": st.one_of(st.text(max_size=4), st.just("1.0"), st.integers()),
        "hooks": yaml_values,
        "resources": yaml_values,
        "security": yaml_values,
        "config_schema": yaml_values,
        "dependencies": yaml_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(fields)
def test_arbitrary_field_values_only_ever_raise_manifest_error(data: dict) -> None:
    try:
        load_manifest(yaml.safe_dump(data), "fuzz.yaml")
    except ManifestError:
        pass


# --- config_schema is checked against a flattened copy of the 2020-12 meta-schema ------------------------

_SCHEMA_KEYS = [
    "type", "properties", "items", "required", "minimum", "maximum", "pattern", "enum", "additionalProperties",
    "anyOf", "allOf", "oneOf", "not", "$ref", "$defs", "minLength", "format", "default", "const", "prefixItems",
    "dependentRequired", "dependentSchemas", "if", "then", "else", "unevaluatedProperties", "contains",
    "minItems", "uniqueItems", "$id", "$anchor", "description", "definitions", "dependencies", "contentSchema",
    "propertyNames", "patternProperties", "$dynamicRef", "$comment", "deprecated", "examples", "multipleOf",
    "exclusiveMinimum", "$vocabulary", "x-custom", "a",
]
_schema_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.sampled_from(["string", "object", "integer", "#", "#/$defs/a", "(", "a+", "uri", "nope", "http://x/y"]),
)
schemas = st.recursive(
    _schema_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(_SCHEMA_KEYS), children,
                                                                      max_size=4),
    max_leaves=12,
)


def _first_error(errors) -> tuple[str, list] | None:
    error = next(iter(errors), None)
    return None if error is None else (error.message, list(error.path))


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(schemas)
def test_flattened_meta_schema_agrees_with_check_schema(schema) -> None:
    from jsonschema import Draft202012Validator

    from erp_plugins_core._manifest import meta_schema_validator

    reference = Draft202012Validator(Draft202012Validator.META_SCHEMA,
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert _first_error(meta_schema_validator().iter_errors(schema)) == _first_error(reference.iter_errors(schema))


def test_config_schema_error_names_the_place_and_the_problem() -> None:
    base = 'name: ab\nversion: "1.0"\nplugin_type: workflow\napi_version: "1.0"\n'
    message = fail(base + "config_schema: {type: object, properties: {n: {type: integer, minimum: low}}}\n")
    assert "not a valid JSON Schema at properties/n/minimum: 'low' is not of type 'number'" in message
