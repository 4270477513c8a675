"""API tokens: creation, verification, scopes, expiry and revocation (used by the CLI and the HTTP server).

A token reads `erp_<id>_<secret>`: the public id (`tok_` + 16 hex digits) finds the stored record, and the
secret (64 hex digits, 256 bits from `secrets`) is checked in constant time against the record's sha256
digest. Only the digest is stored, so the state never holds a usable token. Light on purpose: no server import.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ._errors import ConfigError, PluginError
from ._state import TokenRecord

__all__ = [
    "SCOPES",
    "IssuedToken",
    "TokenError",
    "TokenRecord",
    "create_token",
    "parse_token",
    "scope_allows",
    "token_json",
    "token_store",
    "verify_token",
]

#: Scopes, weakest first: `admin` may do everything `call` may.
SCOPES = ("call", "admin")
PREFIX = "erp_"
_TOKEN_RE = re.compile(r"^erp_(tok_[0-9a-f]{16})_([0-9a-f]{64})$")
_ID_RE = re.compile(r"^tok_[0-9a-f]{16}$")
#: Longest lifetime `--expires-days` accepts (ten years).
MAX_EXPIRES_DAYS = 3650


class TokenError(PluginError):
    """A token is malformed, unknown, revoked or expired; the message never holds the token."""


class TokenStore(Protocol):
    """The five token methods of the state store."""

    def add_token(self, rec: TokenRecord) -> None: ...
    def get_token(self, token_id: str) -> TokenRecord | None: ...
    def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]: ...
    def revoke_token(self, token_id: str) -> bool: ...
    def touch_token(self, token_id: str, when: float) -> None: ...


@dataclass(frozen=True)
class IssuedToken:
    """A token just created: the text is shown once and never again; its repr hides it."""

    token: str
    record: TokenRecord

    def __repr__(self) -> str:
        return f"IssuedToken(id={self.record.id!r}, tenant={self.record.tenant!r}, scope={self.record.scope!r})"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, None for anything else."""
    m = _TOKEN_RE.match(text) if isinstance(text, str) else None
    return (m.group(1), m.group(2)) if m else None


def validate_token_id(token_id: str) -> str:
    """`token_id` if it has the shape of a token id; ConfigError saying what one looks like otherwise."""
    if not isinstance(token_id, str) or not _ID_RE.match(token_id):
        short = isinstance(token_id, str) and len(token_id) <= 24 and not token_id.startswith(PREFIX)
        shown = repr(token_id) if short else "the value given"  # never echo what may be a whole token
        raise ConfigError(f"{shown} is not a token id; ids look like tok_0123456789abcdef (erp-plugins token list)")
    return token_id


def create_token(
    store: Any,
    *,
    tenant: str | None,
    scope: str = "call",
    expires_days: int | None = None,
    label: str = "",
    now: float | None = None,
) -> IssuedToken:
    """Create and store a token for `tenant` (None: a platform token, every tenant) with `scope`."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown token scope {scope!r}; use one of: {', '.join(SCOPES)}")
    if tenant is not None:
        from ._state import validate_tenant

        validate_tenant(tenant)
    if expires_days is not None and not (isinstance(expires_days, int) and 1 <= expires_days <= MAX_EXPIRES_DAYS):
        raise ConfigError(f"--expires-days must be a whole number from 1 to {MAX_EXPIRES_DAYS}, got {expires_days!r}")
    created = time.time() if now is None else now
    token_id = "tok_" + secrets.token_hex(8)
    secret = secrets.token_hex(32)  # 256 bits
    rec = TokenRecord(
        id=token_id,
        tenant=tenant,
        scope=scope,
        digest=_digest(secret),
        created=created,
        expires=created + expires_days * 86400 if expires_days is not None else None,
        label=label,
    )
    token_store(store).add_token(rec)
    return IssuedToken(f"{PREFIX}{token_id}_{secret}", rec)


def check_secret(rec: TokenRecord, secret: str, *, now: float | None = None) -> None:
    """Raise TokenError unless `secret` matches `rec` (constant time) and `rec` is neither revoked nor expired."""
    if not hmac.compare_digest(_digest(secret), rec.digest):
        raise TokenError("invalid token")
    if rec.revoked:
        raise TokenError(f"token {rec.id} was revoked")
    if rec.expires is not None and (time.time() if now is None else now) >= rec.expires:
        raise TokenError(f"token {rec.id} has expired; create a new one with erp-plugins token create")


def verify_token(store: Any, text: str, *, now: float | None = None) -> TokenRecord:
    """The stored record of a valid token; TokenError (never naming the secret) otherwise."""
    parsed = parse_token(text)
    if parsed is None:
        raise TokenError("malformed token; tokens look like erp_tok_<16 hex>_<64 hex>")
    token_id, secret = parsed
    rec = token_store(store).get_token(token_id)
    if rec is None:
        raise TokenError("invalid token")
    check_secret(rec, secret, now=now)
    return rec


def scope_allows(rec: TokenRecord, *, tenant: str | None, scope: str) -> str | None:
    """Why `rec` may not act on `tenant` with `scope` (None when it may). `tenant` None: no tenant involved."""
    if tenant is not None and rec.tenant is not None and rec.tenant != tenant:
        return f"token {rec.id} belongs to another tenant and cannot act on tenant {tenant!r}"
    if SCOPES.index(rec.scope) < SCOPES.index(scope):
        return f"token {rec.id} has scope {rec.scope!r}; this needs scope {scope!r}"
    return None


def token_json(rec: TokenRecord) -> dict[str, Any]:
    """The contract's `token list --json` shape (never the token or its digest), with revoked and label."""
    return {"id": rec.id, "tenant": rec.tenant, "scope": rec.scope, "created": rec.created,
            "expires": rec.expires, "last_used": rec.last_used, "revoked": rec.revoked, "label": rec.label}


def token_store(store: Any) -> TokenStore:
    """The store's token methods (typed as the TokenStore protocol)."""
    return store  # type: ignore[no-any-return]
