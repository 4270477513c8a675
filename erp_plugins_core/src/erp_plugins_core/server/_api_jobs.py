"""Events and background jobs under /v1/tenants/{tenant}: the backlog, submit, one job, retry.

Listings are the CLI's `events --json` / `jobs --json` shapes (built by the same engine method); a job is
`host.job(id)`. A job or event of another tenant answers exactly as an unknown id does, so a token never
learns that it exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import AllPluginsFailed
from .._hookspecs import HOOKS
from .._jobs import STATES, JobNotFound
from ._problems import Problem
from ._runtime import ServerRuntime, _inside, read_object

__all__ = ["ROUTES", "own_work", "query_limit"]

_SUBMIT_KEYS = ("hook", "args", "idempotency_key")
#: Arguments of `PluginHost.submit` itself: a hook argument cannot carry these names.
_RESERVED = ("tenant", "idempotency_key", "user_context")
MAX_LIMIT = 10000


def _rt(request: Request) -> ServerRuntime:
    return request.app.state.rt  # type: ignore[no-any-return]


def _query(request: Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters; Problem 422 for one the route does not take (never silently ignored)."""
    allowed = tuple(allowed)
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise Problem(422, f"unknown query parameter(s) {', '.join(unknown)}; this route takes: "
                           f"{', '.join(allowed)}")
    return dict(request.query_params)


def query_limit(query: dict[str, str], default: int = 50) -> int:
    """`limit` as a whole number from 1 to 10000 (the CLI's --limit range)."""
    text = query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise Problem(422, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def _flag(query: dict[str, str], name: str) -> bool:
    text = query.get(name)
    if text is None:
        return False
    if text.lower() not in ("true", "false"):
        raise Problem(422, f"{name} must be true or false, got {text!r}")
    return text.lower() == "true"


def not_found(tenant: str, job_id: str) -> Problem:
    """The one answer for an id that is unknown, expired, or another tenant's."""
    return Problem(404, f"no event or job {job_id!r} for tenant {tenant!r} (never stored for this tenant, or "
                        f"removed after the retention period)")


async def own_work(rt: ServerRuntime, tenant: str, job_id: str) -> dict[str, Any]:
    """`host.job(id)` if the event or job belongs to `tenant`; else the not-found Problem (existence never leaks)."""
    if len(job_id) > 200:
        raise not_found(tenant, job_id[:40] + "...")
    try:
        view = await rt.host.job(job_id)
    except JobNotFound:
        raise not_found(tenant, job_id) from None
    if view["tenant"] != tenant:
        raise not_found(tenant, job_id)
    return view


async def list_events(request: Request) -> Response:
    rt = _rt(request)
    tenant = request.path_params["tenant"]
    rt.auth.require(request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    query = _query(request, ("failed", "limit"))
    return JSONResponse(await rt.host.events(tenant, failed=_flag(query, "failed"), limit=query_limit(query)))


async def list_jobs(request: Request) -> Response:
    rt = _rt(request)
    tenant = request.path_params["tenant"]
    rt.auth.require(request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    query = _query(request, ("state", "limit"))
    state = query.get("state")
    if state is not None and state not in STATES:
        raise Problem(422, f"state must be one of {', '.join(STATES)}, got {state!r}")
    return JSONResponse(await rt.host.jobs(tenant=tenant, state=state, limit=query_limit(query)))


def _file_arguments(rt: ServerRuntime, hook: str, args: dict[str, Any]) -> None:
    """Hook arguments naming host files: refused without --upload-dir, else they must lie inside that folder.

    A job runs later, maybe on another machine's worker; a file uploaded for one request would be gone by then,
    so a job only takes files already in the upload folder.
    """
    info = HOOKS.get(hook)
    upload_dir = rt.settings.upload_dir
    for name in info.file_args if info is not None else ():
        value = args.get(name)
        if value in (None, "", []):
            continue
        if upload_dir is None:
            raise Problem(422, f"hook {hook} argument {name} names files on the server, which is refused over HTTP; "
                               f"start serve with --upload-dir DIR and name files inside it")
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, str) and not _inside(upload_dir, path):
                raise Problem(422, f"hook {hook} argument {name}: {path!r} is not a file inside the upload folder")


async def submit_job(request: Request) -> Response:
    rt = _rt(request)
    tenant = request.path_params["tenant"]
    rec = rt.auth.require(request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    _query(request, ())
    body = await read_object(request)
    unknown = sorted(set(body) - set(_SUBMIT_KEYS))
    if unknown:
        raise Problem(422, f"unknown key(s) {', '.join(unknown)}; the body takes: {', '.join(_SUBMIT_KEYS)}")
    hook, args, key = body.get("hook"), body.get("args", {}), body.get("idempotency_key")
    if not isinstance(hook, str) or not hook:
        raise Problem(422, "hook must be a non-empty string (the hook to run as a job)")
    if not isinstance(args, dict):
        raise Problem(422, f"args must be an object of the hook's arguments, got {type(args).__name__}")
    if key is not None and not isinstance(key, str):
        raise Problem(422, f"idempotency_key must be a string, got {type(key).__name__}")
    clash = [name for name in _RESERVED if name in args]
    if clash:
        raise Problem(422, f"hook {hook}: unknown argument(s): {', '.join(clash)} (the tenant is the path's; "
                           f"idempotency_key goes beside args, not in it)")
    _file_arguments(rt, hook, args)
    try:
        job_id = await rt.host.submit(hook, tenant=tenant, idempotency_key=key, user_context={"token": rec.id},
                                      **args)
    except AllPluginsFailed as exc:  # nothing ran: no plugin of the tenant implements the hook
        raise Problem(409, str(exc)) from None
    return JSONResponse({"id": job_id}, status_code=202)


async def get_job(request: Request) -> Response:
    rt = _rt(request)
    tenant = request.path_params["tenant"]
    rt.auth.require(request, tenant=tenant, scope="call")
    rt.known_tenant(tenant)
    _query(request, ())
    return JSONResponse(await own_work(rt, tenant, request.path_params["id"]))


async def retry_job(request: Request) -> Response:
    rt = _rt(request)
    tenant, job_id = request.path_params["tenant"], request.path_params["id"]
    token = rt.auth.require(request, tenant=tenant, scope="admin")
    rt.known_tenant(tenant)
    _query(request, ())
    count, plugins, view = await retry_own(rt, tenant, job_id)
    await asyncio.to_thread(rt.auth.record_action, token, tenant, plugins, "retry", "api", {"work": job_id})
    return JSONResponse({"id": job_id, "retried": count, "job": view}, status_code=202)


async def retry_own(rt: ServerRuntime, tenant: str, job_id: str) -> tuple[int, str, dict[str, Any]]:
    """Retry the tenant's event or job: how many deliveries were queued again, the plugins whose deliveries had
    failed (read before the retry: a worker may already run them again when the view after is read), and its view
    after; 409 if none."""
    before = await own_work(rt, tenant, job_id)
    count = await rt.host.retry(job_id)
    if count == 0:
        raise Problem(409, f"nothing to retry: {before['kind']} {job_id} has no failed delivery "
                           f"(state: {before['state']})")
    plugins = ", ".join(r["plugin"] for r in before["results"] if r["state"] == "failed")
    return count, plugins, await rt.host.job(job_id)


ROUTES = [
    Route("/v1/tenants/{tenant}/events", list_events, methods=["GET"]),
    Route("/v1/tenants/{tenant}/jobs", list_jobs, methods=["GET"]),
    Route("/v1/tenants/{tenant}/jobs", submit_job, methods=["POST"]),
    Route("/v1/tenants/{tenant}/jobs/{id}", get_job, methods=["GET"]),
    Route("/v1/tenants/{tenant}/jobs/{id}/retry", retry_job, methods=["POST"]),
]
