"""The console's "Events and jobs" page of a tenant: the backlog by state, the newest events and jobs with
each plugin's state, attempts and error, and a retry button (a CSRF-checked form POST) for a failed one.

The same host calls and shapes as the API (`GET …/events`, `GET …/jobs`, `POST …/jobs/{id}/retry`).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .._jobs import STATES
from ._api_jobs import retry_own
from ._console import _page, _rt, _tenant_of
from ._session import Session, check_csrf
from ._templates import render

__all__ = ["ROUTES"]

#: Newest events and jobs shown on the page.
SHOWN = 25


@_page
async def jobs_page(request: Request, session: Session) -> Response:
    """The tenant's backlog and newest events and jobs."""
    rt = _rt(request)
    tenant = _tenant_of(request, session)
    events: dict[str, Any] = await rt.host.events(tenant, limit=SHOWN)
    jobs: dict[str, Any] = await rt.host.jobs(tenant=tenant, limit=SHOWN)
    return render(request, "jobs.html", {
        "session": session, "csrf": session.csrf, "title": f"Events and jobs of {tenant}", "tenant": tenant,
        "states": STATES, "events": events, "jobs": jobs, "flash": request.query_params.get("done")})


@_page
async def retry_submit(request: Request, session: Session) -> Response:
    """Queue a failed event's or job's failed deliveries again, then back to the page with what was done."""
    rt = _rt(request)
    tenant = _tenant_of(request, session)
    form = await request.form()
    check_csrf(session.csrf, form.get("csrf"))
    job_id = request.path_params["id"]
    count, plugins, view = await retry_own(rt, tenant, job_id)
    await asyncio.to_thread(rt.auth.record_action, session.token, tenant, plugins, "retry", "console",
                            {"work": job_id})
    done = f"queued {count} failed deliver{'y' if count == 1 else 'ies'} of {view['kind']} {job_id} again"
    return RedirectResponse(f"/tenants/{quote(tenant)}/jobs?done={quote(done)}", status_code=303)


ROUTES = [
    Route("/tenants/{tenant}/jobs", jobs_page, methods=["GET"]),
    Route("/tenants/{tenant}/jobs/{id}/retry", retry_submit, methods=["POST"]),
]
