"""The JSON Schema 2020-12 meta-schema as one static schema, for checking manifests' `config_schema` quickly, and
`surely_valid`, which proves the common schemas valid without jsonschema (imported only when it must answer)."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

_META_BASE = "https://json-schema.org/draft/2020-12/"


def _static_refs(node: Any) -> Any:
    """`node` with `$dynamicRef: "#meta"` as `$ref: "#"` and vocabulary `$defs` references made local."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$dynamicRef" and value == "#meta":
                out["$ref"] = "#"
            elif key == "$ref" and isinstance(value, str) and "#/$defs/" in value:
                out["$ref"] = "#/$defs/" + value.split("#/$defs/", 1)[1]
            else:
                out[key] = _static_refs(value)
        return out
    if isinstance(node, list):
        return [_static_refs(v) for v in node]
    return node


@functools.cache
def meta_schema_validator() -> Draft202012Validator:
    """A validator of JSON Schemas against the 2020-12 meta-schema, flattened into one static schema.

    `Draft202012Validator.check_schema` resolves the meta-schema's `$dynamicRef`s on every keyword of every
    schema (milliseconds per manifest); merging the vocabulary meta-schemas into one and pointing `#meta` at
    its root asks the same questions of a schema, and reports the same errors, without dynamic scopes.
    """
    from jsonschema import Draft202012Validator
    from jsonschema_specifications import REGISTRY

    meta = Draft202012Validator.META_SCHEMA
    properties: dict[str, Any] = {}
    defs: dict[str, Any] = {}
    for part in meta["allOf"]:
        vocabulary = REGISTRY.contents(_META_BASE + part["$ref"])
        properties.update(vocabulary.get("properties", {}))
        defs.update(vocabulary.get("$defs", {}))
    properties.update(meta.get("properties", {}))
    flat = {"$schema": _META_BASE + "schema", "type": ["object", "boolean"], "properties": properties,
            "$defs": defs}
    return Draft202012Validator(_static_refs(flat), format_checker=Draft202012Validator.FORMAT_CHECKER)


# --- A proof of validity for the common schemas, without jsonschema ------------------------------------------
# Each 2020-12 meta-schema keyword by the shape of value it allows (test_metaschema checks these sets against
# the meta-schema jsonschema ships: every keyword classified, each class's entry as assumed here). A keyword the
# meta-schema does not name may hold any value.
_ANY = frozenset({"default", "const"})  # meta-schema `true`
_TEXT = frozenset({"$comment", "title", "description", "format", "contentEncoding", "contentMediaType"})
_FLAG = frozenset({"uniqueItems", "deprecated", "readOnly", "writeOnly"})
_NUMBER = frozenset({"maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"})
_COUNT = frozenset({"maxLength", "minLength", "maxItems", "minItems", "maxContains", "minContains", "maxProperties",
                    "minProperties"})  # non-negative integers
_ARRAY = frozenset({"enum", "examples"})  # arrays of anything
_SUBSCHEMA = frozenset({"items", "contains", "additionalProperties", "propertyNames", "if", "then", "else", "not",
                        "unevaluatedItems", "unevaluatedProperties", "contentSchema"})
_SCHEMA_MAP = frozenset({"properties", "$defs", "dependentSchemas", "definitions"})  # name -> schema
_SCHEMA_LIST = frozenset({"prefixItems", "allOf", "anyOf", "oneOf"})  # non-empty arrays of schemas
_OWN = frozenset({"type", "multipleOf", "pattern", "patternProperties", "required", "dependentRequired"})
#: URIs, anchors, vocabularies and the old `dependencies`: `surely_valid` leaves them to jsonschema
_DEFERRED = frozenset({"$id", "$schema", "$ref", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary",
                       "dependencies", "$recursiveAnchor", "$recursiveRef"})
_KEYWORDS = (_ANY | _TEXT | _FLAG | _NUMBER | _COUNT | _ARRAY | _SUBSCHEMA | _SCHEMA_MAP | _SCHEMA_LIST | _OWN
             | _DEFERRED)
_SIMPLE_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(value: Any) -> bool:
    """A meta-schema `stringArray`: an array of distinct strings."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value) and len(set(value)) == len(value)


def _regex(value: Any) -> bool:
    """The meta-schema's `format: regex` as jsonschema checks it (`re.compile`); anything odd is left to it."""
    try:
        re.compile(value)
    except Exception:
        return False
    return True


def surely_valid(schema: Any, depth: int = 0) -> bool:
    """True only when `schema` is a valid JSON Schema under `meta_schema_validator()` (no error at all).

    False means "not proven": `schema` may be invalid, or use a keyword this check leaves to jsonschema (a `$ref`,
    an `$id`, an integer written as 1.0, a key that is no string...); the caller then asks jsonschema, which says
    what is wrong exactly as before. Manifests' schemas are nearly always valid and made of the plain keywords
    handled here, so a cold `list` need not import jsonschema nor walk its validator per manifest.
    """
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or depth > 64:
        return False
    for key, value in schema.items():
        if not isinstance(key, str):
            return False
        if key not in _KEYWORDS or key in _ANY:
            continue
        if key in _TEXT:
            ok = isinstance(value, str)
        elif key in _SUBSCHEMA:
            ok = surely_valid(value, depth + 1)
        elif key in _SCHEMA_MAP:
            ok = isinstance(value, dict) and all(isinstance(k, str) and surely_valid(v, depth + 1)
                                                 for k, v in value.items())
        elif key in _NUMBER:
            ok = _number(value)
        elif key in _COUNT:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif key in _FLAG:
            ok = isinstance(value, bool)
        elif key in _ARRAY:
            ok = isinstance(value, list)
        elif key in _SCHEMA_LIST:
            ok = isinstance(value, list) and len(value) > 0 and all(surely_valid(v, depth + 1) for v in value)
        elif key == "type":
            ok = (isinstance(value, str) and value in _SIMPLE_TYPES) or (
                isinstance(value, list) and len(value) > 0 and _names(value) and _SIMPLE_TYPES.issuperset(value))
        elif key == "required":
            ok = _names(value)
        elif key == "pattern":
            ok = isinstance(value, str) and _regex(value)
        elif key == "multipleOf":
            ok = _number(value) and value > 0
        elif key == "patternProperties":
            ok = isinstance(value, dict) and all(isinstance(k, str) and _regex(k) and surely_valid(v, depth + 1)
                                                 for k, v in value.items())
        elif key == "dependentRequired":
            ok = isinstance(value, dict) and all(isinstance(k, str) and _names(v) for k, v in value.items())
        else:  # _DEFERRED
            ok = False
        if not ok:
            return False
    return True
