"""health_check() answers: `{healthy: bool}` or the seed's `{status: ...}`; anything else is quoted, redacted."""

from __future__ import annotations

import pytest

from erp_plugins_core import PluginHost
from erp_plugins_core._health import health_verdict
from erp_plugins_core._redact import Redactor

SECRET = "sk-health-secret-9876"
CODE = """
from erp_plugins_core import PluginInterface
class Plugin(PluginInterface):
    async def health_check(self):
        import json
        return json.loads(self.config["answer"].replace("SECRET", self.config["api_key"]))
"""
MANIFEST = """
security: {sandbox: false}
config_schema:
  type: object
  properties:
    answer: {type: string}
    api_key: {type: string, sensitive: true, default: "sk-health-secret-9876"}
"""


@pytest.mark.parametrize(("answer", "healthy"), [
    ({"status": "healthy"}, True), ({"status": "OK"}, True), ({"status": "Up"}, True), ({"status": "pass"}, True),
    ({"status": "degraded"}, False), ({"status": "down"}, False), ({"healthy": True}, True),
    ({"healthy": False, "status": "ok"}, False),
])
def test_both_shapes(answer, healthy):
    assert health_verdict(answer, Redactor()) == (healthy, None)


@pytest.mark.parametrize("answer", [None, "healthy", {"healthy": "yes"}, {"status": 1}, {"status": ""}, {}, [1]])
def test_neither_shape_is_an_error_quoting_the_answer(answer):
    healthy, problem = health_verdict(answer, Redactor())
    assert healthy is False and problem is not None and f"got {answer!r}" in problem


def test_the_quote_is_redacted_and_truncated():
    _, problem = health_verdict({"token": SECRET, "pad": "x" * 500}, Redactor([SECRET]))
    assert SECRET not in problem and "***" in problem and problem.endswith("...")
    assert len(problem) < 300


@pytest.mark.parametrize(("answer", "healthy", "error"), [
    ('{"status": "healthy"}', True, None),
    ('{"status": "UP", "detail": "fine"}', True, None),
    ('{"status": "degraded"}', False, "status 'degraded'"),
    ('{"status": "down", "error": "db gone"}', False, "db gone"),
    ('{"state": "SECRET"}', False, "got {'state': '***'}"),
])
async def test_host_health_reports(site, manifest_text, secret_key, tmp_path, answer, healthy, error):
    site.install("erp-h", plugins={"hp": (manifest_text("hp", extra=MANIFEST), CODE)})
    async with PluginHost(tmp_path / "s.db", health_loop=False) as host:
        await host.enable("hp", tenant="acme", trust=True, config={"answer": answer})
        [report] = await host.health("acme")
    assert report.healthy is healthy
    if error is None:
        assert report.error is None
    else:
        assert error in report.error and SECRET not in report.error


async def test_sandboxed_answers_are_judged_alike(site, manifest_text, secret_key, tmp_path) -> None:
    from erp_plugins_core._sandbox import sandbox_available

    reason = sandbox_available()
    if reason is not None:
        pytest.fail(f"the sandbox cannot start here, so sandboxed health answers are untested: {reason}")
    sandboxed = MANIFEST.replace("security: {sandbox: false}", "resources: {timeout: 20}")
    site.install("erp-h", plugins={"hp": (manifest_text("hp", extra=sandboxed), CODE)})
    async with PluginHost(tmp_path / "s.db", health_loop=False) as host:
        await host.enable("hp", tenant="ok", config={"answer": '{"status": "Pass"}'})
        await host.enable("hp", tenant="odd", config={"answer": '"fine SECRET"'})
        [ok] = await host.health("ok")
        [odd] = await host.health("odd")
    assert ok.healthy and ok.error is None
    assert not odd.healthy and "got 'fine ***'" in odd.error and SECRET not in odd.error
