"""The data-only UI components a `ui_components` hook returns, and the JSON Schema the core checks them with.

A plugin never sends HTML or script to the ERP's front end: it describes menu items, actions and panels as
data, and the ERP renders them. Each component is validated here; an invalid one fails that plugin's result
with a message naming the field, so a front end only ever sees components that passed.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

#: Where a link may point: a relative path (no scheme, not protocol-relative) or an http(s) URL.
URL_PATTERN = r"^(?:https?://[^\s<>\"'`]+|(?![A-Za-z][A-Za-z0-9+.\-]*:)(?!//)[^\s<>\"'`\\]*)$"
_TEXT = {"type": "string", "maxLength": 2000}
_SHORT = {"type": "string", "minLength": 1, "maxLength": 200}
_URL = {"type": "string", "maxLength": 2000, "pattern": URL_PATTERN}

#: The component schema the core ships (docs/hooks.md shows it).
COMPONENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "UI component",
    "type": "object",
    "required": ["kind", "id", "title"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["menu_item", "action", "panel"]},
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9_.:\-]{1,128}$"},
        "title": _SHORT,
        "description": _TEXT,
        "icon": {"type": "string", "pattern": r"^[a-z0-9\-]{1,64}$"},
        "order": {"type": "integer"},
        "url": _URL,
        "event": {"type": "string", "pattern": r"^[A-Za-z0-9_.:\-]{1,128}$"},
        "confirm": _TEXT,
        "items": {
            "type": "array",
            "maxItems": 200,
            "items": {
                "type": "object",
                "required": ["label"],
                "additionalProperties": False,
                "properties": {
                    "label": _SHORT,
                    "value": {"type": ["string", "number", "boolean", "null"]},
                    "url": _URL,
                },
            },
        },
    },
    "allOf": [
        {"if": {"properties": {"kind": {"const": "menu_item"}}}, "then": {"required": ["url"]}},
        {"if": {"properties": {"kind": {"const": "action"}}},
         "then": {"anyOf": [{"required": ["url"]}, {"required": ["event"]}]}},
    ],
}

#: Markup that has no place in data: an HTML tag (or comment) or a script URL, anywhere in a string.
_MARKUP = re.compile(r"<\s*[A-Za-z!/?]|javascript\s*:|vbscript\s*:|data\s*:\s*text/html", re.IGNORECASE)
MAX_COMPONENTS = 200


@functools.cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(COMPONENT_SCHEMA)


def _where(index: int, path: Any) -> str:
    return f"[{index}]" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _markup(node: Any, path: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], str] | None:
    if isinstance(node, str):
        return (path, node) if _MARKUP.search(node) else None
    if isinstance(node, dict):
        for key, value in node.items():
            found = _markup(value, (*path, key))
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _markup(value, (*path, i))
            if found:
                return found
    return None


def component_problem(result: Any) -> str | None:
    """Why `result` is not a valid `ui_components` answer (naming the field), or None when it is."""
    if not isinstance(result, list):
        return f"ui_components must return a list of components, got {type(result).__name__}"
    if len(result) > MAX_COMPONENTS:
        return f"ui_components returned {len(result)} components; at most {MAX_COMPONENTS} are allowed"
    for i, component in enumerate(result):
        if not isinstance(component, dict):
            return f"ui_components component [{i}] must be an object, got {type(component).__name__}"
        found = _markup(component)
        if found is not None:
            path, text = found
            return (f"ui_components component {_where(i, path)}: {_short(text)} contains HTML or a script URL; "
                    "components are data only (plain text, relative paths or http(s) URLs)")
        error = next(iter(sorted(_validator().iter_errors(component), key=lambda e: list(e.path))), None)
        if error is not None:
            field = _where(i, error.path)
            if error.validator == "pattern" and error.path and error.path[-1] == "url":
                why = f"{_short(error.instance)} is not a relative path or an http(s) URL"
            elif error.validator == "additionalProperties":
                allowed = ", ".join(sorted(error.schema.get("properties", {})))
                why = f"{error.message}; allowed: {allowed}"
            elif error.validator in {"anyOf", "allOf"} and component.get("kind") == "action":
                why = "an action needs url or event"
            else:
                why = error.message
            return f"ui_components component {field}: {why}"
    return None
