"""docs/manifest.md and docs/hooks.md are what the code generates; every field and hook is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from erp_plugins_core import PluginType
from erp_plugins_core._docgen import (
    FIELD_NOTES,
    REGENERATE,
    VALIDATOR_RULES,
    _collect_models,
    generated,
    main,
    render_hooks_doc,
    render_manifest_doc,
    stale,
)
from erp_plugins_core._hookspecs import HOOKS
from erp_plugins_core._manifest import Manifest
from erp_plugins_core._permissions import PERMISSIONS

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", ["manifest.md", "hooks.md"])
def test_generated_docs_are_current(name):
    path = DOCS / name
    assert path.is_file(), f"{path} is missing; generate it from the repository root with: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == generated()[name], (
        f"{path} is stale (the code changed); regenerate it from the repository root with: {REGENERATE}"
    )


def test_every_manifest_field_is_described_and_every_validator_explained():
    for model in _collect_models(Manifest):
        for name, info in model.model_fields.items():
            assert info.description or (model.__name__, name) in FIELD_NOTES, f"{model.__name__}.{name}: no description"
        for validator in model.__pydantic_decorators__.field_validators.values():
            for field in validator.info.fields:
                assert (model.__name__, field) in VALIDATOR_RULES, (
                    f"{model.__name__}.{field} has a custom validator; describe its rule in _docgen.VALIDATOR_RULES"
                )
    assert {m.__name__ for m in _collect_models(Manifest)} == {"Manifest", "HookEntry", "ProvidedHook", "HealthCheck",
                                                                "Resources", "Security", "Deliveries"}


def test_manifest_doc_lists_fields_defaults_and_allowed_values():
    text = render_manifest_doc()
    for model in _collect_models(Manifest):
        for name in model.model_fields:
            assert f"| `{name}` |" in text
    for t in PluginType:
        assert f"`{t.value}`" in text
    for perm in PERMISSIONS:
        assert f"`{perm}`" in text
    assert "| `sandbox` | boolean | `true` |" in text
    assert "| `file_permissions` | text | `\"none\"` | `none`, `read-only`, `read-write` |" in text
    assert "| `timeout` | number | `30` | > 0 and ≤ 86400 | seconds one hook call may take |" in text
    assert "| `name` | text | **required** | matches `^[a-z][a-z0-9_]{1,62}$` |" in text


def test_hooks_doc_lists_every_hook():
    text = render_hooks_doc()
    for name, info in HOOKS.items():
        assert f"## {name}\n" in text
        assert f"- permission: {f'`{info.permission}`' if info.permission else 'none'}" in text
    assert "| [`send_email`](#send_email) | `to: str`, `subject: str`, `body: str`, `attachments: list[str]` | `str` " \
        "| `email.send` |" in text
    assert "Send a mail with files attached" in text


def test_main_writes_and_checks(tmp_path, capsys):
    assert main(["--docs", str(tmp_path), "--check"]) == 1
    assert "stale; regenerate with" in capsys.readouterr().err
    assert main(["--docs", str(tmp_path)]) == 0
    assert stale(tmp_path) == []
    assert main(["--docs", str(tmp_path), "--check"]) == 0
    (tmp_path / "hooks.md").write_text("edited by hand")
    assert stale(tmp_path) == [str(tmp_path / "hooks.md")]


def test_writing_a_plugin_guide_names_real_things():
    text = (DOCS / "writing-a-plugin.md").read_text(encoding="utf-8")
    import erp_plugins_core.pytest_plugin as plugin

    for fixture in ("erp_host", "erp_enable", "erp_conformance", "erp_state"):
        assert fixture in text and hasattr(plugin, fixture)
    for command in ("erp-plugins new", "erp-plugins check", "erp-plugins enable", "erp-plugins call"):
        assert command in text
    assert "manifest.md" in text and "hooks.md" in text
    assert "Module-level code runs once per plugin, before any tenant exists" in text
    assert (DOCS.parent / "erp_plugin_openai/src/erp_plugin_openai/_rehearsal.py").is_file()  # the example it names
