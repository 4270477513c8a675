"""The admin console at `/`: server-rendered pages (Jinja2), forms with CSRF tokens, no JavaScript.

Sign in with an admin token (one tenant) or a platform admin token (every tenant). Pages: the catalog, a
plugin's full check (integrity, code scan), a tenant's plugins with health and audit, and a plugin's
config form generated from its manifest. Everything goes through `PluginHost`, as the API does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .._catalog import ACCEPTED_FINDINGS, acceptance_key, deep_check
from .._errors import ConfigError, PluginError
from .._shapes import audit_rows, plugin_rows
from .._state import validate_tenant
from ._forms import build_fields, field_errors, read_form
from ._problems import Problem, from_exception
from ._runtime import ServerRuntime
from ._session import COOKIE, LOGIN_CSRF, Session, check_csrf, open_session, seal, set_cookie
from ._templates import render


def _rt(request: Request) -> ServerRuntime:
    return request.app.state.rt  # type: ignore[no-any-return]


def _session(request: Request) -> Session | None:
    rt = _rt(request)
    return open_session(request, rt.host.box, rt.auth.lookup)


def _redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303)


def _error_page(request: Request, session: Session | None, status: int, message: str) -> Response:
    return render(request, "error.html", {"session": session, "csrf": session.csrf if session else "",
                                          "title": "Error", "status": status, "message": message}, status)


def _allowed(session: Session, tenant: str) -> bool:
    return session.token.tenant is None or session.token.tenant == tenant


async def login_page(request: Request) -> Response:
    if _session(request) is not None:
        return _redirect("/")
    csrf = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"title": "Sign in", "csrf": csrf, "error": ""})
    set_cookie(response, LOGIN_CSRF, csrf, request, max_age=3600)
    return response


async def login(request: Request) -> Response:
    rt = _rt(request)
    form = await request.form()
    check_csrf(request.cookies.get(LOGIN_CSRF, ""), form.get("csrf"))
    text = form.get("token")
    error = ""
    rec = None
    try:
        rec = rt.auth.check(str(text or "").strip())
    except Problem as exc:
        error = exc.detail
    if rec is not None and rec.scope != "admin":
        error = f"token {rec.id} has scope {rec.scope!r}; the console needs an admin token"
    if error:
        csrf = secrets.token_urlsafe(24)
        response = render(request, "login.html", {"title": "Sign in", "csrf": csrf, "error": error}, 401)
        set_cookie(response, LOGIN_CSRF, csrf, request, max_age=3600)
        return response
    assert rec is not None
    rt.auth.note(rec, request, rec.tenant)
    value, _csrf = seal(rt.host.box, rec.id)
    response = _redirect("/" if rec.tenant is None else f"/tenants/{quote(rec.tenant)}")
    set_cookie(response, COOKIE, value, request)
    response.delete_cookie(LOGIN_CSRF, path="/")
    return response


async def logout(request: Request) -> Response:
    session = _session(request)
    if session is not None:
        check_csrf(session.csrf, (await request.form()).get("csrf"))
    response = _redirect("/login")
    response.delete_cookie(COOKIE, path="/")
    return response


def _signed_in(request: Request) -> Session:
    session = _session(request)
    if session is None:
        raise _NeedLogin()
    return session


class _NeedLogin(Exception):
    pass


def _page(handler: Any) -> Any:
    """Wrap a console handler: no session -> the sign-in page; errors -> an error page with the message."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request, _signed_in(request))
        except _NeedLogin:
            return _redirect("/login")
        except (Problem, PluginError) as exc:
            p = from_exception(exc)
            return _error_page(request, _session(request), p.status, p.detail)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


@_page
async def home(request: Request, session: Session) -> Response:
    """The catalog, and the tenants this session may manage."""
    rt = _rt(request)
    if session.token.tenant is not None:
        tenants = [session.token.tenant]
    else:
        tenants = await asyncio.to_thread(rt.store.tenants)
    rt.auth.note(session.token, request, session.token.tenant)
    return render(request, "home.html", {"session": session, "csrf": session.csrf, "title": "Plugins",
                                         "plugins": plugin_rows(rt.host.catalog), "tenants": tenants})


@_page
async def open_tenant(request: Request, session: Session) -> Response:
    """The platform user's "open tenant" form."""
    tenant = request.query_params.get("tenant", "")
    try:
        validate_tenant(tenant)
    except ConfigError as exc:
        raise Problem(422, str(exc)) from None
    return _redirect(f"/tenants/{quote(tenant)}")


@_page
async def check_page(request: Request, session: Session) -> Response:
    """One plugin's full check: manifest, dependencies, installed files against RECORD, code-scan findings."""
    rt = _rt(request)
    rec = rt.host.record(request.path_params["name"])
    accepted = json.loads(await asyncio.to_thread(rt.store.get_setting, ACCEPTED_FINDINGS) or "{}")
    report = await asyncio.to_thread(deep_check, rec, accepted_findings=accepted.get(rec.name) == acceptance_key(rec))
    rt.auth.note(session.token, request, session.token.tenant)
    return render(request, "check.html", {"session": session, "csrf": session.csrf, "title": f"Check {rec.name}",
                                          "report": report.to_json(), "warnings": report.warnings,
                                          "row": next(r for r in plugin_rows(rt.host.catalog)
                                                      if r["name"] == rec.name)})


def _tenant_of(request: Request, session: Session) -> str:
    tenant = request.path_params["tenant"]
    if not _allowed(session, tenant):
        raise Problem(403, f"token {session.token.id} belongs to another tenant and cannot act on tenant {tenant!r}")
    try:
        validate_tenant(tenant)
    except ConfigError as exc:
        raise Problem(404, f"unknown tenant: {exc}") from None
    _rt(request).auth.note(session.token, request, tenant)
    return tenant


@_page
async def tenant_page(request: Request, session: Session) -> Response:
    """A tenant's plugins with their state, health (last check and its error) and the audit log."""
    rt = _rt(request)
    tenant = _tenant_of(request, session)
    rows = plugin_rows(rt.host.catalog, tenant, {r.plugin: r for r in await asyncio.to_thread(rt.store.list, tenant)})
    health = {h.plugin: h for h in await rt.host.health(tenant)} if any(r["tenant"]["enabled"] for r in rows) else {}
    audit = audit_rows(reversed(await asyncio.to_thread(rt.store.audit, tenant, 30)))
    return render(request, "tenant.html", {
        "session": session, "csrf": session.csrf, "title": f"Tenant {tenant}", "tenant": tenant, "rows": rows,
        "health": health, "audit": audit, "flash": request.query_params.get("done")})


async def _plugin_context(rt: ServerRuntime, tenant: str, name: str) -> tuple[Any, Any, dict[str, Any] | None]:
    rec = rt.host.record(name)
    if rec.manifest is None:
        raise Problem(409, f"plugin {name!r} is invalid: {'; '.join(rec.errors)}")
    row = await asyncio.to_thread(rt.store.get, tenant, name)
    current = await asyncio.to_thread(rt.host.config_of, name, tenant=tenant) if row is not None else None
    return rec, row, current


def _plugin_page(request: Request, session: Session, tenant: str, rec: Any, row: Any, fields: list[Any],
                 error: str = "", status: int = 200, form: Any = None) -> Response:
    m = rec.manifest
    granted = set(row.granted) if row is not None else set(m.permissions)
    if form is not None:
        granted = set(form.getlist("grant"))
    priority = (form.get("priority") if form is not None else None) or (str(row.priority) if row else "")
    return render(request, "plugin.html", {
        "session": session, "csrf": session.csrf, "title": f"{rec.name} for {tenant}", "tenant": tenant,
        "plugin": rec, "manifest": m, "row": row, "fields": fields, "granted": granted, "priority": priority,
        "error": error}, status)


@_page
async def plugin_page(request: Request, session: Session) -> Response:
    """The config form of one plugin for one tenant."""
    rt = _rt(request)
    tenant = _tenant_of(request, session)
    rec, row, current = await _plugin_context(rt, tenant, request.path_params["name"])
    return _plugin_page(request, session, tenant, rec, row, build_fields(rec.manifest, current))


@_page
async def enable_submit(request: Request, session: Session) -> Response:
    """Enable (or reconfigure) from the form; problems are shown next to their fields."""
    rt = _rt(request)
    tenant = _tenant_of(request, session)
    form = await request.form()
    check_csrf(session.csrf, form.get("csrf"))
    rec, row, current = await _plugin_context(rt, tenant, request.path_params["name"])
    m = rec.manifest
    fields = build_fields(m, current)

    def keep_secret(key: str) -> Any:
        stored = row.config.get(key) if row is not None else None
        if isinstance(stored, dict) and "$secret" in stored:
            return json.loads(rt.host.box.decrypt(stored["$secret"]))
        return None

    try:
        config = read_form(m, form, keep_secret)
        priority_text = str(form.get("priority") or "").strip()
        if priority_text and not priority_text.lstrip("-").isdigit():
            raise Problem(422, f"priority must be a whole number, got {priority_text!r}")
        trust = form.get("trust") == "yes"
        if not m.security.sandbox and not trust:
            raise Problem(409, f"plugin {rec.name!r} runs unsandboxed in the server's process: tick the trust "
                               f"confirmation to enable it")
        await rt.host.enable(rec.name, tenant=tenant, config=config, grant=list(form.getlist("grant")),
                             trust=trust, priority=int(priority_text) if priority_text else None)
        await asyncio.to_thread(rt.auth.record_action, session.token, tenant, rec.name, "enable", "console")
    except ConfigError as exc:
        rest = field_errors(exc, fields)
        for f in fields:  # what the user typed comes back (never a sensitive value)
            if f.kind != "password":
                typed = form.get(f"config.{f.key}")
                f.value = typed if isinstance(typed, str) else f.value
        return _plugin_page(request, session, tenant, rec, row, fields, rest, 422, form)
    except (Problem, PluginError) as exc:
        p = from_exception(exc)
        return _plugin_page(request, session, tenant, rec, row, fields, p.detail, p.status, form)
    return _redirect(f"/tenants/{quote(tenant)}?done={quote('enabled ' + rec.name)}")


@_page
async def disable_submit(request: Request, session: Session) -> Response:
    rt = _rt(request)
    tenant = _tenant_of(request, session)
    form = await request.form()
    check_csrf(session.csrf, form.get("csrf"))
    name = request.path_params["name"]
    await rt.host.disable(name, tenant=tenant)
    await asyncio.to_thread(rt.auth.record_action, session.token, tenant, name, "disable", "console")
    return _redirect(f"/tenants/{quote(tenant)}?done={quote('disabled ' + name)}")


ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/tenant", open_tenant, methods=["GET"]),
    Route("/catalog/{name}", check_page, methods=["GET"]),
    Route("/tenants/{tenant}", tenant_page, methods=["GET"]),
    Route("/tenants/{tenant}/plugins/{name}", plugin_page, methods=["GET"]),
    Route("/tenants/{tenant}/plugins/{name}", enable_submit, methods=["POST"]),
    Route("/tenants/{tenant}/plugins/{name}/disable", disable_submit, methods=["POST"]),
]
