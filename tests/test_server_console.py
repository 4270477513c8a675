"""The admin console in a real browser: Debian's chromium driven by Playwright, against `erp-plugins serve`.

Screenshots of the main pages are saved under tests/artifacts/console/ (printed by the tests).
"""

from __future__ import annotations

import os
import re
import shutil

import httpx
import pytest
from serverkit import API_KEY, ARTIFACTS, Fleet, shared_site, start_fleet

pytestmark = pytest.mark.timeout(300)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ARTIFACTS / "console"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("console")
    tmp.chmod(0o755)
    f = start_fleet(tmp, shared_site(), sandboxed=False)
    yield f
    f.server.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {SHOTS}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, fleet: Fleet):
    context = browser.new_context(base_url=fleet.url)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield pg
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors  # nothing the CSP had to block


def sign_in(page, token: str) -> None:
    page.goto("/")
    assert page.url.endswith("/login")
    page.get_by_label("Token").focus()
    page.keyboard.type(token)
    with page.expect_navigation():
        page.keyboard.press("Enter")  # keyboard only


def test_sign_in_and_the_catalog(page, fleet: Fleet) -> None:
    page.goto("/login")
    page.screenshot(path=SHOTS / "login.png", full_page=True)
    page.get_by_label("Token").fill("erp_tok_0123456789abcdef_" + "0" * 64)
    page.get_by_role("button", name="Sign in").click()
    assert page.locator("#token-error").inner_text() == "invalid token"
    page.get_by_label("Token").fill(fleet.token("acme_call"))
    page.get_by_role("button", name="Sign in").click()
    assert "needs an admin token" in page.locator("#token-error").inner_text()
    sign_in(page, fleet.token("platform"))
    assert page.get_by_role("heading", name="Plugins", exact=True).is_visible()
    catalog = page.get_by_role("table", name="Installed plugins").inner_text()
    assert "web_tool" in catalog and "boxed_stream" in catalog and "business_logic" in catalog
    assert "no: runs in the host" in catalog
    page.screenshot(path=SHOTS / "catalog.png", full_page=True)
    page.get_by_role("link", name="web_tool").first.click()
    assert "Code-scan findings" in page.content() and "Check" in page.content()
    page.screenshot(path=SHOTS / "check.png", full_page=True)


def test_enable_with_config_bad_value_secret_and_disable(page, fleet: Fleet) -> None:
    sign_in(page, fleet.token("platform"))
    page.get_by_label("Open tenant").fill("initech")
    page.get_by_role("button", name="Open").click()
    assert page.get_by_role("heading", name="Tenant initech").is_visible()
    page.locator("#plugin-web_tool").get_by_role("link", name="Enable web_tool").click()
    form_url = page.url
    # generated from the schema: types, enums, defaults, required, a write-only sensitive field, grants, trust
    assert page.get_by_label("api_key (required)").get_attribute("type") == "password"
    assert page.locator("#s-api_key").inner_text() == "not set"
    assert page.get_by_label("mode").locator("option").all_inner_texts() == ["(default: fast)", "fast", "careful"]
    assert page.get_by_label("retries").get_attribute("type") == "number"
    assert page.get_by_label("ai.embeddings").is_checked()
    assert "unsandboxed, inside the server's process" in page.locator("fieldset.trust").inner_text()
    # a bad value: the CLI's message next to the field
    page.get_by_label("api_key (required)").fill(API_KEY)
    page.get_by_label("greeting").fill("Good day")
    page.get_by_label("retries").fill("9")
    page.get_by_label(re.compile("^I trust web_tool")).check()
    page.get_by_role("button", name="Enable").click()
    error = page.locator("#e-retries")
    assert "config key retries: must be <= 5" in error.inner_text()
    assert page.get_by_label("retries").get_attribute("aria-invalid") == "true"
    assert API_KEY not in page.content()  # the typed secret is not sent back either
    page.screenshot(path=SHOTS / "bad-value.png", full_page=True)
    # fix it and enable: the plugin is active
    page.get_by_label("api_key (required)").fill(API_KEY)
    page.get_by_label("retries").fill("3")
    page.get_by_label("mode").select_option("careful")
    page.get_by_label("ai.embeddings").uncheck()
    page.get_by_label(re.compile("^I trust web_tool")).check()
    page.get_by_role("button", name="Enable").click()
    assert "enabled web_tool" in page.get_by_role("status").inner_text()
    row = page.locator("#plugin-web_tool")
    assert row.locator(".state").inner_text().startswith("active (trusted)")
    assert "ai.generate, email.send, files.read" in row.inner_text() and "healthy" in row.inner_text()
    page.screenshot(path=SHOTS / "tenant.png", full_page=True)
    with httpx.Client(base_url=fleet.url, headers=fleet.h("platform")) as c:
        answer = c.post("/v1/tenants/initech/hooks/ai_request/first", json={"prompt": "x"}).json()
    assert answer["result"] == "Good day x (careful)"
    # the sensitive value is never shown back: "set", blank field, not in the page source
    page.goto(form_url)
    assert page.locator("#s-api_key").inner_text().startswith("set")
    assert page.get_by_label("api_key (required)").input_value() == ""
    assert API_KEY not in page.content() and page.get_by_label("retries").input_value() == "3"
    page.screenshot(path=SHOTS / "config-form.png", full_page=True)
    # saving without retyping it keeps the stored secret
    page.get_by_label("greeting").fill("Hello again")
    page.get_by_label(re.compile("^I trust web_tool")).check()
    page.get_by_role("button", name="Save and restart").click()
    assert "enabled web_tool" in page.get_by_role("status").inner_text()
    with httpx.Client(base_url=fleet.url, headers=fleet.h("platform")) as c:
        assert c.post("/v1/tenants/initech/hooks/ai_request/first", json={"prompt": "secret"}).json()["result"] \
            == "the key is ***"  # the plugin still has the key (redacted on the way out)
    # disable, and see the audit line
    page.locator("#plugin-web_tool").get_by_role("button", name="Disable web_tool").click()
    assert "disabled web_tool" in page.get_by_role("status").inner_text()
    audit = [row for row in page.get_by_role("table", name="Newest first").locator("tbody tr").all_inner_texts()
             if "\ttoken_use\t" not in row]  # the server's periodic token-use entries may land in between
    platform_id = fleet.tokens["platform"]["id"]
    assert "web_tool" in audit[0] and "console:disable" in audit[0] and f"token:{platform_id}" in audit[0]
    assert "web_tool" in audit[1] and "\tdisable" in audit[1]
    assert page.locator("#plugin-web_tool .state").inner_text() == "not enabled"
    page.screenshot(path=SHOTS / "after-disable.png", full_page=True)


def test_a_tenant_token_cannot_see_another_tenant(page, fleet: Fleet) -> None:
    sign_in(page, fleet.token("acme_admin"))
    assert page.get_by_role("heading", name="Tenant acme").is_visible()
    page.goto("/")
    tenants = page.locator("ul.tenants").inner_text()
    assert "acme" in tenants and "globex" not in tenants and "initech" not in tenants
    for path in ("/tenants/globex", "/tenants/globex/plugins/web_tool"):
        response = page.goto(path)
        assert response.status == 403
        assert "another tenant" in page.content() and "Hi from globex" not in page.content()
    page.screenshot(path=SHOTS / "other-tenant-refused.png", full_page=True)


def test_forms_need_the_sessions_csrf_token(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.url, follow_redirects=False) as c:
        login = c.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
        assert c.post("/login", data={"csrf": "forged", "token": fleet.token("acme_admin")}).status_code == 403
        r = c.post("/login", data={"csrf": csrf, "token": fleet.token("acme_admin")})
        assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
        assert "samesite=strict" in r.headers["set-cookie"].lower()
        assert fleet.token("acme_admin") not in r.headers["set-cookie"]
        r = c.post("/tenants/acme/plugins/web_tool/disable", data={"csrf": "forged"})
        assert r.status_code == 403 and "CSRF" in r.text
        rows = c.get("/v1/tenants/acme/plugins", headers=fleet.h("acme_call")).json()
        assert next(x for x in rows if x["name"] == "web_tool")["tenant"]["enabled"]
        # a tenant session posting to another tenant's form is refused before anything happens
        page = c.get("/tenants/acme")
        session_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post("/tenants/globex/plugins/web_tool/disable", data={"csrf": session_csrf})
        assert r.status_code == 403 and "another tenant" in r.text
        r = c.post("/tenants/globex/plugins/web_tool", data={"csrf": session_csrf, "config.greeting": "pwned"})
        assert r.status_code == 403
    with httpx.Client(base_url=fleet.url) as c:
        cfg = c.get("/v1/tenants/globex/plugins/web_tool/config", headers=fleet.h("globex_admin")).json()
    assert cfg["config"]["greeting"] == "Hi from globex"


def test_env_references_in_the_form(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.url, follow_redirects=False) as c:
        login = c.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
        assert c.post("/login", data={"csrf": csrf, "token": fleet.token("platform")}).status_code == 303
        form = c.get("/tenants/umbrella/plugins/web_tool")
        session_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        r = c.post("/tenants/umbrella/plugins/web_tool", data={
            "csrf": session_csrf, "config.api_key": "env:WEB_TOOL_KEY", "config.tags": '["a", "b"]',
            "config.verbose": "true", "grant": ["ai.generate"], "trust": "yes"})
        assert r.status_code == 303, r.text
        page = c.get("/tenants/umbrella/plugins/web_tool").text
        assert 'value="env:WEB_TOOL_KEY"' in page  # a reference is not a secret: shown as given
        r = c.post("/tenants/umbrella/plugins/web_tool", data={
            "csrf": session_csrf, "config.api_key": "env:not a name", "trust": "yes"})
        assert r.status_code == 422 and "is not an environment variable name" in r.text
    with httpx.Client(base_url=fleet.url, headers=fleet.h("platform")) as c:
        cfg = c.get("/v1/tenants/umbrella/plugins/web_tool/config").json()["config"]
        assert cfg["api_key"] == "env:WEB_TOOL_KEY" and cfg["tags"] == ["a", "b"] and cfg["verbose"] is True
        assert c.post("/v1/tenants/umbrella/hooks/ai_request/first", json={"prompt": "secret"}).json()["result"] \
            == "the key is ***"
