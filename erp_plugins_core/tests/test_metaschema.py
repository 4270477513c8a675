"""`surely_valid`: the proof that a manifest's `config_schema` is valid without jsonschema, against jsonschema itself.

A schema it proves valid must be one jsonschema finds no error in; anything else goes to jsonschema, whose first
error the manifest reports as before. Its keyword classes are checked against the meta-schema jsonschema ships.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erp_plugins_core import _metaschema as ms
from erp_plugins_core._errors import ManifestError
from erp_plugins_core._manifest import load_manifest, normalize_schema

REPO = Path(__file__).resolve().parents[2]
BASE = 'name: ab\nversion: "1.0"\nplugin_type: workflow\napi_version: "1.0"\n'


def _reference():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _first_error(schema) -> tuple[str, list] | None:
    error = next(iter(ms.meta_schema_validator().iter_errors(schema)), None)
    return None if error is None else (error.message, list(error.path))


# --- The keyword classes are the meta-schema's ------------------------------------------------------------------


def test_every_meta_schema_keyword_is_classified_once_as_the_meta_schema_defines_it() -> None:
    flat = ms.meta_schema_validator().schema
    assert set(flat) == {"$schema", "type", "properties", "$defs"}  # nothing else applies to a schema's keys
    props, defs = flat["properties"], flat["$defs"]
    classes = [ms._ANY, ms._TEXT, ms._FLAG, ms._NUMBER, ms._COUNT, ms._ARRAY, ms._SUBSCHEMA, ms._SCHEMA_MAP,
               ms._SCHEMA_LIST, ms._OWN, ms._DEFERRED]
    assert sum(len(c) for c in classes) == len(ms._KEYWORDS)  # no keyword in two classes
    assert ms._KEYWORDS == set(props)  # every keyword classified: any other key may hold anything

    def plain(entry: dict) -> dict:  # an entry without its annotations
        return {k: v for k, v in entry.items() if k not in {"default", "$comment", "deprecated"}}

    def count(entry: dict) -> dict:
        ref = entry["$ref"].rsplit("/", 1)[1]
        target = plain(defs[ref])
        return count(target) if "$ref" in target else target

    for key in ms._ANY:
        assert props[key] is True
    for key in ms._TEXT:
        assert props[key] == {"type": "string"}
    for key in ms._FLAG:
        assert plain(props[key]) == {"type": "boolean"}
    for key in ms._NUMBER:
        assert props[key] == {"type": "number"}
    for key in ms._COUNT:
        assert count(plain(props[key])) == {"type": "integer", "minimum": 0}
    for key in ms._ARRAY:
        assert props[key] == {"type": "array", "items": True}
    for key in ms._SUBSCHEMA:
        assert props[key] == {"$ref": "#"}
    for key in ms._SCHEMA_MAP:
        assert plain(props[key]) == {"type": "object", "additionalProperties": {"$ref": "#"}}
    for key in ms._SCHEMA_LIST:
        assert props[key] == {"$ref": "#/$defs/schemaArray"}
    assert defs["schemaArray"] == {"type": "array", "minItems": 1, "items": {"$ref": "#"}}
    # the keywords checked one by one in surely_valid
    assert defs["simpleTypes"] == {"enum": sorted(ms._SIMPLE_TYPES)}
    assert props["type"] == {"anyOf": [{"$ref": "#/$defs/simpleTypes"}, {
        "type": "array", "items": {"$ref": "#/$defs/simpleTypes"}, "minItems": 1, "uniqueItems": True}]}
    assert props["multipleOf"] == {"type": "number", "exclusiveMinimum": 0}
    assert props["pattern"] == {"type": "string", "format": "regex"}
    assert plain(props["patternProperties"]) == {"type": "object", "additionalProperties": {"$ref": "#"},
                                                 "propertyNames": {"format": "regex"}}
    assert props["required"] == {"$ref": "#/$defs/stringArray"}
    assert props["dependentRequired"] == {"type": "object", "additionalProperties": {"$ref": "#/$defs/stringArray"}}
    assert plain(defs["stringArray"]) == {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    # `format: regex` is checked with Python's re, as surely_valid does (not an ECMA 262 engine)
    checker = ms.meta_schema_validator().format_checker
    assert checker.conforms("(?P<x>a)", "regex") and checker.conforms("^a+$", "regex")
    assert not checker.conforms("(", "regex") and not checker.conforms("\\p{L}", "regex")


# --- Proven valid means valid ----------------------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "api_key", "default", "type", "properties", "1"])
_any = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, width=16), st.text(max_size=3),
                 st.lists(st.integers(0, 2), max_size=2), st.dictionaries(_names, st.integers(0, 2), max_size=2))
_type_names = st.sampled_from(["string", "object", "integer", "number", "boolean", "null", "array", "banana", ""])
_regexes = st.sampled_from(["^a+$", "(", "[a-z]", "\\d{2,}", "a{2", "(?P<x>a)", "*", "\\p{L}"])
_counts = st.one_of(st.integers(-1, 3), st.sampled_from([1.0, 2.5, True, "1"]))
_numbers = st.one_of(st.integers(-2, 2), st.floats(width=16), st.sampled_from([True, "0", None]))


def _keywords(children: st.SearchStrategy) -> st.SearchStrategy:
    """Schemas whose keywords mostly hold what the meta-schema allows, and sometimes what it refuses."""
    schema_or_junk = st.one_of(children, children, _any)
    return st.fixed_dictionaries({}, optional={
        "type": st.one_of(_type_names, st.lists(_type_names, max_size=3), _any),
        "properties": st.one_of(st.dictionaries(_names, schema_or_junk, max_size=3), _any),
        "required": st.one_of(st.lists(st.one_of(_names, st.integers(0, 1)), max_size=3), _any),
        "additionalProperties": schema_or_junk, "items": schema_or_junk, "not": schema_or_junk,
        "anyOf": st.one_of(st.lists(schema_or_junk, max_size=2), _any),
        "prefixItems": st.lists(schema_or_junk, max_size=2),
        "$defs": st.dictionaries(_names, schema_or_junk, max_size=2),
        "patternProperties": st.dictionaries(_regexes, schema_or_junk, max_size=2),
        "dependentRequired": st.dictionaries(_names, st.one_of(st.lists(_names, max_size=2), _any), max_size=2),
        "minimum": _numbers, "exclusiveMaximum": _numbers, "multipleOf": _numbers,
        "minLength": _counts, "maxItems": _counts, "minProperties": _counts,
        "pattern": st.one_of(_regexes, _any), "format": st.one_of(st.sampled_from(["email", "uri"]), _any),
        "enum": st.one_of(st.lists(_any, max_size=3), _any), "examples": _any,
        "default": _any, "const": _any, "description": st.one_of(st.text(max_size=4), _any), "title": _any,
        "uniqueItems": _any, "deprecated": _any, "$comment": _any,
        "$ref": st.sampled_from(["#", "#/$defs/a", 5]), "$id": st.sampled_from(["http://x/y", "#a", 1]),
        "dependencies": _any, "sensitive": _any, "x-custom": _any,
    })


schemas = st.recursive(st.one_of(st.booleans(), st.just({})), _keywords, max_leaves=8)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(schemas)
def test_a_schema_proven_valid_has_no_error_in_jsonschema(schema) -> None:
    if ms.surely_valid(schema):
        assert _first_error(schema) is None
        assert next(iter(_reference().iter_errors(schema)), None) is None


def test_the_strategy_reaches_both_answers() -> None:
    """The property above is not vacuous: the schemas drawn are proven valid often, and refused often."""
    seen = {True: 0, False: 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(schemas)
    def draw(schema) -> None:
        seen[ms.surely_valid(schema)] += 1

    draw()
    assert seen[True] > 30 and seen[False] > 30, seen


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": "low"}}},  # a wrong value
    {"type": "objekt"},
    {"type": ["string", "string"]},
    {"required": ["a", "a"]},
    {"pattern": "("},  # not a regex
    {"patternProperties": {"(": {}}},
    {"minLength": -1},
    {"multipleOf": 0},
    {"anyOf": []},
    {"properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"type": "string"}}},  # valid, left to jsonschema
    {"$id": "http://example.com/s", "type": "object"},
    {"minItems": 1.0},  # an integer written as a float: valid, left to jsonschema
    {"properties": {"a": {1: "x"}}},  # a key that is no string
])
def test_what_is_not_proven_is_left_to_jsonschema_with_its_error(schema) -> None:
    assert not ms.surely_valid(schema)
    text = BASE + yaml.safe_dump({"config_schema": schema})
    expected = _first_error(schema)
    if expected is None:
        assert load_manifest(text, "p.yaml").config_schema == schema
    else:
        with pytest.raises(ManifestError) as info:
            load_manifest(text, "p.yaml")
        message, path = expected
        assert f"not a valid JSON Schema at {'/'.join(map(str, path)) or '(top)'}: {message}" in str(info.value)


def test_the_manifests_shipped_and_the_benchmarks_are_proven_valid() -> None:
    """The fast path is the one real manifests take (a cold `list` of them needs no jsonschema)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from _synthetic import MANIFEST
    finally:
        sys.path.remove(str(REPO / "bench"))
    texts = [p.read_text() for p in REPO.glob("erp_plugin_*/src/erp_plugin_*/plugin.yaml")]
    assert len(texts) == 3
    texts.append(MANIFEST.format(name="bench_000", version="1.0.0", index=0, sandbox="true"))
    for text in texts:
        schema = normalize_schema(load_manifest(text, "p.yaml").config_schema)
        assert schema and ms.surely_valid(schema), schema


def test_a_cold_list_of_valid_plugins_does_not_import_jsonschema_and_an_invalid_one_is_said(
        site, manifest_text, tmp_path) -> None:
    good = manifest_text("good", extra="config_schema: {type: object, properties: {k: {type: string, "
                                       "sensitive: true, required: true}}}\n")
    site.install("erp-good", plugins={"good": (good, "class Plugin: pass\n")})
    code = ("import sys\nfrom erp_plugins_core.__main__ import main\n"
            "try:\n    main(['list'])\nfinally:\n    print('jsonschema' in sys.modules, file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(site.root), "ERP_PLUGINS_CACHE_DIR": str(tmp_path / "cache-1"),
           "ERP_PLUGINS_STATE": str(tmp_path / "state.db")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "good 1.0.0" in proc.stdout and " ok" in proc.stdout, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "False"

    bad = manifest_text("bad", extra="config_schema: {type: object, properties: {k: {type: string, minLength: -1}}}\n")
    site.install("erp-bad", plugins={"bad": (bad, "class Plugin: pass\n")})
    env["ERP_PLUGINS_CACHE_DIR"] = str(tmp_path / "cache-2")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr.strip().splitlines()[-1] == "True"
    assert "bad 1.0.0" in proc.stdout and "INVALID" in proc.stdout
    assert "not a valid JSON Schema at properties/k/minLength: -1 is less than the minimum of 0" in proc.stdout
