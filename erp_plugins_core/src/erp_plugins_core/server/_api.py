"""The JSON API under /v1: the CLI's commands over HTTP, with the CLI's `--json` shapes and messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import PluginError
from .._shapes import audit_rows, config_shape, plugin_rows
from ._problems import Problem, from_exception, problem_body
from ._runtime import CallFiles, ServerRuntime, hook_arguments, read_object
from ._sse import EventStream, event

_ENABLE_KEYS = {"config", "grant", "trust", "priority"}


def _rt(request: Request) -> ServerRuntime:
    return request.app.state.rt  # type: ignore[no-any-return]


def _path(request: Request, name: str) -> str:
    return str(request.path_params[name])


async def list_plugins(request: Request) -> Response:
    rt = _rt(request)
    rt.auth.require(request, tenant=None, scope="call")
    return JSONResponse(plugin_rows(rt.host.catalog))


async def tenant_rows(rt: ServerRuntime, tenant: str) -> list[dict[str, Any]]:
    """`list --tenant T --json`."""
    status = {r.plugin: r for r in await asyncio.to_thread(rt.store.list, tenant)}
    return plugin_rows(rt.host.catalog, tenant, status)


async def list_tenant_plugins(request: Request) -> Response:
    rt = _rt(request)
    tenant = _path(request, "tenant")
    rt.auth.require(request, tenant=tenant, scope="call")
    try:
        from .._state import validate_tenant

        validate_tenant(tenant)
    except PluginError as exc:
        raise Problem(404, f"unknown tenant: {exc}") from None
    return JSONResponse(await tenant_rows(rt, tenant))


def _enable_body(body: dict[str, Any], manifest: Any) -> dict[str, Any]:
    unknown = sorted(set(body) - _ENABLE_KEYS)
    if unknown:
        raise Problem(422, f"unknown key(s) {', '.join(unknown)}; the body takes: config, grant, trust, priority")
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise Problem(422, f"config must be an object, got {type(config).__name__}")
    grant = body.get("grant")
    if grant is not None and (not isinstance(grant, list) or not all(isinstance(g, str) for g in grant)):
        raise Problem(422, "grant must be a list of permission names (or absent: grant every declared permission)")
    if grant is not None:
        undeclared = [p for p in grant if p not in manifest.permissions]
        if undeclared:
            raise Problem(422, f"cannot grant {', '.join(undeclared)} to {manifest.name!r}: its plugin.yaml does "
                               f"not declare {'it' if len(undeclared) == 1 else 'them'} (declared: "
                               f"{', '.join(manifest.permissions) or 'none'})")
    trust = body.get("trust", False)
    if not isinstance(trust, bool):
        raise Problem(422, f"trust must be true or false, got {type(trust).__name__}")
    priority = body.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise Problem(422, f"priority must be an integer, got {type(priority).__name__}")
    return {"config": config, "grant": grant, "trust": trust, "priority": priority}


async def enable_plugin(request: Request) -> Response:
    rt = _rt(request)
    tenant, name = _path(request, "tenant"), _path(request, "name")
    token = rt.auth.require(request, tenant=tenant, scope="admin")
    body = await read_object(request)
    rec = rt.host.record(name)
    if rec.manifest is None:
        raise Problem(409, f"plugin {name!r} is invalid: {'; '.join(rec.errors)}")
    await rt.host.enable(name, tenant=tenant, **_enable_body(body, rec.manifest))
    await asyncio.to_thread(rt.auth.record_action, token, tenant, name, "enable", "api")
    return JSONResponse(await _row_of(rt, tenant, name))


async def _row_of(rt: ServerRuntime, tenant: str, name: str) -> dict[str, Any]:
    return next(r for r in await tenant_rows(rt, tenant) if r["name"] == name)


async def disable_plugin(request: Request) -> Response:
    rt = _rt(request)
    tenant, name = _path(request, "tenant"), _path(request, "name")
    token = rt.auth.require(request, tenant=tenant, scope="admin")
    rt.known_tenant(tenant)
    await rt.host.disable(name, tenant=tenant)
    await asyncio.to_thread(rt.auth.record_action, token, tenant, name, "disable", "api")
    return JSONResponse(await _row_of(rt, tenant, name))


async def plugin_config(request: Request) -> Response:
    rt = _rt(request)
    tenant, name = _path(request, "tenant"), _path(request, "name")
    rt.auth.require(request, tenant=tenant, scope="admin")
    rt.known_tenant(tenant)
    config = await asyncio.to_thread(rt.host.config_of, name, tenant=tenant)
    return JSONResponse(config_shape(name, tenant, config))


async def _call_setup(request: Request, files: CallFiles) -> tuple[ServerRuntime, str, str, dict[str, Any]]:
    """Token, tenant and arguments of a hook call; the plugin sees the token's id as its user context."""
    rt = _rt(request)
    tenant, hook = _path(request, "tenant"), _path(request, "hook")
    rec = rt.auth.require(request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    kwargs = await hook_arguments(request, rt, hook, files)
    return rt, tenant, hook, {"user_context": {"token": rec.id}, "kwargs": kwargs}


async def call_hook(request: Request) -> Response:
    files = CallFiles()
    try:
        rt, tenant, hook, how = await _call_setup(request, files)
        results = await rt.host.call(hook, tenant=tenant, user_context=how["user_context"], **how["kwargs"])
    finally:
        files.cleanup()
    return JSONResponse([r.to_json() for r in results])


async def call_first(request: Request) -> Response:
    files = CallFiles()
    try:
        rt, tenant, hook, how = await _call_setup(request, files)
        result = await rt.host.first_result(hook, tenant=tenant, user_context=how["user_context"], **how["kwargs"])
    finally:
        files.cleanup()
    return JSONResponse({"plugin": result.plugin, "result": result.result, "usage": result.usage,
                         "duration_s": round(result.duration_s, 6)})


async def call_stream(request: Request) -> Response:
    rt, tenant, hook, how = await _call_setup(request, CallFiles())
    chunks = rt.host.stream_tagged(hook, tenant=tenant, user_context=how["user_context"], **how["kwargs"])
    try:  # errors before the first chunk (unknown hook, bad arguments, every plugin failed) are plain problems
        first: tuple[str, Any] | None = await chunks.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()
        raise
    closing = event("error", problem_body(503, "the server is shutting down; retry the stream"))
    return EventStream(_sse_events(chunks, first), closing=closing)  # type: ignore[return-value]


async def _sse_events(chunks: AsyncIterator[tuple[str, Any]], first: tuple[str, Any] | None) -> AsyncIterator[bytes]:
    count, plugin = 0, None
    try:
        if first is not None:
            plugin = first[0]
            yield event("chunk", {"plugin": first[0], "text": first[1]})
            count = 1
            async for plugin, text in chunks:
                yield event("chunk", {"plugin": plugin, "text": text})
                count += 1
        yield event("end", {"plugin": plugin, "chunks": count})
    except Exception as exc:
        problem = from_exception(exc)
        yield event("error", problem_body(problem.status, problem.detail, problem.extra))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def emit_event(request: Request) -> Response:
    rt = _rt(request)
    tenant = _path(request, "tenant")
    rec = rt.auth.require(request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    body = await read_object(request)
    unknown = sorted(set(body) - {"event_type", "data"})
    if unknown:
        raise Problem(422, f"unknown key(s) {', '.join(unknown)}; the body takes: event_type, data")
    event_type, data = body.get("event_type"), body.get("data", {})
    if not isinstance(event_type, str) or not event_type:
        raise Problem(422, "event_type must be a non-empty string")
    if not isinstance(data, dict):
        raise Problem(422, f"data must be an object, got {type(data).__name__}")
    out = await rt.host.emit(tenant, event_type, data, user_context={"token": rec.id})  # as a hook call's user
    if isinstance(out, str):  # durable events: the stored event's id
        return JSONResponse({"id": out}, status_code=202)
    return JSONResponse({"id": None, "delivered": len(out or [])}, status_code=202)


async def tenant_health(request: Request) -> Response:
    rt = _rt(request)
    tenant = _path(request, "tenant")
    rt.auth.require(request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    return JSONResponse([r.to_json() for r in await rt.host.health(tenant)])


async def tenant_audit(request: Request) -> Response:
    rt = _rt(request)
    tenant = _path(request, "tenant")
    rt.auth.require(request, tenant=tenant, scope="admin")
    rt.known_tenant(tenant)
    text = request.query_params.get("limit")
    limit = None
    if text is not None:
        if not text.isdigit() or int(text) < 1:
            raise Problem(422, f"limit must be a whole number >= 1, got {text!r}")
        limit = int(text)
    entries = await asyncio.to_thread(rt.store.audit, tenant, limit)
    return JSONResponse(audit_rows(reversed(entries)))  # newest first


ROUTES = [  # the hook calls first: a request is matched against the routes in this order
    Route("/v1/tenants/{tenant}/hooks/{hook}", call_hook, methods=["POST"]),
    Route("/v1/tenants/{tenant}/hooks/{hook}/first", call_first, methods=["POST"]),
    Route("/v1/tenants/{tenant}/hooks/{hook}/stream", call_stream, methods=["POST"]),
    Route("/v1/plugins", list_plugins, methods=["GET"]),
    Route("/v1/tenants/{tenant}/plugins", list_tenant_plugins, methods=["GET"]),
    Route("/v1/tenants/{tenant}/plugins/{name}", enable_plugin, methods=["PUT"]),
    Route("/v1/tenants/{tenant}/plugins/{name}", disable_plugin, methods=["DELETE"]),
    Route("/v1/tenants/{tenant}/plugins/{name}/config", plugin_config, methods=["GET"]),
    Route("/v1/tenants/{tenant}/events", emit_event, methods=["POST"]),
    Route("/v1/tenants/{tenant}/health", tenant_health, methods=["GET"]),
    Route("/v1/tenants/{tenant}/audit", tenant_audit, methods=["GET"]),
]
