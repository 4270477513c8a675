"""Console sessions: an encrypted, authenticated cookie naming the signed-in token's id, plus a CSRF token.

The cookie is sealed with the host's SecretBox (Fernet, the key kept outside the state), so every replica
sharing that key reads it, it cannot be forged or read, and it never holds the token itself. It is
HttpOnly and SameSite=Strict; each form also carries the session's CSRF token, checked in constant time.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .._tokens import TokenRecord
from ._problems import Problem

COOKIE = "erp_session"
LOGIN_CSRF = "erp_login_csrf"
LIFETIME_S = 8 * 3600


@dataclass(frozen=True)
class Session:
    """A signed-in console user: the token record (refreshed from the store) and the CSRF token."""

    token: TokenRecord
    csrf: str

    @property
    def platform(self) -> bool:
        return self.token.tenant is None


def seal(box: Any, token_id: str) -> tuple[str, str]:
    """(cookie value, csrf) for a new session of `token_id`."""
    csrf = secrets.token_urlsafe(24)
    value = box.encrypt(json.dumps({"tid": token_id, "csrf": csrf, "exp": time.time() + LIFETIME_S}))
    return value, csrf


def open_session(request: Request, box: Any, lookup: Any) -> Session | None:
    """The request's session, or None when it has none, a broken one, or its token is no longer valid."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    try:
        data = json.loads(box.decrypt(value, "a console session"))
    except Exception:
        return None
    if not isinstance(data, dict) or data.get("exp", 0) < time.time():
        return None
    rec = lookup(str(data.get("tid")))
    if rec is None or rec.revoked or (rec.expires is not None and rec.expires <= time.time()):
        return None
    return Session(rec, str(data.get("csrf")))


def set_cookie(response: Response, name: str, value: str, request: Request, max_age: int = LIFETIME_S) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def check_csrf(expected: str, given: Any) -> None:
    """Problem 403 unless the form's csrf field matches (constant time)."""
    if not isinstance(given, str) or not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Problem(403, "the form's CSRF token does not match this session; reload the page and try again")
