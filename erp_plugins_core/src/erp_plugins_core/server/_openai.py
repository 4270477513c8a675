"""OpenAI-compatible routes under /v1/openai: any OpenAI client can use a tenant's AI providers.

Chat completions go to `ai_request` (or `ai_stream` with `stream: true`) through `host.first_result` and
`host.stream_tagged` limited to `ai_provider` plugins, so the tenant's providers are tried in priority order
with fallback. The tenant is the token's; a platform token names it in the `ERP-Tenant` header. Errors are
problem+json that also carry OpenAI's `{"error": {"message", "type", "code"}}`, so OpenAI SDKs show the message.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import PluginError
from .._interface import PluginType
from ._problems import Problem, from_exception, problem_response
from ._runtime import ServerRuntime, read_object
from ._sse import EventStream, event

TENANT_HEADER = "erp-tenant"
#: Only plugins of this manifest type answer here (a business plugin implementing ai_request does not).
PROVIDERS = PluginType.AI_PROVIDER.value
DEFAULT_MODEL = "erp-plugins"


def _rt(request: Request) -> ServerRuntime:
    return request.app.state.rt  # type: ignore[no-any-return]


def _tenant(request: Request, rt: ServerRuntime) -> str:
    """The token's tenant (or, for a platform token, the ERP-Tenant header's), checked like every route."""
    rec = rt.auth.authenticate(request)
    named = request.headers.get(TENANT_HEADER)
    tenant = named or rec.tenant
    if tenant is None:
        raise Problem(400, "a platform token must name the tenant in the ERP-Tenant header")
    rt.auth.authorize(rec, request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    return tenant


def _openai_error(exc: BaseException) -> Response:
    p = from_exception(exc)
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error"}.get(p.status,
                                                                                             "api_error")
    extra = {**p.extra, "error": {"message": p.detail, "type": kind, "code": p.status}}
    return problem_response(p.status, p.detail, headers=p.headers, extra=extra)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts can be passed on
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise Problem(422, f"{where}: only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise Problem(422, f"{where} must be a string or a list of text parts")


def chat_arguments(body: dict[str, Any]) -> dict[str, Any]:
    """ai_request/ai_stream arguments for an OpenAI chat body: the last user message is the prompt."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Problem(422, "messages must be a non-empty list of {role, content} objects")
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise Problem(422, f"messages[{i}] must be an object with a role and a content")
        text = _text(m.get("content"), f"messages[{i}].content")
        if m["role"] in ("system", "developer"):
            system.append(text)
        else:
            turns.append({"role": m["role"], "content": text})
    if not turns or turns[-1]["role"] != "user":
        raise Problem(422, "the last message must have the role user")
    context: dict[str, Any] = {"messages": turns[:-1]}
    if system:
        context["system"] = "\n\n".join(system)
    for key in ("temperature", "max_tokens"):
        if body.get(key) is not None:
            context[key] = body[key]
    if body.get("max_completion_tokens") is not None and "max_tokens" not in context:
        context["max_tokens"] = body["max_completion_tokens"]
    return {"prompt": turns[-1]["content"], "context": context}


def _usage(usage: dict[str, int] | None) -> dict[str, int] | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(usage.get("total_tokens", prompt + completion))}


async def chat_completions(request: Request) -> Response:
    rt = _rt(request)
    try:
        tenant = _tenant(request, rt)
        body = await read_object(request)
        args = chat_arguments(body)
        model = body.get("model") if isinstance(body.get("model"), str) else DEFAULT_MODEL
        user = {"token": request.state.token_id}
        if body.get("stream"):
            return await _chat_stream(rt, tenant, model, args, user)
        result = await rt.host.first_result("ai_request", tenant=tenant, user_context=user,
                                            plugin_type=PROVIDERS, **args)
    except (Problem, PluginError) as exc:
        return _openai_error(exc)
    answer = result.result if isinstance(result.result, str) else str(result.result)
    out: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": result.plugin,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop",
                     "logprobs": None}],
    }
    usage = _usage(result.usage)
    if usage is not None:
        out["usage"] = usage
    return JSONResponse(out, headers={"x-erp-plugin": result.plugin})


async def _chat_stream(rt: ServerRuntime, tenant: str, model: str, args: dict[str, Any],
                       user: dict[str, Any]) -> Response:
    chunks = rt.host.stream_tagged("ai_stream", tenant=tenant, user_context=user, plugin_type=PROVIDERS, **args)
    try:
        first: tuple[str, Any] | None = await chunks.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()
        raise
    closing = event(None, {"error": {"message": "the server is shutting down; retry", "type": "api_error",
                                     "code": 503}})
    return EventStream(_openai_events(chunks, first, model), closing=closing)  # type: ignore[return-value]


async def _openai_events(chunks: AsyncIterator[tuple[str, Any]], first: tuple[str, Any] | None,
                         model: str) -> AsyncIterator[bytes]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}

    def delta(content: str | None, finish: str | None = None, role: bool = False) -> bytes:
        d: dict[str, Any] = {"role": "assistant"} if role else {}
        if content is not None:
            d["content"] = content
        return event(None, {**base, "choices": [{"index": 0, "delta": d, "finish_reason": finish,
                                                 "logprobs": None}]})

    try:
        if first is not None:
            yield delta(str(first[1]), role=True)
            async for _plugin, text in chunks:
                yield delta(str(text))
        yield delta(None, "stop")
        yield event(None, "[DONE]")
    except Exception as exc:
        p = from_exception(exc)
        yield event(None, {"error": {"message": p.detail, "type": "api_error", "code": p.status}})
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


async def embeddings(request: Request) -> Response:
    rt = _rt(request)
    try:
        tenant = _tenant(request, rt)
        body = await read_object(request)
        given = body.get("input")
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise Problem(422, "input must be a string or a non-empty list of strings (token arrays are not "
                               "supported)")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise Problem(422, f"encoding_format must be float or base64, got {fmt!r}")
        model = body.get("model") if isinstance(body.get("model"), str) else DEFAULT_MODEL
        result = await rt.host.first_result("ai_embedding", tenant=tenant, user_context={
            "token": request.state.token_id}, plugin_type=PROVIDERS, texts=texts)
    except (Problem, PluginError) as exc:
        return _openai_error(exc)
    data = []
    for i, vec in enumerate(result.result or []):
        emb: Any = [float(x) for x in vec]
        if fmt == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(emb)}f", *emb)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    out: dict[str, Any] = {"object": "list", "data": data, "model": model}
    usage = result.usage
    if usage:
        prompt = int(usage.get("prompt_tokens", 0))
        out["usage"] = {"prompt_tokens": prompt, "total_tokens": int(usage.get("total_tokens", prompt))}
    return JSONResponse(out, headers={"x-erp-plugin": result.plugin})


async def models(request: Request) -> Response:
    rt = _rt(request)
    try:
        tenant = _tenant(request, rt)
    except (Problem, PluginError) as exc:
        return _openai_error(exc)
    rows = sorted((r for r in await asyncio.to_thread(rt.store.list, tenant) if r.enabled),
                  key=lambda r: (r.priority, r.plugin))
    data = []
    for row in rows:
        rec = rt.host.catalog.get(row.plugin)
        if rec is None or rec.manifest is None or rec.manifest.plugin_type is not PluginType.AI_PROVIDER:
            continue
        data.append({"id": row.plugin, "object": "model", "created": int(row.updated_at), "owned_by": row.plugin})
    return JSONResponse({"object": "list", "data": data})


ROUTES = [
    Route("/v1/openai/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/openai/embeddings", embeddings, methods=["POST"]),
    Route("/v1/openai/models", models, methods=["GET"]),
]
