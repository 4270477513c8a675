"""The ASGI application: routes (API, OpenAI-compatible, console), errors, limits, and the host's lifetime.

`create_app(settings)` builds it; `app_from_env()` is the factory uvicorn's worker processes call. The app
opens one `PluginHost` for its process at start-up and closes it (stopping every worker) at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._errors import PluginError
from .._host import PluginHost
from ._api import ROUTES as API_ROUTES
from ._api_jobs import ROUTES as JOBS_API_ROUTES
from ._auth import Authenticator
from ._console import ROUTES as CONSOLE_ROUTES
from ._console_jobs import ROUTES as JOBS_CONSOLE_ROUTES
from ._logging import AccessLog
from ._middleware import BodyLimit, SecurityHeaders
from ._openai import ROUTES as OPENAI_ROUTES
from ._openapi import ROUTES as DOC_ROUTES
from ._problems import Problem, handle, problem_response
from ._runtime import ServerRuntime
from ._settings import ServerSettings

log = logging.getLogger("erp_plugins.server")
STATIC = Path(__file__).parent / "static"


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: the host is open and the state store answers."""
    rt: ServerRuntime | None = getattr(request.app.state, "rt", None)
    if rt is None or rt.host.store is None:
        return problem_response(503, "not ready: the plugin host is not open")
    try:
        await asyncio.to_thread(rt.host.store.get_setting, "lock")
    except Exception as exc:
        return problem_response(503, f"not ready: the state store does not answer: {exc}")
    return JSONResponse({"status": "ready"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
    if exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    return problem_response(exc.status_code, str(detail), headers=exc.headers)


def create_app(settings: ServerSettings | None = None, *, host: PluginHost | None = None) -> Starlette:
    """The server's ASGI app. `host`: an already configured (not yet open) PluginHost to serve, for tests."""
    settings = settings or ServerSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        plugin_host = host or PluginHost(settings.state, tenants=[])
        await plugin_host.open()
        auth = Authenticator(plugin_host.store, ttl=settings.token_ttl, flush_every=settings.audit_flush)
        app.state.rt = ServerRuntime(plugin_host, auth, settings)
        flusher = asyncio.create_task(auth.run(), name="erp-plugins-token-use")
        where = getattr(plugin_host.store, "location", "?")  # safe display text: never a password
        log.info("ready", extra={"fields": {"state": where, "max_body": settings.max_body,
                                            "uploads": str(settings.upload_dir or "off")}})
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await plugin_host.close()
            log.info("stopped")

    routes = [
        *API_ROUTES,
        *JOBS_API_ROUTES,
        *OPENAI_ROUTES,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *DOC_ROUTES,
        *CONSOLE_ROUTES,
        *JOBS_CONSOLE_ROUTES,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(AccessLog),
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_body=settings.max_body),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Problem: handle, PluginError: handle, Exception: handle},
    )


def app_from_env() -> Starlette:
    """The factory uvicorn calls in each worker process (settings from ERP_PLUGINS_SERVE_* variables).

    A worker started by uvicorn's process manager is a fresh interpreter: its log lines are set up here.
    """
    from ._logging import configure

    settings = ServerSettings.from_env()
    configure(settings.log_level)
    return create_app(settings)
