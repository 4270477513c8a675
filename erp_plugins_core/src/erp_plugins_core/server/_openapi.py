"""The OpenAPI 3.1 document of every route and shape (`/openapi.json`), and a docs page rendered from it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._hookspecs import HOOKS

_S = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _S + name}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


SCHEMAS: dict[str, Any] = {
    "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "errors": {"type": "array", "items": {"type": "object"}}}},
    "TenantState": {"type": "object", "properties": {
        "name": {"type": "string"}, "enabled": {"type": "boolean"}, "state": {"type": "string"},
        "trusted": {"type": "boolean"}, "granted": {"type": "array", "items": {"type": "string"}},
        "priority": {"type": ["integer", "null"]}, "reason": {"type": ["string", "null"]}}},
    "Plugin": {"type": "object", "required": ["name", "version", "distribution", "plugin_type", "api_version",
                                              "hooks", "permissions", "valid", "errors"], "properties": {
        "name": {"type": "string"}, "version": {"type": ["string", "null"]}, "distribution": {"type": "string"},
        "plugin_type": {"type": ["string", "null"]}, "api_version": {"type": ["string", "null"]},
        "hooks": {"type": "array", "items": {"type": "string"}},
        "permissions": {"type": "array", "items": {"type": "string"}}, "sandboxed": {"type": ["boolean", "null"]},
        "valid": {"type": "boolean"}, "errors": {"type": "array", "items": {"type": "string"}},
        "tenant": _ref("TenantState")}},
    "EnableBody": {"type": "object", "additionalProperties": False, "properties": {
        "config": {"type": "object", "description": "Values of the plugin's config_schema; env:NAME and "
                                                    "file:/PATH references allowed"},
        "grant": {"type": "array", "items": {"type": "string"}}, "trust": {"type": "boolean"},
        "priority": {"type": "integer"}}},
    "Config": {"type": "object", "required": ["plugin", "tenant", "config"], "properties": {
        "plugin": {"type": "string"}, "tenant": {"type": "string"},
        "config": {"type": "object", "description": "sensitive values shown as ***"}}},
    "HookArguments": {"type": "object", "description": "The hook's keyword arguments; see the hook table",
                      "additionalProperties": True},
    "HookResult": {"type": "object", "required": ["plugin", "success", "result", "error", "duration_s"],
                   "properties": {"plugin": {"type": "string"}, "success": {"type": "boolean"}, "result": {},
                                  "error": {"type": ["string", "null"]}, "duration_s": {"type": "number"},
                                  "error_kind": {"type": ["string", "null"]},
                                  "usage": {"type": ["object", "null"]}}},
    "FirstResult": {"type": "object", "required": ["plugin", "result"], "properties": {
        "plugin": {"type": "string"}, "result": {}, "usage": {"type": ["object", "null"]},
        "duration_s": {"type": "number"}}},
    "Event": {"type": "object", "required": ["event_type"], "properties": {
        "event_type": {"type": "string"}, "data": {"type": "object"}}},
    "EventAccepted": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": ["string", "null"]}, "delivered": {"type": "integer"}}},
    "Delivery": {"type": "object", "required": ["plugin", "state", "attempts", "error"], "properties": {
        "id": {"type": ["string", "null"], "description": "null while its event waits for the relay"},
        "plugin": {"type": "string"}, "state": {"enum": ["queued", "running", "succeeded", "failed"]},
        "success": {"type": "boolean"}, "attempts": {"type": "integer"}, "result": {},
        "error": {"type": ["string", "null"]}, "error_kind": {"type": ["string", "null"]}}},
    "Job": {"type": "object", "required": ["id", "hook", "tenant", "state", "results", "attempts", "error"],
            "description": "host.job(id): an event (kind event, hook on_event) or a submitted job", "properties": {
        "id": {"type": "string"}, "kind": {"enum": ["event", "job"]}, "hook": {"type": "string"},
        "tenant": {"type": "string"}, "state": {"enum": ["queued", "running", "succeeded", "failed"]},
        "results": _array("Delivery"), "attempts": {"type": "integer"}, "error": {"type": ["string", "null"]},
        "created": {"type": "number"}, "event_type": {"type": "string"}, "data": {"type": "object"},
        "source": {"type": ["string", "null"]}, "idempotency_key": {"type": ["string", "null"]}}},
    "Backlog": {"type": "object", "description": "deliveries by state", "properties": {
        s: {"type": "integer"} for s in ("queued", "running", "succeeded", "failed")}},
    "EventList": {"type": "object", "required": ["backlog", "events"], "properties": {
        "backlog": _ref("Backlog"), "events": _array("Job")}},
    "JobList": {"type": "object", "required": ["backlog", "jobs"], "properties": {
        "backlog": _ref("Backlog"), "jobs": _array("Job")}},
    "JobSubmit": {"type": "object", "required": ["hook"], "additionalProperties": False, "properties": {
        "hook": {"type": "string"}, "args": _ref("HookArguments"),
        "idempotency_key": {"type": "string", "maxLength": 200,
                            "description": "the same key for the same tenant gives the same job"}}},
    "JobAccepted": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
    "JobRetried": {"type": "object", "required": ["id", "retried", "job"], "properties": {
        "id": {"type": "string"}, "retried": {"type": "integer"}, "job": _ref("Job")}},
    "Health": {"type": "object", "required": ["plugin", "tenant", "healthy", "detail", "error"], "properties": {
        "plugin": {"type": "string"}, "tenant": {"type": "string"}, "healthy": {"type": "boolean"},
        "detail": {"type": "string"}, "error": {"type": ["string", "null"]}, "state": {"type": "string"},
        "host": {"type": "string"}}},
    "AuditEntry": {"type": "object", "required": ["time", "user", "tenant", "plugin", "action", "detail"],
                   "properties": {"time": {"type": "number"}, "user": {"type": "string"},
                                  "tenant": {"type": "string"}, "plugin": {"type": "string"},
                                  "action": {"type": "string"}, "detail": {"type": "object"}}},
    "ChatCompletionRequest": {"type": "object", "required": ["messages"], "properties": {
        "model": {"type": "string"}, "messages": {"type": "array", "items": {"type": "object", "properties": {
            "role": {"type": "string"}, "content": {"type": "string"}}}},
        "stream": {"type": "boolean"}, "temperature": {"type": "number"}, "max_tokens": {"type": "integer"}}},
    "ChatCompletion": {"type": "object", "properties": {
        "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "choices": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"}}},
    "EmbeddingsRequest": {"type": "object", "required": ["input"], "properties": {
        "model": {"type": "string"}, "input": {"oneOf": [{"type": "string"}, {"type": "array",
                                                                            "items": {"type": "string"}}]},
        "encoding_format": {"enum": ["float", "base64"]}}},
    "Embeddings": {"type": "object", "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object"}},
        "model": {"type": "string"}, "usage": {"type": "object"}}},
    "Models": {"type": "object", "properties": {"object": {"const": "list"},
                                                "data": {"type": "array", "items": {"type": "object"}}}},
}


def _op(summary: str, scope: str | None, ok: dict[str, Any], *, body: str | None = None, status: str = "200",
        errors: tuple[int, ...] = (401, 403), params: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok}}
    if scope:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs a token with scope `{scope}` for the tenant in the path (or a platform token)."
    for code in errors:
        op["responses"][str(code)] = {"description": "problem", "content": {
            "application/problem+json": {"schema": _ref("Problem")}}}
    if body:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": _ref(body)}}}
    op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    return op


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    t, tn, th = ("tenant",), ("tenant", "name"), ("tenant", "hook")
    sse = {"description": "text/event-stream: `event: chunk` with data {plugin, text}, then `event: end` or "
                          "`event: error` (a problem)",
           "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    hook_body = {"required": True, "content": {
        "application/json": {"schema": _ref("HookArguments")},
        "multipart/form-data": {"schema": {"type": "object", "description": "with --upload-dir: field `args` "
                                           "(JSON object) and file fields named as the hook's file arguments"}}}}
    paths: dict[str, Any] = {
        "/v1/plugins": {"get": _op("Every discovered plugin (list)", "call", _json(_array("Plugin")))},
        "/v1/tenants/{tenant}/plugins": {"get": _op("Plugins with their state for a tenant (list --tenant)", "call",
                                                    _json(_array("Plugin")), params=t)},
        "/v1/tenants/{tenant}/plugins/{name}": {
            "put": _op("Enable (or reconfigure) a plugin for a tenant", "admin", _json(_ref("Plugin")),
                       body="EnableBody", errors=(401, 403, 404, 409, 413, 422), params=tn),
            "delete": _op("Disable a plugin for a tenant", "admin", _json(_ref("Plugin")),
                          errors=(401, 403, 404, 409), params=tn)},
        "/v1/tenants/{tenant}/plugins/{name}/config": {"get": _op("Stored config, sensitive values redacted", "admin",
                                                                  _json(_ref("Config")), errors=(401, 403, 404),
                                                                  params=tn)},
        "/v1/tenants/{tenant}/hooks/{hook}": {"post": {**_op("Call a hook: one result per plugin", "call",
                                                            _json(_array("HookResult")),
                                                            errors=(400, 401, 403, 404, 413, 422), params=th),
                                                       "requestBody": hook_body}},
        "/v1/tenants/{tenant}/hooks/{hook}/first": {"post": {**_op("First success in priority order", "call",
                                                                  _json(_ref("FirstResult")),
                                                                  errors=(400, 401, 403, 404, 422, 502), params=th),
                                                             "requestBody": hook_body}},
        "/v1/tenants/{tenant}/hooks/{hook}/stream": {"post": _op("Stream a streaming hook as server-sent events",
                                                                 "call", sse, body="HookArguments",
                                                                 errors=(400, 401, 403, 404, 422, 502), params=th)},
        "/v1/tenants/{tenant}/events": {"post": _op("Emit an event", "call", _json(_ref("EventAccepted"), "accepted"),
                                                    body="Event", status="202", errors=(401, 403, 404, 422),
                                                    params=t)},
        "/v1/tenants/{tenant}/jobs": {
            "get": _op("The tenant's jobs, newest first, with the backlog (jobs --tenant --json)", "call",
                       _json(_ref("JobList")), errors=(401, 403, 404, 422), params=t),
            "post": _op("Submit a hook as a background job (host.submit)", "call",
                        _json(_ref("JobAccepted"), "accepted"), body="JobSubmit", status="202",
                        errors=(400, 401, 403, 404, 409, 422), params=t)},
        "/v1/tenants/{tenant}/jobs/{id}": {"get": _op(
            "One event or job of the tenant (host.job); another tenant's id is not found", "call",
            _json(_ref("Job")), errors=(401, 403, 404), params=("tenant", "id"))},
        "/v1/tenants/{tenant}/jobs/{id}/retry": {"post": _op(
            "Queue the failed deliveries of an event or job again (retry ID)", "admin",
            _json(_ref("JobRetried"), "accepted"), status="202", errors=(401, 403, 404, 409), params=("tenant", "id"))},
        "/v1/tenants/{tenant}/health": {"get": _op("Health of every enabled plugin", "call", _json(_array("Health")),
                                                   errors=(401, 403, 404), params=t)},
        "/v1/tenants/{tenant}/audit": {"get": {**_op("Audit log, newest first", "admin", _json(_array("AuditEntry")),
                                                     errors=(401, 403, 404, 422), params=t)}},
        "/v1/openai/chat/completions": {"post": _op(
            "OpenAI-compatible chat completion over the token's tenant's ai_provider plugins (stream: true gives "
            "OpenAI's SSE)", "call", _json(_ref("ChatCompletion")), body="ChatCompletionRequest",
            errors=(400, 401, 403, 422, 502))},
        "/v1/openai/embeddings": {"post": _op("OpenAI-compatible embeddings", "call", _json(_ref("Embeddings")),
                                              body="EmbeddingsRequest", errors=(400, 401, 403, 422, 502))},
        "/v1/openai/models": {"get": _op("The tenant's ai_provider plugins as models", "call", _json(_ref("Models")))},
        "/healthz": {"get": _op("Liveness", None, _json({"type": "object"}), errors=())},
        "/readyz": {"get": _op("Readiness (the state store answers)", None, _json({"type": "object"}), errors=(503,))},
    }
    paths["/v1/tenants/{tenant}/events"]["get"] = _op(
        "The tenant's events, newest first, with the backlog (events --tenant --json)", "call",
        _json(_ref("EventList")), errors=(401, 403, 404, 422), params=t)
    limit = {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}}
    paths["/v1/tenants/{tenant}/audit"]["get"]["parameters"].append(limit)
    paths["/v1/tenants/{tenant}/events"]["get"]["parameters"] += [
        {**limit, "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 50}},
        {"name": "failed", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
         "description": "only events with a delivery that failed for good"}]
    paths["/v1/tenants/{tenant}/jobs"]["get"]["parameters"] += [
        {**limit, "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 50}},
        {"name": "state", "in": "query", "required": False,
         "schema": {"enum": ["queued", "running", "succeeded", "failed"]},
         "description": "only jobs with a part in this state (succeeded: all parts)"}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "erp-plugins", "version": _version(),
                 "description": "Plugins of the ERP per tenant over HTTP. Hooks: " + ", ".join(HOOKS)},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("erp-plugins-core")
    except PackageNotFoundError:
        return "0"


async def openapi_json(request: Request) -> Response:
    return JSONResponse(document())


async def docs_page(request: Request) -> Response:
    from ._templates import render

    doc = document()
    ops = [(method.upper(), path, op) for path, item in doc["paths"].items() for method, op in item.items()]
    return render(request, "docs.html", {"ops": ops, "schemas": doc["components"]["schemas"], "title": "API"})


ROUTES = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
]
