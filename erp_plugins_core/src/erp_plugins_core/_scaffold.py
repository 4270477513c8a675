"""`erp-plugins new`: scaffold a third-party plugin distribution that installs, is discovered, passes
`check`, and whose generated tests pass.

The files come from `string.Template` templates shipped in `erp_plugins_core/templates/`: `common/` for every
plugin, and one folder per kind of example hook (`events` for on_event, `ai` for the AI hooks, `calendar` for an
integration, `notification`, `workflow` and `ui` for the hooks of those plugin types).
Naming, for plugin NAME: distribution `erp-plugin-<NAME with _ as ->`, package
`erp_plugin_<NAME>` (NAME itself when it already starts with `erp_plugin_`), class `<NAME in CamelCase>Plugin`.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from ._errors import ConfigError, PluginError
from ._interface import PluginType

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,62}$")  # the manifest's rule for `name`
VERSION = "0.1.0"

#: Which example the scaffold writes for each plugin type.
KIND_BY_TYPE: dict[str, str] = {
    PluginType.AI_PROVIDER.value: "ai",
    PluginType.INTEGRATION.value: "calendar",
    PluginType.BUSINESS_LOGIC.value: "events",
    PluginType.UI_EXTENSION.value: "ui",
    PluginType.WORKFLOW.value: "workflow",
    PluginType.NOTIFICATION.value: "notification",
}

_TRY_CALL = {
    "events": "erp-plugins call on_event --tenant acme --arg event_type=invoice.created "
    "--args-json '{\"data\": {\"invoice_id\": 42}}'",
    "ai": "erp-plugins call ai_request --tenant acme --arg prompt=hello",
    "notification": "erp-plugins call send_notification --tenant acme --arg channel=chat --arg recipient=ops "
    "--arg message='invoice 42 is overdue'",
    "workflow": "erp-plugins call workflow_step --tenant acme --arg workflow=approval --arg step=route "
    "--args-json '{\"payload\": {\"amount\": 1200}}'",
    "ui": "erp-plugins call ui_components --tenant acme --arg placement=main_menu",
    "calendar": "erp-plugins call create_calendar_event --tenant acme --arg calendar_id=team "
    "--args-json '{\"event\": {\"summary\": \"review\", \"start\": \"2025-01-31T09:00:00Z\"}}'",
}

#: Output path (with {package}) -> template path, for every plugin.
_COMMON = {
    "pyproject.toml": "common/pyproject.toml.tmpl",
    "README.md": "common/README.md.tmpl",
    "src/{package}/__init__.py": "common/__init__.py.tmpl",
}
#: Output path -> template name inside the kind's folder.
_PER_KIND = {
    "src/{package}/plugin.py": "plugin.py.tmpl",
    "src/{package}/plugin.yaml": "plugin.yaml.tmpl",
    "tests/test_plugin.py": "test_plugin.py.tmpl",
}


@dataclass(frozen=True)
class Names:
    """Every name derived from the plugin name."""

    name: str
    dist_name: str
    package: str
    class_name: str

    @classmethod
    def of(cls, name: str) -> Names:
        package = name if name.startswith("erp_plugin_") else f"erp_plugin_{name}"
        class_name = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) + "Plugin"
        return cls(name, package.replace("_", "-"), package, class_name)


def validate_name(name: str) -> str:
    """`name` if it is a valid plugin name; ConfigError saying the rule otherwise."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid plugin name {name!r}: use 2-63 lowercase letters, digits and underscores, starting with a "
            "letter (e.g. invoice_ocr)"
        )
    return name


def _core_requirement() -> str:
    """`erp-plugins-core>=MAJOR.MINOR` of the core that writes the scaffold."""
    try:
        version = importlib.metadata.version("erp-plugins-core")
    except importlib.metadata.PackageNotFoundError:
        version = "0.1"
    major_minor = ".".join(version.split(".")[:2])
    return f"erp-plugins-core>={major_minor}"


def render(name: str, plugin_type: str) -> dict[str, str]:
    """The scaffold's files (relative POSIX path -> text) for plugin `name` of `plugin_type`."""
    validate_name(name)
    if plugin_type not in KIND_BY_TYPE:
        raise ConfigError(f"invalid plugin type {plugin_type!r}; allowed: {', '.join(KIND_BY_TYPE)}")
    kind = KIND_BY_TYPE[plugin_type]
    names = Names.of(name)
    values = {
        "name": name,
        "dist_name": names.dist_name,
        "package": names.package,
        "class_name": names.class_name,
        "plugin_type": plugin_type,
        "version": VERSION,
        "title": name.replace("_", " ").capitalize(),
        "description": f"ERP plugin {name} ({plugin_type.replace('_', ' ')})",
        "core_requirement": _core_requirement(),
        "try_call": _TRY_CALL[kind],
    }
    root = files("erp_plugins_core") / "templates"
    sources = {**_COMMON, **{out: f"{kind}/{tmpl}" for out, tmpl in _PER_KIND.items()}}
    out: dict[str, str] = {}
    for target, source in sources.items():
        text = (root / source).read_text(encoding="utf-8")
        out[target.format(package=names.package)] = Template(text).substitute(values)
    return out


def scaffold(name: str, plugin_type: str, directory: Path) -> Path:
    """Create the plugin distribution `directory/name` and return its path.

    Refuses (PluginError) when `directory/name` exists; writes into a temporary folder renamed at the end, so a
    failure leaves nothing half-written.
    """
    texts = render(name, plugin_type)
    directory = Path(directory)
    target = directory / name
    if target.exists() or target.is_symlink():
        raise PluginError(f"{target} already exists; choose another name or --dir, or remove it first")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory))
    except OSError as exc:
        raise PluginError(f"cannot create a folder in {directory}: {exc.strerror}") from None
    try:
        for rel, text in texts.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        tmp.chmod(0o755)
        tmp.rename(target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            raise PluginError(f"{target} already exists; choose another name or --dir, or remove it first") from None
        raise PluginError(f"cannot write the plugin into {target}: {exc.strerror}") from None
    return target
