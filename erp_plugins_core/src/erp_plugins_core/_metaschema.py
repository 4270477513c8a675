"""The JSON Schema 2020-12 meta-schema as one static schema, for checking manifests' `config_schema` quickly."""

from __future__ import annotations

import functools
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
