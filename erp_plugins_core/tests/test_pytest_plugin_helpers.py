"""The unit-test helpers of the pytest plugin: plugin_context builds a real, permission-checked, redacting
PluginContext, and RecordingBridge records what a plugin emits and reports."""

from __future__ import annotations

import logging

import pytest

from erp_plugins_core._errors import PermissionDenied
from erp_plugins_core._services import FilesService, current_call_files
from erp_plugins_core.pytest_plugin import RecordingBridge, plugin_context


async def test_the_default_bridge_records_events_and_progress_of_granted_calls() -> None:
    context = plugin_context("demo", {}, tenant="acme", granted={"events.emit"})
    await context.emit_event("invoice.created", {"id": 1})
    context.progress(1, 2, "half")
    bridge = context._bridge
    assert isinstance(bridge, RecordingBridge)
    assert bridge.events == [("invoice.created", {"id": 1})]
    assert bridge.progress_calls == [(1, 2, "half")]
    assert (context.tenant_id, context.plugin) == ("acme", "demo")


async def test_permissions_are_checked_as_the_host_checks_them() -> None:
    bridge = RecordingBridge()
    context = plugin_context("demo", {}, bridge=bridge)
    with pytest.raises(PermissionDenied):
        await context.emit_event("x", {})
    with pytest.raises(PermissionDenied):
        context.get_service("files")
    assert bridge.events == []


def test_files_is_the_real_service_limited_to_the_calls_files(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc")
    files = plugin_context("demo", {}, granted={"files.read"}).get_service("files")
    assert isinstance(files, FilesService)
    with pytest.raises(PermissionDenied):
        files.open(str(path))
    token = current_call_files.set(frozenset({str(path.resolve())}))
    try:
        with files.open(str(path)) as fh:
            assert fh.read() == b"abc"
    finally:
        current_call_files.reset(token)
    with pytest.raises(KeyError):
        RecordingBridge().get_service("mail")


def test_only_the_named_secrets_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    config = {"api_key": "sk-secret-0123456789", "region": "eu-west-1"}
    context = plugin_context("demo", config, secrets=[config["api_key"]])
    with caplog.at_level(logging.INFO, logger="erp_plugins.plugin.demo"):
        context.log("info", f"key {config['api_key']} in {config['region']}")
    assert "sk-secret-0123456789" not in caplog.text
    assert "*** in eu-west-1" in caplog.text
    assert context.get_config("api_key") == "sk-secret-0123456789"
