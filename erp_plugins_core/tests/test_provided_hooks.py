"""Plugins' own hooks (`provides_hooks`): declared in one distribution's manifest, implemented by another's,
checked and registered with pluggy from the manifests alone, type-checked, permission-gated, `firstresult`."""

from __future__ import annotations

import sys

import pytest

from erp_plugins_core import PluginHost
from erp_plugins_core._catalog import Catalog
from erp_plugins_core._errors import HookArgumentError, ManifestError, PluginError, UnknownHookError
from erp_plugins_core._manifest import load_manifest

TRUSTED = "security: {sandbox: false}\nresources: {timeout: 2}\n"

PROVIDER = TRUSTED + """
permissions: [events.emit]
provides_hooks:
  - name: prov_score
    description: score a document
    arguments: {text: str, weight: int | None}
    returns: int
    permission: prov.score
  - name: prov_pick
    arguments: {options: list}
    returns: str
    firstresult: true
"""
PROVIDER_CODE = """
from erp_plugins_core import PluginInterface
raise_on_import = False
class Plugin(PluginInterface):
    pass
"""
IMPL = TRUSTED + """
dependencies: [prov]
permissions: [prov.score]
hooks:
  - {name: prov_score, method: score}
  - {name: prov_pick, method: pick}
"""
IMPL_CODE = """
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    def score(self, text, weight):
        if text == "bad-type":
            return "not an int"
        return len(text) * (weight or 1)
    async def pick(self, options):
        if not options:
            raise ValueError("nothing to pick")
        return f"{self.context.plugin}:{options[0]}"
"""
NOT_IMPORTED = """
raise RuntimeError("discovery must not import plugin code")
"""


@pytest.fixture
def two(site, manifest_text, secret_key):
    """A providing and an implementing distribution, really installed (dist-info, entry points, RECORD)."""
    site.install("erp-prov", plugins={"prov": (manifest_text("prov", extra=PROVIDER), PROVIDER_CODE)})
    site.install("erp-impl", plugins={"impl": (manifest_text("impl", extra=IMPL), IMPL_CODE)})
    return site


@pytest.fixture
async def host(two, tmp_path):
    async with PluginHost(tmp_path / "state.db", health_loop=False) as h:
        yield h


def test_checked_and_listed_without_importing(site, manifest_text) -> None:
    site.install("erp-prov", plugins={"prov": (manifest_text("prov", extra=PROVIDER), NOT_IMPORTED)})
    site.install("erp-impl", plugins={"impl": (manifest_text("impl", extra=IMPL), NOT_IMPORTED)})
    catalog = Catalog.load(use_cache=False)
    assert catalog.get("prov").errors == () and catalog.get("impl").errors == ()
    info = catalog.hook("prov_score")
    assert info is not None and info.provider == "prov" and info.argnames == ("text", "weight")
    assert info.permission == "prov.score" and not info.firstresult
    assert catalog.hook("prov_pick").firstresult
    assert not any(m.startswith(("erp_prov", "erp_impl")) for m in sys.modules)


async def test_call_reaches_the_implementer_with_checked_arguments(host) -> None:
    await host.enable("prov", tenant="acme", trust=True)
    await host.enable("impl", tenant="acme", trust=True)
    [r] = await host.call("prov_score", tenant="acme", text="abcd", weight=3)
    assert (r.plugin, r.success, r.result) == ("impl", True, 12)
    [r] = await host.call("prov_score", tenant="acme", text="abcd")  # `int | None`: may be omitted
    assert r.result == 4
    with pytest.raises(HookArgumentError, match="hook prov_score argument weight must be int or null, got str"):
        await host.call("prov_score", tenant="acme", text="x", weight="3")
    with pytest.raises(HookArgumentError, match="hook prov_score argument weight must be int or null, got bool"):
        await host.call("prov_score", tenant="acme", text="x", weight=True)
    with pytest.raises(HookArgumentError, match="hook prov_score needs argument.*text"):
        await host.call("prov_score", tenant="acme")
    with pytest.raises(HookArgumentError, match="unknown argument.*colour"):
        await host.call("prov_score", tenant="acme", text="x", colour=1)
    with pytest.raises(UnknownHookError, match="no hook named 'prov_nothing'"):
        await host.call("prov_nothing", tenant="acme")


async def test_result_type_is_checked(host) -> None:
    await host.enable("prov", tenant="acme", trust=True)
    await host.enable("impl", tenant="acme", trust=True)
    [r] = await host.call("prov_score", tenant="acme", text="bad-type")
    assert not r.success and r.error_kind == "invalid_result"
    assert "prov_score must return int (provides_hooks of prov), got str" in r.error


async def test_permission_gates_a_provided_hook(host) -> None:
    await host.enable("prov", tenant="acme", trust=True)
    await host.enable("impl", tenant="acme", trust=True, grant=[])
    [r] = await host.call("prov_score", tenant="acme", text="x")
    assert not r.success and r.error_kind == "permission" and "'prov.score'" in r.error


async def test_firstresult_stops_at_the_first_answer_in_priority_order(two, manifest_text, tmp_path) -> None:
    two.install("erp-impl-two", plugins={"impl_two": (manifest_text("impl_two", extra=IMPL), IMPL_CODE)})
    async with PluginHost(tmp_path / "s.db", health_loop=False) as host:
        await host.enable("prov", tenant="acme", trust=True)
        await host.enable("impl", tenant="acme", trust=True, priority=2)
        await host.enable("impl_two", tenant="acme", trust=True, priority=1)
        results = await host.call("prov_pick", tenant="acme", options=["a", "b"])
        assert [(r.plugin, r.result) for r in results] == [("impl_two", "impl_two:a")]
        assert await host.first("prov_pick", tenant="acme", options=["z"]) == "impl_two:z"
        # a failure moves on to the next plugin, and the results show both
        results = await host.call("prov_pick", tenant="acme", options=[])
        assert [(r.plugin, r.success) for r in results] == [("impl_two", False), ("impl", False)]
        # a hook without firstresult reaches every implementer
        assert len(await host.call("prov_score", tenant="acme", text="x")) == 2


def test_implementer_without_the_dependency_names_both(site, manifest_text) -> None:
    site.install("erp-prov", plugins={"prov": (manifest_text("prov", extra=PROVIDER), PROVIDER_CODE)})
    lacking = IMPL.replace("dependencies: [prov]\n", "")
    site.install("erp-impl", plugins={"impl": (manifest_text("impl", extra=lacking), IMPL_CODE)})
    errors = " ".join(Catalog.load(use_cache=False).get("impl").errors)
    assert "plugin impl implements prov_score, which plugin prov provides, but does not list prov in dependencies" \
        in errors


def test_a_clash_between_providers_names_both(site, manifest_text) -> None:
    clash = TRUSTED + "provides_hooks: [{name: prov_x_y}]\n"
    site.install("erp-prov", plugins={"prov": (manifest_text("prov", extra=clash), PROVIDER_CODE)})
    site.install("erp-prov-x", plugins={"prov_x": (manifest_text("prov_x", extra=clash), PROVIDER_CODE)})
    catalog = Catalog.load(use_cache=False)
    assert "prov_x_y of plugin prov clashes with the hook of that name plugin prov_x provides" in \
        " ".join(catalog.get("prov").errors)
    assert "prov_x_y of plugin prov_x clashes with the hook of that name plugin prov provides" in \
        " ".join(catalog.get("prov_x").errors)


def test_unknown_hooks_and_permissions_are_catalog_errors(site, manifest_text) -> None:
    extra = TRUSTED + "permissions: [root.everything]\nhooks: [{name: make_coffee, method: m}]\n"
    site.install("erp-odd", plugins={"odd": (manifest_text("odd", extra=extra), PROVIDER_CODE)})
    errors = " ".join(Catalog.load(use_cache=False).get("odd").errors)
    assert "hooks: make_coffee of plugin odd is no core hook, and no installed plugin provides it" in errors
    assert "permissions: root.everything is no core permission" in errors


async def test_an_implementation_whose_method_is_missing_names_both(site, manifest_text, secret_key, tmp_path):
    site.install("erp-prov", plugins={"prov": (manifest_text("prov", extra=PROVIDER), PROVIDER_CODE)})
    site.install("erp-impl", plugins={"impl": (manifest_text("impl", extra=IMPL.replace("method: pick",
                                                                                         "method: choose")),
                                               IMPL_CODE)})
    async with PluginHost(tmp_path / "s.db", health_loop=False) as host:
        await host.enable("prov", tenant="acme", trust=True)
        with pytest.raises(PluginError, match=r"plugin 'impl': plugin.yaml hooks: prov_pick \(a hook plugin 'prov' "
                                              r"provides\) names method 'choose', which Plugin does not have"):
            await host.enable("impl", tenant="acme", trust=True)


@pytest.mark.parametrize(("provides", "expected"), [
    ("[{name: other_x}]", "'other_x' must start with the plugin's name and _ (prov_...)"),
    ("[{name: prov_x, arguments: {a: banana}}]", "a: 'banana' is not a type"),
    ("[{name: prov_x, arguments: {a: str | int}}]", "is not a type"),
    ("[{name: prov_x, returns: set}]", "'set' is not a type"),
    ("[{name: prov_x, permission: ai.generatee}]", "'ai.generatee' is neither a core permission nor prov.<word>"),
    ("[{name: prov_x, permission: other.thing}]", "neither a core permission nor prov.<word>"),
    ("[{name: prov_x}, {name: prov_x}]", "'prov_x' is provided twice"),
    ("[{name: prov_x, firstresult: maybe}]", "firstresult: Input should be a valid boolean"),
    ("[{name: prov_x, arguments: {class: str}}]", "class: a Python keyword (or self) cannot name an argument"),
    ("[{name: prov_x, arguments: {Text: str}}]", "arguments.Text.[key]: String should match pattern"),
])
def test_bad_provides_hooks_are_manifest_errors(provides, expected) -> None:
    text = f'name: prov\nversion: "1"\nplugin_type: integration\napi_version: "1.0"\nprovides_hooks: {provides}\n'
    with pytest.raises(ManifestError) as info:
        load_manifest(text, "p.yaml")
    assert expected in str(info.value)


def test_a_provided_hook_may_not_take_a_core_hooks_name() -> None:
    text = ('name: ai\nversion: "1"\nplugin_type: integration\napi_version: "1.0"\n'
            "provides_hooks: [{name: ai_request}]\n")
    with pytest.raises(ManifestError, match="'ai_request' clashes with the core hook of that name"):
        load_manifest(text, "p.yaml")


SANDBOXED = "resources: {timeout: 20}\n"


async def test_sandboxed_provider_and_implementer(site, manifest_text, secret_key, tmp_path) -> None:
    """The same hooks with both plugins in bubblewrap workers: the spec comes from the manifest, the call crosses
    the worker's pipe, the host checks arguments, permission, result type and firstresult."""
    from erp_plugins_core._sandbox import sandbox_available

    reason = sandbox_available()
    if reason is not None:
        pytest.fail(f"the sandbox cannot start here, so sandboxed provided hooks are untested: {reason}")
    site.install("erp-prov", plugins={"prov": (manifest_text("prov", extra=PROVIDER.replace(TRUSTED, SANDBOXED)),
                                               PROVIDER_CODE)})
    site.install("erp-impl", plugins={"impl": (manifest_text("impl", extra=IMPL.replace(TRUSTED, SANDBOXED)),
                                               IMPL_CODE)})
    async with PluginHost(tmp_path / "s.db", health_loop=False) as host:
        await host.enable("prov", tenant="acme")
        await host.enable("impl", tenant="acme")
        assert host._instances[("acme", "impl")].runner.sandboxed
        [r] = await host.call("prov_score", tenant="acme", text="abc", weight=2)
        assert (r.plugin, r.success, r.result) == ("impl", True, 6), r.error
        [r] = await host.call("prov_score", tenant="acme", text="bad-type")
        assert not r.success and "must return int" in r.error
        assert await host.first("prov_pick", tenant="acme", options=["q"]) == "impl:q"
        with pytest.raises(HookArgumentError, match="argument text must be str"):
            await host.call("prov_score", tenant="acme", text=1)
        await host.enable("impl", tenant="acme", grant=[])
        [r] = await host.call("prov_score", tenant="acme", text="x")
        assert not r.success and r.error_kind == "permission"


async def test_conformance_checks_signatures_of_provided_hooks(two, manifest_text) -> None:
    from erp_plugins_core._conformance import check_conformance

    report = await check_conformance("impl")
    assert report.ok, str(report)
    two.install("erp-impl-bad", plugins={"impl_bad": (manifest_text("impl_bad", extra=IMPL),
                                                      IMPL_CODE.replace("def score(self, text, weight)",
                                                                        "def score(self, text)"))})
    report = await check_conformance("impl_bad")
    assert any("hooks: prov_score -> method score: has no parameter 'weight'" in p for p in report.problems), \
        report.problems


def test_list_json_shows_provided_hooks_and_call_reaches_them(two, tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from erp_plugins_core._cli import cli

    runner = CliRunner()
    state = str(tmp_path / "cli.db")
    listed = runner.invoke(cli, ["--state", state, "list", "--json"])
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["prov"]["provides_hooks"] == ["prov_score", "prov_pick"] and rows["prov"]["valid"]
    assert rows["impl"]["hooks"] == ["prov_score", "prov_pick"] and rows["impl"]["provides_hooks"] == []
    for name in ("prov", "impl"):
        done = runner.invoke(cli, ["--state", state, "enable", name, "--tenant", "acme", "--trust"])
        assert done.exit_code == 0, done.output
    called = runner.invoke(cli, ["--state", state, "call", "prov_score", "--tenant", "acme",
                                 "--args-json", '{"text": "abc", "weight": 2}', "--json"])
    assert called.exit_code == 0, called.output
    assert [(r["plugin"], r["result"]) for r in json.loads(called.stdout)] == [("impl", 6)]
    bad = runner.invoke(cli, ["--state", state, "call", "prov_score", "--tenant", "acme", "--arg", "text=a",
                              "--arg", "weight=2"])
    assert bad.exit_code == 2 and "argument weight must be int or null, got str" in bad.output
    unknown = runner.invoke(cli, ["--state", state, "call", "prov_nope", "--tenant", "acme"])
    assert unknown.exit_code == 2 and "no hook named 'prov_nope'" in unknown.output and "prov_score" in unknown.output
