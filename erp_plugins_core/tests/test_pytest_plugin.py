"""The pytest fixtures for plugin authors (erp_state, erp_host, erp_enable, erp_conformance) and the conformance
checks, against scaffolded plugins installed into a temporary site folder (some broken on purpose)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from scaffoldkit import install_project

from erp_plugins_core import PluginHost
from erp_plugins_core._catalog import Catalog
from erp_plugins_core._conformance import assert_conformance, check_conformance, signature_problems
from erp_plugins_core._hookspecs import HOOKS
from erp_plugins_core._scaffold import scaffold
from erp_plugins_core._secrets import KEY_ENV, SecretBox

EVENTS_INIT = '''        self.prefix = config.get("event_prefix", "")
        return True'''

#: name -> (plugin type, [(file, old text, new text)]) of the plugins installed for these tests.
VARIANTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "conf_good": ("business_logic", []),
    "conf_ai": ("ai_provider", []),
    "conf_noparam": ("business_logic", [("plugin.py", "event_type: str, data: dict[str, Any]) -> None:",
                                   "event_type: str) -> None:")]),
    "conf_extra": ("business_logic", [("plugin.py", "data: dict[str, Any]) -> None:",
                                       "data: dict[str, Any], x) -> None:")]),
    "conf_init_none": ("business_logic", [("plugin.py", EVENTS_INIT, '        self.prefix = ""')]),
    "conf_bad_health": ("business_logic", [
        ("plugin.py", 'return {"healthy": True, "detail": f"{self.handled} event(s) ', 'return "fine"  # ')]),
    "conf_hang": ("business_logic", [
        ("plugin.py", "    async def on_event(", "    async def activate(self) -> bool:\n"
         "        import asyncio\n\n        await asyncio.sleep(5)\n        return True\n\n    async def on_event("),
        ("plugin.yaml", "  timeout: 30\n", "  timeout: 0.3\n"),
    ]),
    "conf_no_method": ("business_logic", [("plugin.yaml", "    method: on_event", "    method: nope")]),
    "conf_no_perm": ("ai_provider", [("plugin.yaml", "  - ai.generate\n", "")]),
    "conf_stream_coro": ("ai_provider", [(
        "plugin.py",
        '''        answer = f"{self.prefix}{prompt}"
        for start in range(0, len(answer), 8):
            yield answer[start : start + 8]''',
        '''        return self.prefix''',
    )]),
    "conf_needs_config": ("business_logic", [("plugin.yaml", '      default: ""\n', "      required: true\n")]),
    "conf_tampered": ("business_logic", []),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugins")
    site = root / "site"
    for name, (plugin_type, edits) in VARIANTS.items():
        project = scaffold(name, plugin_type, root)
        package = project / "src" / f"erp_plugin_{name}"
        for fname, old, new in edits:
            text = (package / fname).read_text()
            assert old in text, (name, old)
            (package / fname).write_text(text.replace(old, new))
        install_project(project, site)
    tampered = site / "erp_plugin_conf_tampered" / "plugin.py"
    tampered.write_text(tampered.read_text() + "\n# changed after installation\n")
    return site


@pytest.fixture(autouse=True)
def _plugins_visible(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the test plugins installed (first, so erp_host sees them) and run them in process unless a test says."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("ERP_PLUGINS_CACHE", "0")
    monkeypatch.setenv("ERP_PLUGINS_UNSAFE_NO_SANDBOX", "1")


# --- fixtures -------------------------------------------------------------------------------------------------


def test_erp_state_isolates_state_and_key(erp_state, tmp_path):
    assert erp_state.parent == tmp_path and not erp_state.exists()
    assert os.environ["ERP_PLUGINS_STATE"] == str(erp_state)
    Fernet(os.environ[KEY_ENV])  # a valid key
    assert "ERP_PLUGINS_SECRET_KEY_FILE" not in os.environ
    box = SecretBox.from_environment(erp_state)
    assert box.decrypt(box.encrypt("s3cret")) == "s3cret"


async def test_erp_host_is_open_on_the_state(erp_host, erp_state):
    assert isinstance(erp_host, PluginHost)
    assert erp_host.state_path == erp_state and erp_state.exists()
    assert erp_host._health_task is None
    assert erp_host.record("conf_good").name == "conf_good"


async def test_erp_enable_enables_and_calls(erp_host, erp_enable):
    row = await erp_enable("conf_ai", tenant="acme", config={"prefix": "> ", "api_key": "sk-very-secret-1234"})
    assert row.enabled and row.state == "active" and row.granted == ["ai.generate", "ai.embeddings"]
    assert await erp_host.first("ai_request", tenant="acme", prompt="hi", context={}) == "> hi"
    assert erp_host.config_of("conf_ai", tenant="acme")["api_key"] == "***"


async def test_erp_enable_passes_grant_and_default_tenant(erp_host, erp_enable):
    row = await erp_enable("conf_ai", grant=["ai.embeddings"])
    assert row.tenant == "t" and row.granted == ["ai.embeddings"]
    [result] = await erp_host.call("ai_request", tenant="t", prompt="hi", context={})
    assert not result.success and "ai.generate" in result.error


async def test_erp_enable_reports_bad_config(erp_enable):
    with pytest.raises(Exception, match="prefix"):
        await erp_enable("conf_ai", config={"prefix": 3})


async def test_erp_conformance_fixture(erp_conformance):
    report = await erp_conformance("conf_good")
    assert report.ok


async def test_sandboxed_through_the_fixtures(erp_host, erp_enable, monkeypatch):
    """Without the development opt-out the plugin runs in the sandbox (where the sandbox can start)."""
    monkeypatch.delenv("ERP_PLUGINS_UNSAFE_NO_SANDBOX")
    from erp_plugins_core._sandbox import sandbox_available

    why = sandbox_available()
    if why is not None:
        pytest.skip(f"sandbox unavailable here: {why}")
    await erp_enable("conf_ai", tenant="acme")
    [result] = await erp_host.call("ai_request", tenant="acme", prompt="hi", context={})
    assert result.success, result.error
    assert result.result == "echo: hi"
    assert erp_host._instances[("acme", "conf_ai")].runner.sandboxed


# --- conformance ----------------------------------------------------------------------------------------------


async def test_good_plugins_conform():
    for name in ("conf_good", "conf_ai"):
        report = await assert_conformance(name)
        assert report.steps == ["manifest", "load", "initialize()", "activate()", "health_check()", "deactivate()",
                                "cleanup()"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("conf_noparam", "hooks: on_event -> method on_event: has no parameter 'data'"),
        ("conf_extra", "parameter 'x' is not an argument of on_event"),
        ("conf_init_none", "initialize() must return True (bool), got None"),
        ("conf_bad_health", "health_check() must return a dict with healthy: bool or status: text (healthy, ok, up or "
                            "pass mean healthy), got 'fine'"),
        ("conf_hang", "activate() did not return within 0.3s"),
        ("conf_no_method", "names method 'nope', which ConfNoMethodPlugin does not have"),
        ("conf_no_perm", "ai_request needs permission 'ai.generate', which permissions does not declare"),
        ("conf_stream_coro", "a streaming hook must be an async generator"),
        ("conf_needs_config", "config: "),
        ("conf_tampered", "erp_plugin_conf_tampered/plugin.py: changed after installation"),
        ("not_installed", "no plugin named 'not_installed' is installed"),
    ],
)
async def test_broken_plugins_do_not_conform(name, expected):
    report = await check_conformance(name)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    with pytest.raises(AssertionError, match="does not conform"):
        await assert_conformance(name)


async def test_config_is_passed_and_validated():
    assert (await check_conformance("conf_needs_config", config={"event_prefix": "x."})).ok
    report = await check_conformance("conf_needs_config", config={"event_prefix": 1})
    assert any("event_prefix" in p for p in report.problems)


async def test_hang_is_bounded():
    start = asyncio.get_running_loop().time()
    await check_conformance("conf_hang")
    assert asyncio.get_running_loop().time() - start < 3


async def test_catalog_can_be_given():
    catalog = Catalog.load(use_cache=False)
    assert (await check_conformance("conf_good", catalog=catalog)).ok


def test_signature_problems():
    ai = HOOKS["ai_request"]

    def ok(prompt, context): ...
    def kw_only(*, prompt, context, extra=1): ...
    def var_kw(prompt, **kwargs): ...
    def missing(prompt): ...
    def positional(prompt, context, /): ...
    def extra(prompt, context, needed): ...

    assert signature_problems(ai, "ok", ok) == []
    assert signature_problems(ai, "kw_only", kw_only) == [
        "hooks: ai_request -> method kw_only: parameter 'prompt' is keyword-only, which the host does not fill; "
        "make it an ordinary parameter",
        "hooks: ai_request -> method kw_only: parameter 'context' is keyword-only, which the host does not fill; "
        "make it an ordinary parameter",
    ]
    assert signature_problems(ai, "var_kw", var_kw) == [
        "hooks: ai_request -> method var_kw: has no parameter 'context'; the hook passes prompt, context"]
    assert signature_problems(ai, "missing", missing) == [
        "hooks: ai_request -> method missing: has no parameter 'context'; the hook passes prompt, context"]
    assert len(signature_problems(ai, "positional", positional)) == 2
    assert "parameter 'needed' is not an argument" in signature_problems(ai, "extra", extra)[0]

    async def agen(prompt, context):
        yield prompt

    def plain_returning_iterator(prompt, context):
        return agen(prompt, context)

    async def coro(prompt, context):
        return prompt

    stream = HOOKS["ai_stream"]
    assert signature_problems(stream, "agen", agen) == []
    assert signature_problems(stream, "plain", plain_returning_iterator) == []
    assert signature_problems(stream, "coro", coro) == [
        "hooks: ai_stream -> method coro: a streaming hook must be an async generator (async def with yield)"]
