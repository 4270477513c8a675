"""Bearer tokens on every request: who is calling, for which tenant, with which scope; every use audited.

A verified token is kept for `ttl` seconds (1 s by default), so a revocation made by any process applies
within that time on every replica while a request costs no database read. Uses are counted in memory and
written once per `flush` interval (last-used time and one audit entry per token and tenant with the count of
requests per route), so a busy server does not write the state on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from .._state import AuditEntry
from .._tokens import TokenError, TokenRecord, check_secret, parse_token, scope_allows, token_store
from ._problems import Problem

log = logging.getLogger("erp_plugins.server")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="erp-plugins"'}


@dataclass
class _Uses:
    """Requests made with one token for one tenant since the last flush."""

    count: int = 0
    last: float = 0.0
    routes: Counter[str] = field(default_factory=Counter)


class Authenticator:
    """Checks bearer tokens against the store (cached for `ttl` s) and records their use."""

    def __init__(self, store: Any, *, ttl: float = 1.0, flush_every: float = 1.0) -> None:
        self._store = store
        self._tokens = token_store(store)
        self._ttl = ttl
        self._flush_every = flush_every
        self._cache: dict[str, tuple[TokenRecord | None, float]] = {}
        self._uses: dict[tuple[str, str], _Uses] = {}

    def _record(self, token_id: str) -> TokenRecord | None:
        now = time.monotonic()
        hit = self._cache.get(token_id)
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        rec = self._tokens.get_token(token_id)
        if len(self._cache) > 10_000:  # unknown ids sprayed at the server must not grow memory without bound
            self._cache.clear()
        self._cache[token_id] = (rec, now)
        return rec

    def lookup(self, token_id: str) -> TokenRecord | None:
        """The stored record of `token_id` (cached for `ttl` seconds), None when unknown."""
        return self._record(token_id)

    def check(self, text: str) -> TokenRecord:
        """The record of a valid token text; Problem 401 otherwise (the message never holds the token)."""
        parsed = parse_token(text)
        if parsed is None:
            raise Problem(401, "malformed bearer token; tokens look like erp_tok_<16 hex>_<64 hex> "
                               "(create one with: erp-plugins token create --tenant T)", headers=_CHALLENGE)
        rec = self._record(parsed[0])
        if rec is None:
            raise Problem(401, "invalid token", headers=_CHALLENGE)
        try:
            check_secret(rec, parsed[1])
        except TokenError as exc:
            raise Problem(401, str(exc), headers=_CHALLENGE) from None
        return rec

    def authenticate(self, request: Request) -> TokenRecord:
        """The token of `Authorization: Bearer ...`; Problem 401 when absent or not valid."""
        header = request.headers.get("authorization")
        if not header:
            raise Problem(401, "missing Authorization: Bearer <token> header", headers=_CHALLENGE)
        kind, _, text = header.partition(" ")
        if kind.lower() != "bearer" or not text.strip():
            raise Problem(401, "the Authorization header must be: Bearer <token>", headers=_CHALLENGE)
        rec = self.check(text.strip())
        request.scope.setdefault("state", {})["token_id"] = rec.id  # for the access log line
        return rec

    def require(self, request: Request, *, tenant: str | None, scope: str) -> TokenRecord:
        """Authenticate, then refuse (403) another tenant's path or a missing scope; the use is counted."""
        rec = self.authenticate(request)
        self.authorize(rec, request, tenant=tenant, scope=scope)
        return rec

    def authorize(self, rec: TokenRecord, request: Request, *, tenant: str | None, scope: str) -> None:
        why = scope_allows(rec, tenant=tenant, scope=scope)
        if why is not None:
            log.warning("refused token=%s tenant=%s scope=%s path=%s", rec.id, tenant, scope, request.url.path)
            raise Problem(403, why)
        self.note(rec, request, tenant)

    def note(self, rec: TokenRecord, request: Request, tenant: str | None) -> None:
        """Count one use of `rec` (written at the next flush)."""
        scope = request.scope
        scope.setdefault("state", {})["token_id"] = rec.id  # for the access log line
        route = scope.get("route")
        key = (rec.id, tenant or rec.tenant or "*")
        uses = self._uses.get(key)
        if uses is None:
            uses = self._uses[key] = _Uses()
        uses.count += 1
        uses.last = time.time()
        uses.routes[f"{scope['method']} {route.path if route is not None else scope['path']}"] += 1

    def record_action(self, rec: TokenRecord, tenant: str, plugin: str, action: str, via: str,
                      detail: dict[str, Any] | None = None) -> None:
        """One audit entry naming the token behind an administrative change (the host's own entry names the
        server's OS user): `api:enable`, `console:disable`... `detail` adds to the entry's detail."""
        with self._store.transaction() as tx:
            tx.add_audit(AuditEntry(time.time(), f"token:{rec.id}", tenant, plugin, f"{via}:{action}",
                                    {**(detail or {}), "token": rec.id}))

    def flush(self) -> None:
        """Write the counted uses: last-used times and one `token_use` audit entry per token and tenant."""
        if not self._uses:
            return
        uses, self._uses = self._uses, {}
        last: dict[str, float] = {}
        for (token_id, _tenant), u in uses.items():
            last[token_id] = max(last.get(token_id, 0.0), u.last)
        for token_id, when in last.items():
            self._tokens.touch_token(token_id, when)
        now = time.time()  # stamped when written, so the audit's order is its time order
        with self._store.transaction() as tx:
            for (token_id, tenant), u in uses.items():
                tx.add_audit(AuditEntry(now, f"token:{token_id}", tenant, "", "token_use",
                                        {"token": token_id, "requests": u.count, "last_used": u.last,
                                         "routes": dict(u.routes)}))

    async def run(self) -> None:
        """Flush every `flush_every` seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(self._flush_every)
                try:
                    await asyncio.to_thread(self.flush)
                except Exception as exc:  # the state may be briefly unreachable: keep serving, retry later
                    log.warning("could not record token use: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                self.flush()
