"""Generates the manifest reference from the pydantic Manifest model and the hook reference from the hookspecs.

Generated, so the docs cannot drift from the code: `python -m erp_plugins_core._docgen` (from the repository
root) writes `docs/manifest.md` and `docs/hooks.md`; `--check` exits 1 when either is stale. Descriptions come
from the model's `Field(description=...)`; a field without one, and the rules enforced by custom validators
(which a model cannot state), are described in `FIELD_NOTES` and `VALIDATOR_RULES` here.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ._hookspecs import HOOKS, HookSpecs
from ._manifest import MAX_MANIFEST_BYTES, SUPPORTED_API_MAJOR, Manifest
from ._permissions import PERMISSIONS, SERVICE_PERMISSIONS

REGENERATE = "python -m erp_plugins_core._docgen"

#: Descriptions of fields whose model gives none, keyed by (model name, field name).
FIELD_NOTES: dict[tuple[str, str], str] = {
    ("Manifest", "description"): "one line saying what the plugin does",
    ("Manifest", "author"): "who wrote the plugin",
    ("Manifest", "license"): "the plugin's license (an SPDX identifier such as MIT)",
    ("Manifest", "plugin_type"): "what kind of plugin this is",
    ("Manifest", "permissions"): "permissions the plugin asks for; every hook listed needs its permission here",
    ("Manifest", "hooks"): "which contract hooks the plugin implements, and with which method",
    ("Manifest", "health_check"): "how the host checks the plugin's health",
    ("Manifest", "resources"): "limits the plugin runs under when sandboxed",
    ("Manifest", "security"): "whether the plugin is sandboxed, and what its sandbox allows",
    ("HookEntry", "description"): "what the method does (shown to administrators)",
    ("HealthCheck", "interval"): "seconds between two health checks",
    ("HealthCheck", "timeout"): "seconds one health check may take",
    ("Resources", "cpu_limit"): "CPU the worker may use, in cores (the sandbox turns it into a CPU-time budget)",
    ("Resources", "network_access"): "whether the sandboxed plugin may open network connections",
    ("Resources", "file_system_access"): "declares that the plugin works with files; the folder it gets is set by "
    "`security.file_permissions`",
    ("Security", "sandbox"): "run out of the host's process under the limits; false asks to run in the host "
    "process, which `enable` refuses without `--trust`",
    ("Security", "network_isolation"): "keep the worker in its own network namespace; only "
    "`resources.network_access: true` gives it the network",
    ("Security", "file_permissions"): "`read-only` or `read-write` gives the sandboxed plugin a private data folder "
    "per tenant at `/data`; with `none` only a private `/tmp` is writable",
}

#: Rules that custom validators enforce, keyed by (model name, field name). A test fails when a validator has none.
VALIDATOR_RULES: dict[tuple[str, str], str] = {
    ("Manifest", "plugin_type"): "one of the values listed",
    ("Manifest", "version"): "a PEP 440 version (quote it: `\"1.2.0\"`), equal to the distribution's version",
    ("Manifest", "api_version"): f"`MAJOR.MINOR` as text; this core accepts `{SUPPORTED_API_MAJOR}.x`",
    ("Manifest", "dependencies"): "PEP 508 strings; a name that is another plugin is a plugin dependency "
    "(activated first, its version compared with that plugin's manifest version); any other name is a "
    "distribution that must be installed at a matching version",
    ("Manifest", "permissions"): "each one of: " + ", ".join(f"`{p}`" for p in PERMISSIONS) + ", or "
    "`<plugin>.<word>` that a plugin in `dependencies` gives a hook it provides",
    ("Manifest", "config_schema"): "a JSON Schema (Draft 2020-12); a property may carry `required: true` and "
    "`sensitive: true` (stored encrypted, redacted everywhere); a string property with `format: file-path` holds an "
    "absolute host path (or the content itself), which the host reads at start for a sandboxed plugin",
    ("HookEntry", "name"): "one of: " + ", ".join(f"`{h}`" for h in HOOKS) + ", or a hook a plugin in "
    "`dependencies` provides (`provides_hooks`)",
    ("Manifest", "main_file"): "a `.py` file name; a folder plugin's module, in its folder; in a distribution it "
    "must name the entry point's module",
    ("Manifest", "main_class"): "a Python class name; in a distribution it must be the entry point's class",
    ("ProvidedHook", "arguments"): "each type one of `str`, `int`, `float`, `bool`, `dict`, `list`, optionally "
    "with `| None` (then the argument may be omitted); callers' arguments are checked against them",
    ("ProvidedHook", "returns"): "`None`, or a type as for arguments; a result of another type fails that plugin",
    ("Resources", "memory_limit"): "a size with KB, MB or GB (e.g. `\"256MB\"`, `\"1GB\"`), at least 16MB",
}

def _collect_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every model its fields use, depth first, each once."""
    out: list[type[BaseModel]] = [model]
    for info in model.model_fields.values():
        for sub in _models_in(info.annotation):
            if sub not in out:
                out.extend(m for m in _collect_models(sub) if m not in out)
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_text(annotation: Any) -> str:
    """A YAML reader's name for a field type."""
    origin = typing.get_origin(annotation)
    if annotation is str:
        return "text"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if annotation is float:
        return "number"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "text"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping ([{annotation.__name__}](#{annotation.__name__.lower()}))"
    if origin is Literal:
        return "text"
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {_type_text(item)}"
    if origin is dict:
        return "mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return str(annotation)


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _yaml_value(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, BaseModel):
        return "see below"
    if value == [] or value == {}:
        return "`[]`" if value == [] else "`{}`"
    return str(value)


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is PydanticUndefined:
        return ""
    text = _yaml_value(value)
    return text if text.startswith("`") or text == "see below" else f"`{text}`"


def _allowed_text(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    parts: list[str] = []
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        parts.append(", ".join(f"`{m.value}`" for m in annotation))
    elif typing.get_origin(annotation) is Literal:
        parts.append(", ".join(f"`{v}`" for v in typing.get_args(annotation)))
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{sign} {_yaml_value(value)}")
        pattern = getattr(meta, "pattern", None)
        if pattern is not None:
            parts.append(f"matches `{pattern}`")
    if bounds:
        parts.append(" and ".join(bounds))
    rule = VALIDATOR_RULES.get((model.__name__, name))
    if rule and rule != "one of the values listed":
        parts.append(rule)
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_manifest_doc() -> str:
    """docs/manifest.md: every field of plugin.yaml with its type, default, allowed values and description."""
    lines = [
        "<!-- Generated from erp_plugins_core._manifest by erp_plugins_core._docgen; do not edit. -->",
        f"<!-- Regenerate: {REGENERATE} -->",
        "",
        "# Manifest reference (`plugin.yaml`)",
        "",
        "Every plugin ships a `plugin.yaml` as package data next to the module its `erp_plugins` entry point",
        "names. The manifest is strict: an unknown field, a wrong type or a bad value is an error naming the",
        "file, the field and what is allowed. Numbers of seconds may be integers or decimals. A manifest larger",
        f"than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB, or whose YAML aliases expand past a size bound, is invalid.",
        "",
    ]
    for model in _collect_models(Manifest):
        lines.append("## plugin.yaml (top level)" if model is Manifest else f"## {model.__name__}")
        lines.append("")
        doc = inspect.getdoc(model) or ""
        if doc:
            lines += [doc.splitlines()[0], ""]
        lines += ["| field | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            desc = info.description or FIELD_NOTES.get((model.__name__, name), "")
            allowed = _allowed_text(model, name, info)
            row = [f"`{name}`", _type_text(info.annotation), _default_text(info), allowed, desc]
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")
    lines += [
        "## Example",
        "",
        "```yaml",
        "name: invoice_ocr",
        'version: "0.1.0"',
        "plugin_type: business_logic",
        'api_version: "1.0"',
        "permissions: [events.emit]",
        "config_schema:",
        "  type: object",
        "  properties:",
        "    api_key: {type: string, required: true, sensitive: true}",
        "    language: {type: string, default: en}",
        "hooks:",
        "  - {name: on_event, method: on_event, description: read invoices when they arrive}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _signature_text(name: str) -> tuple[list[tuple[str, str]], str]:
    sig = inspect.signature(getattr(HookSpecs, name))
    params = [(p.name, str(p.annotation)) for p in sig.parameters.values() if p.name != "self"]
    return params, str(sig.return_annotation)


def render_hooks_doc() -> str:
    """docs/hooks.md: every hook with its arguments, result, permission and description; then the permissions."""
    lines = [
        "<!-- Generated from erp_plugins_core._hookspecs by erp_plugins_core._docgen; do not edit. -->",
        f"<!-- Regenerate: {REGENERATE} -->",
        "",
        "# Hook reference",
        "",
        "A plugin implements a hook by naming a method in its manifest:",
        "`hooks: [{name: ai_request, method: generate_response}]`. The host calls the method with the hook's",
        "arguments by keyword; it may be a plain or an async function (a streaming hook: an async generator).",
        "A hook is dispatched to a plugin only where the tenant granted the hook's permission.",
        "",
        "| hook | arguments | returns | permission |",
        "| --- | --- | --- | --- |",
    ]
    for name, info in HOOKS.items():
        params, returns = _signature_text(name)
        args = ", ".join(f"`{p}: {t}`" for p, t in params)
        perm = f"`{info.permission}`" if info.permission else "none"
        lines.append(f"| [`{name}`](#{name}) | {_cell(args)} | `{_cell(returns)}` | {perm} |")
    lines.append("")
    for name, info in HOOKS.items():
        params, returns = _signature_text(name)
        defaults = dict(info.defaults)
        lines += [f"## {name}", "", inspect.getdoc(getattr(HookSpecs, name)) or "", ""]
        lines.append("| argument | type | when omitted |")
        lines.append("| --- | --- | --- |")
        for p, t in params:
            omitted = f"`{defaults[p]!r}`" if p in defaults else "required"
            lines.append(f"| `{p}` | `{_cell(t)}` | {omitted} |")
        lines.append("")
        lines.append(f"- returns: `{returns}`" + (" (an async iterator of chunks)" if info.streaming else ""))
        lines.append(f"- permission: {f'`{info.permission}`' if info.permission else 'none'}")
        if info.file_args:
            lines.append(
                f"- file arguments: {', '.join(f'`{a}`' for a in info.file_args)} name host files; the plugin reads "
                "them with `context.get_service(\"files\").open(path)` during the call (needs `files.read`)"
            )
        lines.append("")
    lines += _ui_section()
    lines += _provided_section()
    lines += ["## Permissions", "", "| permission | allows |", "| --- | --- |"]
    lines += [f"| `{p}` | {_cell(what)} |" for p, what in PERMISSIONS.items()]
    lines += ["", "Host services (`context.get_service(name)`): "
              + ", ".join(f"`{s}` (needs `{p}`)" for s, p in SERVICE_PERMISSIONS.items()) + ".", ""]
    return "\n".join(lines)


def _provided_section() -> list[str]:
    """How a plugin defines hooks for other plugins (`provides_hooks`), and how they are checked."""
    return [
        "## Plugins' own hooks",
        "",
        "A plugin may define hooks for other plugins, as pytest plugins do with `addhooks`:",
        "",
        "```yaml",
        "name: invoice_ocr",
        "provides_hooks:",
        "  - name: invoice_ocr_classify          # starts with the plugin's name and _",
        "    description: classify a scanned page",
        "    arguments: {text: str, page: int | None}   # str, int, float, bool, dict, list; | None = optional",
        "    returns: dict",
        "    permission: invoice_ocr.classify     # a core permission, or <provider>.<word>",
        "    firstresult: false                   # true: calls stop at the first plugin that answers",
        "```",
        "",
        "An implementer lists the provider in `dependencies`, declares the hook's permission, and names its",
        "method under `hooks` like any other: `{name: invoice_ocr_classify, method: classify}`. `list` and `check`",
        "read all of this from the manifests, importing nothing; a clash with a core hook or another provider's",
        "hook, an implementer without the dependency, and an unknown hook or permission are errors naming both",
        "plugins. The host registers the hooks with pluggy (`add_hookspecs`), checks callers' arguments and",
        "implementers' results against the declared types, gates calls by the permission per tenant, and for a",
        "`firstresult` hook `call` tries plugins in priority order until one answers (as `first`).",
        "",
    ]


def _ui_section() -> list[str]:
    """The UI component schema `ui_components` results are checked against."""
    import json

    from ._ui import COMPONENT_SCHEMA, MAX_COMPONENTS

    return [
        "## UI components",
        "",
        "`ui_components` returns data, never HTML or script. The host checks each component against this JSON",
        "Schema, and refuses any string holding an HTML tag or a script URL (`javascript:`, `vbscript:`,",
        "`data:text/html`); links (`url`) are relative paths or http(s) URLs. An invalid component fails that",
        f"plugin's result (`error_kind` `invalid_result`) with a message naming the field. At most {MAX_COMPONENTS}",
        "components per result.",
        "",
        "```json",
        json.dumps(COMPONENT_SCHEMA, indent=2),
        "```",
        "",
    ]


def generated() -> dict[str, str]:
    """File name under docs/ -> its generated text."""
    return {"manifest.md": render_manifest_doc(), "hooks.md": render_hooks_doc()}


def stale(docs: Path) -> list[str]:
    """The generated files under `docs` that are missing or differ from what the code generates."""
    out = []
    for name, text in generated().items():
        path = docs / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(str(path))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) docs/manifest.md and docs/hooks.md."""
    parser = argparse.ArgumentParser(prog="python -m erp_plugins_core._docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the docs folder (default: ./docs)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale(args.docs)
        for path in bad:
            print(f"{path} is stale; regenerate with: {REGENERATE}", file=sys.stderr)
        return 1 if bad else 0
    args.docs.mkdir(parents=True, exist_ok=True)
    for name, text in generated().items():
        (args.docs / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.docs / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
