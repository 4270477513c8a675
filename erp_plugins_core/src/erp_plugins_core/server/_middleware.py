"""ASGI middleware of the server: the request body limit and the security headers of every response."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._problems import Problem, problem_response


class BodyTooLarge(Problem):
    """The request body went past the server's limit."""


class BodyLimit:
    """Refuse (413) a body over `max_body` bytes: at once from Content-Length, else while it is read."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    def _problem(self) -> BodyTooLarge:
        return BodyTooLarge(413, f"request body larger than {self.max_body} bytes; send less, or start the server "
                                 f"with a larger --max-body")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                if not value.isdigit() or int(value) > self.max_body:
                    p = self._problem() if value.isdigit() else Problem(400, "malformed Content-Length header")
                    await problem_response(p.status, p.detail, headers={"Connection": "close"})(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise self._problem()
            return message

        await self.app(scope, limited, send)


#: The console needs no script and loads nothing from elsewhere; forms post only to this origin.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CSP.encode()),
]


class SecurityHeaders:
    """Adds nosniff, no-referrer, frame denial and a strict Content-Security-Policy to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _HEADERS
            await send(message)

        await self.app(scope, receive, send_wrapper)
