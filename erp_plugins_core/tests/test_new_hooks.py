"""The hooks of the notification, workflow and ui_extension plugin types: dispatch, permissions, argument checks,
and the host's validation of data-only UI components."""

from __future__ import annotations

import pytest

from erp_plugins_core import PluginHost
from erp_plugins_core._errors import HookArgumentError
from erp_plugins_core._hookspecs import HOOKS
from erp_plugins_core._ui import component_problem

TRUSTED = "security: {sandbox: false}\nresources: {timeout: 2}\n"

NOTIFY = """
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    async def send(self, channel, recipient, subject, message, data):
        return f"{channel}:{recipient}:{subject}:{message}:{sorted(data)}"
"""
FLOW = """
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    def step(self, workflow, step, payload):     # a plain function works too
        return {**payload, "done": f"{workflow}/{step}"}
"""
UI = """
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    async def components(self, placement, context):
        return context["components"]
"""


@pytest.fixture
async def host(site, manifest_text, secret_key, tmp_path):
    site.install("erp-notify", plugins={"notify": (manifest_text("notify", extra=TRUSTED + """
permissions: [notifications.send]
hooks: [{name: send_notification, method: send}]
"""), NOTIFY)})
    site.install("erp-flow", plugins={"flow": (manifest_text("flow", extra=TRUSTED + """
permissions: [workflow.execute]
hooks: [{name: workflow_step, method: step}]
"""), FLOW)})
    site.install("erp-ui", plugins={"ui": (manifest_text("ui", extra=TRUSTED + """
permissions: [ui.extend]
hooks: [{name: ui_components, method: components}]
"""), UI)})
    async with PluginHost(tmp_path / "state.db", health_loop=False) as h:
        yield h


def test_the_three_hooks_and_their_permissions_are_in_the_table():
    assert HOOKS["send_notification"].permission == "notifications.send"
    assert HOOKS["send_notification"].argnames == ("channel", "recipient", "subject", "message", "data")
    assert HOOKS["workflow_step"].permission == "workflow.execute"
    assert HOOKS["workflow_step"].argnames == ("workflow", "step", "payload")
    assert HOOKS["ui_components"].permission == "ui.extend"
    assert HOOKS["ui_components"].argnames == ("placement", "context")


async def test_send_notification(host):
    await host.enable("notify", tenant="acme", trust=True)
    [r] = await host.call("send_notification", tenant="acme", channel="sms", recipient="+4912345",
                          subject="s", message="hello", data={"b": 1, "a": 2})
    assert r.success and r.result == "sms:+4912345:s:hello:['a', 'b']"
    # subject and data are optional
    assert await host.first("send_notification", tenant="acme", channel="chat", recipient="ops",
                            message="m") == "chat:ops::m:[]"
    with pytest.raises(HookArgumentError, match="hook send_notification argument recipient must be str, got int"):
        await host.call("send_notification", tenant="acme", channel="sms", recipient=42, message="m")
    with pytest.raises(HookArgumentError, match="send_notification needs argument.*message"):
        await host.call("send_notification", tenant="acme", channel="sms", recipient="x")


async def test_workflow_step(host):
    await host.enable("flow", tenant="acme", trust=True)
    out = await host.first("workflow_step", tenant="acme", workflow="approval", step="route", payload={"n": 1})
    assert out == {"n": 1, "done": "approval/route"}
    with pytest.raises(HookArgumentError, match="hook workflow_step argument payload must be dict, got list"):
        await host.call("workflow_step", tenant="acme", workflow="w", step="s", payload=[1])


async def test_permission_gates_the_new_hooks(host):
    await host.enable("flow", tenant="acme", trust=True, grant=[])
    [r] = await host.call("workflow_step", tenant="acme", workflow="w", step="s", payload={})
    assert not r.success and r.error_kind == "permission" and "'workflow.execute'" in r.error


GOOD = [
    {"kind": "menu_item", "id": "ocr.inbox", "title": "Inbox", "url": "/ocr/inbox", "icon": "inbox", "order": 2},
    {"kind": "action", "id": "ocr.scan", "title": "Scan", "event": "ocr.scan", "confirm": "Scan now?"},
    {"kind": "panel", "id": "ocr.stats", "title": "OCR", "items": [{"label": "pages", "value": 3},
                                                                   {"label": "docs", "url": "https://x.example/d"}]},
]


async def test_valid_components_pass_through(host):
    await host.enable("ui", tenant="acme", trust=True)
    [r] = await host.call("ui_components", tenant="acme", placement="invoice", context={"components": GOOD})
    assert r.success, r.error
    assert r.result == GOOD


@pytest.mark.parametrize(("component", "field", "why"), [
    ({"kind": "menu_item", "id": "a", "title": "t", "url": "javascript:alert(1)"}, "[0].url", "script URL"),
    ({"kind": "menu_item", "id": "a", "title": "t", "url": "file:///etc/passwd"}, "[0].url", "not a relative path"),
    ({"kind": "menu_item", "id": "a", "title": "t", "url": "//evil.example/x"}, "[0].url", "not a relative path"),
    ({"kind": "panel", "id": "a", "title": "<script>alert(1)</script>"}, "[0].title", "HTML"),
    ({"kind": "panel", "id": "a", "title": "t", "items": [{"label": "<img src=x onerror=y>"}]},
     "[0].items[0].label", "HTML"),
    ({"kind": "panel", "id": "a", "title": "t", "html": "x"}, "[0]", "'html' was unexpected"),
    ({"kind": "banner", "id": "a", "title": "t"}, "[0].kind", "is not one of"),
    ({"kind": "menu_item", "id": "a", "title": "t"}, "[0]", "'url' is a required property"),
    ({"kind": "action", "id": "a", "title": "t"}, "[0]", "an action needs url or event"),
    ({"kind": "panel", "title": "t"}, "[0]", "'id' is a required property"),
    ({"kind": "panel", "id": "a b", "title": "t"}, "[0].id", "does not match"),
])
async def test_an_invalid_component_fails_that_plugins_result_naming_the_field(host, component, field, why):
    await host.enable("ui", tenant="acme", trust=True)
    [r] = await host.call("ui_components", tenant="acme", placement="p", context={"components": [GOOD[0], component]})
    assert not r.success and r.result is None and r.error_kind == "invalid_result"
    assert f"component {field.replace('[0]', '[1]', 1)}" in r.error and why in r.error, r.error


async def test_a_result_that_is_not_a_list_of_objects_fails(host):
    await host.enable("ui", tenant="acme", trust=True)
    [r] = await host.call("ui_components", tenant="acme", placement="p", context={"components": {"kind": "panel"}})
    assert not r.success and "must return a list of components, got dict" in r.error
    [r] = await host.call("ui_components", tenant="acme", placement="p", context={"components": ["x"]})
    assert not r.success and "component [0] must be an object, got str" in r.error


async def test_first_skips_a_plugin_whose_components_are_invalid(host, site, manifest_text):
    await host.enable("ui", tenant="acme", trust=True)
    with pytest.raises(Exception, match=r"component \[0\].url"):
        await host.first("ui_components", tenant="acme", placement="p",
                         context={"components": [{"kind": "menu_item", "id": "a", "title": "t", "url": "data:x"}]})


def test_relative_paths_and_http_urls_are_allowed():
    for url in ["/a/b?c=1#d", "reports/overdue", "", "https://erp.example/x", "http://localhost:8080/"]:
        assert component_problem([{"kind": "menu_item", "id": "a", "title": "t", "url": url}]) is None, url
    for url in ["ftp://x", "mailto:a@b", "JavaScript:alert(1)", " javascript:x", "data:text/html,x"]:
        assert component_problem([{"kind": "menu_item", "id": "a", "title": "t", "url": url}]) is not None, url
