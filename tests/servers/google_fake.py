"""A loopback server speaking the Google APIs that google_services uses, for the real google-api-python-client.

Endpoints, as Google serves them (paths under the fake's root URL):
- `POST /token`: OAuth token endpoint (refresh_token grant and the service-account JWT-bearer grant);
- `GET /oauth2/v3/tokeninfo?access_token=...`: a valid token's scopes and lifetime, 400 `invalid_token` otherwise;
- `POST /upload/gmail/v1/users/{userId}/messages/send?uploadType=multipart`: Gmail send, metadata + message/rfc822;
- `POST /upload/drive/v3/files?uploadType=resumable` -> 200 + `Location` (an upload session), then
  `PUT <Location>` chunks with `Content-Range` -> 308 with `Range` ... -> 200 with the file's JSON; a PUT with
  `Content-Range: bytes */N` asks where the upload stands;
- `POST /calendar/v3/calendars/{calendarId}/events` (insert) and `GET` of the same path (list, with paging).

The fake checks what it receives and records it: bearer tokens and their scopes (a token without the scope an
endpoint needs gets Google's 403 insufficientPermissions), the MIME structure and attachment bytes of mails, the
Content-Range arithmetic and 256 KiB chunk alignment of uploads, the bytes of uploaded files. Anything wrong is
answered the way Google answers it and also appended to `fake.violations`, which tests assert is empty.

Faults (`fake.fail(...)`): any endpoint can answer 401/403/404/429/500 a number of times; an upload chunk can be
cut off mid-body (the connection stays broken until the client asks for the upload's status) or be only partly
committed (308 with a shorter Range).

Use it as a context manager: `with GoogleFake() as fake: fake.url`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

if __package__:
    from ._loopback import LoopbackFake, LoopbackHandler
else:  # run as a script: python tests/servers/google_fake.py
    from _loopback import LoopbackFake, LoopbackHandler

ALIGN = 256 * 1024
AUTH = "https://www.googleapis.com/auth/"

#: Scopes any one of which lets a token use an endpoint (as Google documents them per method).
ENDPOINT_SCOPES: dict[str, frozenset[str]] = {
    "gmail.send": frozenset(
        {AUTH + "gmail.send", AUTH + "gmail.compose", AUTH + "gmail.modify", "https://mail.google.com/"}
    ),
    "drive.create": frozenset({AUTH + "drive.file", AUTH + "drive"}),
    "calendar.insert": frozenset({AUTH + "calendar", AUTH + "calendar.events"}),
    "calendar.list": frozenset(
        {AUTH + "calendar", AUTH + "calendar.events", AUTH + "calendar.readonly", AUTH + "calendar.events.readonly"}
    ),
}


@dataclass
class Fault:
    """Answer requests to `endpoint` with an error: `status` (401, 403, 404, 429, 500, ...) or an upload fault.

    `skip` matching requests pass first (e.g. skip=2 on "drive.chunk" hits the third chunk), then `times` fail.
    `status` "drop": cut the chunk's connection after `keep` bytes (committing them, rounded down to 256 KiB);
    "partial": take the whole chunk but commit only `keep` bytes of it and answer 308.
    """

    endpoint: str
    status: int | str
    times: int = 1
    skip: int = 0
    keep: int = ALIGN
    reason: str | None = None
    retry_after: str | None = None


@dataclass
class Seen:
    """One request the fake received."""

    endpoint: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    length: int
    token: str | None


@dataclass
class SentMail:
    """A message the Gmail endpoint accepted, taken apart."""

    id: str
    raw: bytes
    message: EmailMessage
    metadata: dict[str, Any]
    recipients: list[str]
    subject: str
    structure: list[str]  # content types in walk order
    text: str | None
    html: str | None
    attachments: list[tuple[str, str, bytes]]  # (filename, content type, bytes)
    query: dict[str, str]


@dataclass
class Upload:
    """One resumable upload session."""

    id: str
    metadata: dict[str, Any]
    declared_type: str
    declared_length: int | None
    query: dict[str, str]
    data: bytearray = field(default_factory=bytearray)
    chunks: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end inclusive, total or -1)
    status_queries: int = 0
    resumed_at: list[int] = field(default_factory=list)  # offsets of the first data PUT after each status query
    awaiting_status: bool = False
    file_id: str | None = None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def google_error(status: int, message: str, reason: str, **extra: Any) -> dict[str, Any]:
    """An error body in Google's JSON shape."""
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
    err: dict[str, Any] = {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": names.get(status, "UNKNOWN"),
    }
    err.update(extra)
    return {"error": err}


def _moment(value: dict[str, Any]) -> datetime:
    if "date" in value:
        return datetime.combine(date.fromisoformat(value["date"]), datetime.min.time(), tzinfo=UTC)
    moment = datetime.fromisoformat(value["dateTime"])
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(value.get("timeZone", "UTC")))
    return moment


class GoogleFake(LoopbackFake):
    """The fake's state, its faults, and what it received; thread-safe."""

    thread_name = "google-fake"

    def __init__(self, *, page_size: int | None = None) -> None:
        super().__init__()
        self.page_size = page_size  # Calendar pages hold at most this many events (Google may return fewer)
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.access_tokens: dict[str, frozenset[str] | None] = {}  # token -> scopes (None: any)
        self.refresh_tokens: dict[str, tuple[str, str, frozenset[str]]] = {}  # -> (client id, secret, scopes)
        self.service_accounts: dict[str, Any] = {}  # client_email -> public key (verifies JWT assertions)
        self.folders: set[str] = {"root"}
        self.calendars: dict[str, list[dict[str, Any]]] = {"primary": []}
        self.mails: list[SentMail] = []
        self.uploads: dict[str, Upload] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, str]] = []
        self.seen: list[Seen] = []
        self.violations: list[str] = []
        self.faults: list[Fault] = []

    # --- running (start/stop/with: LoopbackFake) -------------------------------------------------------

    @property
    def url(self) -> str:
        """The root URL (with a trailing slash): give it to the plugin as root_url."""
        return f"{self.address}/"

    @property
    def token_uri(self) -> str:
        return self.url + "token"

    # --- setting up ------------------------------------------------------------------------------------

    def issue_token(self, scopes: frozenset[str] | set[str] | None = None) -> str:
        """A new valid access token carrying `scopes` (None: accepted everywhere)."""
        with self.lock:
            token = f"ya29.fake-{next(self._ids)}-{hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:16]}"
            self.access_tokens[token] = frozenset(scopes) if scopes is not None else None
            return token

    def user_credentials(
        self,
        scopes: list[str] | None = None,
        *,
        expires_in: float = 3600,
        token_scopes: list[str] | None = None,
        with_token: bool = True,
    ) -> dict[str, Any]:
        """An authorized-user credentials document whose refresh token this fake honours.

        The access token in it is valid for `token_scopes` (default: `scopes`); `expires_in` < 0 makes it
        expired, so the client must refresh at /token first.
        """
        scopes = scopes or [AUTH + "gmail.send", AUTH + "drive.file", AUTH + "calendar"]
        with self.lock:
            n = next(self._ids)
            client_id, secret, refresh = f"client-{n}.apps.example", f"secret-{n}-xyz", f"1//refresh-{n}-abcdef"
            self.refresh_tokens[refresh] = (client_id, secret, frozenset(scopes))
        info: dict[str, Any] = {
            "type": "authorized_user",
            "client_id": client_id,
            "client_secret": secret,
            "refresh_token": refresh,
            "scopes": scopes,
            "token_uri": self.token_uri,
        }
        if with_token:
            info["token"] = self.issue_token(set(token_scopes if token_scopes is not None else scopes))
            expiry = datetime.now(UTC).timestamp() + expires_in
            info["expiry"] = datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return info

    def add_service_account(self, client_email: str, public_key: Any) -> None:
        """Accept JWT assertions of `client_email` signed by the key whose public half is `public_key`."""
        with self.lock:
            self.service_accounts[client_email] = public_key

    def revoke_all(self) -> None:
        """Revoke every access and refresh token (as when the user removes the app's access)."""
        with self.lock:
            self.access_tokens.clear()
            self.refresh_tokens.clear()

    def expire_access_tokens(self) -> None:
        """Make every access token invalid (refresh tokens keep working)."""
        with self.lock:
            self.access_tokens.clear()

    def fail(self, endpoint: str, status: int | str, **kwargs: Any) -> Fault:
        """Add a fault (see Fault); returns it."""
        fault = Fault(endpoint, status, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def requests_to(self, endpoint: str) -> list[Seen]:
        """The requests received for one endpoint, in order."""
        with self.lock:
            return [s for s in self.seen if s.endpoint == endpoint]

    # --- internals -------------------------------------------------------------------------------------

    def _fault_for(self, endpoint: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.endpoint != endpoint or fault.times <= 0:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                return fault
        return None

    def _violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def _new_id(self, prefix: str) -> str:
        with self.lock:
            return f"{prefix}{next(self._ids):06d}"


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/token$"), "token"),
    ("GET", re.compile(r"^/oauth2/v3/tokeninfo$"), "tokeninfo"),
    ("POST", re.compile(r"^/upload/gmail/v1/users/(?P<user>[^/]+)/messages/send$"), "gmail.send"),
    ("POST", re.compile(r"^/upload/drive/v3/files$"), "drive.create"),
    ("PUT", re.compile(r"^/upload/drive/v3/files$"), "drive.chunk"),
    ("POST", re.compile(r"^/calendar/v3/calendars/(?P<cal>[^/]+)/events$"), "calendar.insert"),
    ("GET", re.compile(r"^/calendar/v3/calendars/(?P<cal>[^/]+)/events$"), "calendar.list"),
]


class _Handler(LoopbackHandler):
    # --- plumbing --------------------------------------------------------------------------------------

    @property
    def fake(self) -> GoogleFake:
        fake = self.server.fake
        assert isinstance(fake, GoogleFake)
        return fake

    def _length(self) -> int:
        try:
            return int(self.headers.get("content-length") or 0)
        except ValueError:
            return -1

    def _read(self, n: int) -> bytes:
        parts, left = [], n
        while left > 0:
            part = self.rfile.read(min(left, 1 << 20))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, google_error(status, message, reason), headers)

    def _reject(self, status: int, message: str, reason: str = "badRequest") -> None:
        """Answer a request the plugin should never have sent, and record it as a violation."""
        self.fake._violation(f"{self.command} {self.path}: {message}")
        self._error(status, message, reason)

    def _abort(self) -> None:
        """Cut the connection without an answer (RST), as a network failure would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    # --- dispatch --------------------------------------------------------------------------------------

    def do_PUT(self) -> None:
        self._guarded("PUT")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        for method, pattern, endpoint in _ROUTES:
            match = pattern.match(parts.path)
            if match and method == self.command:
                break
        else:
            self._drain()
            self._reject(404, f"no such endpoint: {self.command} {parts.path}", "notFound")
            return
        auth = self.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.fake.lock:
            self.fake.seen.append(Seen(endpoint, self.command, parts.path, query, headers, self._length(), token))
        if self._length() < 0 or ("chunked" in headers.get("transfer-encoding", "")):
            self._drain()
            self._reject(411, "requests must carry a Content-Length")
            return

        if endpoint not in ("token", "tokeninfo", "drive.chunk"):  # upload sessions are authorised by their id
            if not self._authorized(endpoint, token):
                return
        fault = self.fake._fault_for(endpoint)
        if fault is not None and isinstance(fault.status, int):
            self._drain()
            self._inject(fault, endpoint)
            return
        handler = getattr(self, "_" + endpoint.replace(".", "_"))
        handler(match, query, fault)

    def _drain(self) -> None:
        n = self._length()
        if n > 0:
            self._read(n)

    def _authorized(self, endpoint: str, token: str | None) -> bool:
        with self.fake.lock:
            known = token is not None and token in self.fake.access_tokens
            scopes = self.fake.access_tokens.get(token) if known and token else None
        if not known:
            self._drain()
            self._send(
                401,
                google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                    "or other valid authentication credential.",
                    "authError",
                ),
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )
            return False
        needed = ENDPOINT_SCOPES.get(endpoint)
        if scopes is not None and needed and not (scopes & needed):
            self._drain()
            self._insufficient_scope(needed)
            return False
        return True

    def _insufficient_scope(self, needed: frozenset[str]) -> None:
        body = google_error(403, "Request had insufficient authentication scopes.", "insufficientPermissions")
        body["error"]["details"] = [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "domain": "googleapis.com",
        }]
        scope = " ".join(sorted(needed))
        www = f'Bearer realm="https://accounts.google.com/", error="insufficient_scope", scope="{scope}"'
        self._send(403, body, {"WWW-Authenticate": www})

    def _inject(self, fault: Fault, endpoint: str) -> None:
        status = int(fault.status)
        if status == 401:
            self._error(401, "Request had invalid authentication credentials.", fault.reason or "authError")
        elif status == 403 and (fault.reason or "insufficientPermissions") == "insufficientPermissions":
            self._insufficient_scope(ENDPOINT_SCOPES.get(endpoint, frozenset()))
        elif status == 404:
            self._error(404, "Not Found", fault.reason or "notFound")
        elif status == 429:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            self._error(429, "Quota exceeded for quota metric 'Queries'.", fault.reason or "rateLimitExceeded",
                        headers)
        else:
            self._error(status, "Backend Error" if status >= 500 else "Error", fault.reason or "backendError")

    # --- token endpoints -------------------------------------------------------------------------------

    def _tokeninfo(self, match: re.Match[str], query: dict[str, str], fault: Fault | None) -> None:
        if self.headers.get("authorization"):
            self._reject(400, "tokeninfo takes the token as access_token, not as a credential")
            return
        token = query.get("access_token", "")
        with self.fake.lock:
            known = token in self.fake.access_tokens
            scopes = self.fake.access_tokens.get(token)
        if not known:
            self._send(400, {"error": "invalid_token", "error_description": "Invalid Value"})
            return
        info: dict[str, Any] = {"azp": "fake.apps.example", "aud": "fake.apps.example",
                                "exp": str(int(time.time()) + 3599), "expires_in": "3599", "access_type": "offline"}
        if scopes is not None:  # a token "accepted everywhere" has no scope list to show
            info["scope"] = " ".join(sorted(scopes))
        self._send(200, info)


    def _token(self, match: re.Match[str], query: dict[str, str], fault: Fault | None) -> None:
        form = {k: v[-1] for k, v in parse_qs(self._read(self._length()).decode(), keep_blank_values=True).items()}
        with self.fake.lock:
            self.fake.token_requests.append({k: v for k, v in form.items() if k in ("grant_type", "scope")})
        if self.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            self._reject(400, "token requests are form-encoded")
            return
        grant = form.get("grant_type")
        if grant == "refresh_token":
            with self.fake.lock:
                entry = self.fake.refresh_tokens.get(form.get("refresh_token", ""))
            if entry is None:
                self._send(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
                return
            client_id, secret, granted = entry
            if form.get("client_id") != client_id or form.get("client_secret") != secret:
                self._send(401, {"error": "invalid_client", "error_description": "Unauthorized"})
                return
            wanted = frozenset(form["scope"].split()) if form.get("scope") else granted
            if not wanted <= granted:
                self._send(400, {"error": "invalid_scope",
                                 "error_description": f"Scopes not granted: {' '.join(sorted(wanted - granted))}"})
                return
            scopes = wanted
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            claims = self._verify_assertion(form.get("assertion", ""))
            if claims is None:
                return
            scopes = frozenset(str(claims.get("scope", "")).split())
        else:
            self._reject(400, f"unsupported grant_type {grant!r}")
            return
        token = self.fake.issue_token(scopes)
        self._send(200, {"access_token": token, "expires_in": 3599, "scope": " ".join(sorted(scopes)),
                         "token_type": "Bearer"})

    def _verify_assertion(self, assertion: str) -> dict[str, Any] | None:
        try:
            head_b64, body_b64, sig_b64 = assertion.split(".")
            header = json.loads(_unb64url(head_b64))
            claims = json.loads(_unb64url(body_b64))
        except ValueError:
            self._reject(400, "assertion is not a JWT")
            return None
        with self.fake.lock:
            key = self.fake.service_accounts.get(claims.get("iss"))
        if key is None or header.get("alg") != "RS256":
            self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            return None
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            key.verify(_unb64url(sig_b64), f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            return None
        # google-auth always names Google's token endpoint as the audience, whatever token_uri it posts to
        audiences = (self.fake.token_uri, "https://oauth2.googleapis.com/token")
        if claims.get("aud") not in audiences or float(claims.get("exp", 0)) < time.time():
            self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT: aud or exp."})
            return None
        with self.fake.lock:
            self.fake.token_requests[-1]["sub"] = claims.get("sub", "")
        return claims

    # --- Gmail -----------------------------------------------------------------------------------------

    def _gmail_send(self, match: re.Match[str], query: dict[str, str], fault: Fault | None) -> None:
        body = self._read(self._length())
        if query.get("uploadType") != "multipart":
            self._reject(400, f"uploadType {query.get('uploadType')!r}: this fake serves Gmail's multipart upload")
            return
        ctype = self.headers.get("content-type", "")
        boundary = re.search(r'boundary="?([^";]+)"?', ctype)
        if not ctype.startswith("multipart/related") or boundary is None:
            self._reject(400, f"Content-Type {ctype!r} is not multipart/related with a boundary")
            return
        parts = _split_multipart(body, boundary.group(1).encode())
        if parts is None or len(parts) != 2:
            self._reject(400, "multipart body must hold exactly a metadata part and a media part")
            return
        (meta_headers, meta_body), (media_headers, raw) = parts
        if meta_headers.get("content-type", "").split(";")[0] != "application/json":
            self._reject(400, f"first part must be application/json, got {meta_headers.get('content-type')!r}")
            return
        if media_headers.get("content-type") != "message/rfc822":
            self._reject(400, f"media part must be message/rfc822, got {media_headers.get('content-type')!r}")
            return
        try:
            metadata = json.loads(meta_body or b"{}")
            message = BytesParser(policy=policy.default).parsebytes(raw)
        except ValueError as exc:
            self._reject(400, f"unparsable message: {exc}")
            return
        assert isinstance(message, EmailMessage)
        addresses = [a for _, a in getaddresses(message.get_all("to", []) + message.get_all("cc", [])
                                                 + message.get_all("bcc", []))]
        if not addresses or not all(re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a) for a in addresses):
            self._error(400, "Invalid To header", "invalidArgument")
            return
        text = html = None
        attachments: list[tuple[str, str, bytes]] = []
        structure: list[str] = []
        try:
            for part in message.walk():
                structure.append(part.get_content_type())
                if part.is_multipart():
                    continue
                if part.get_content_disposition() == "attachment":
                    if part.get("content-transfer-encoding", "").lower() != "base64":
                        raise ValueError(f"attachment {part.get_filename()!r} is not base64-encoded")
                    payload = part.get_payload(decode=True)
                    raw_b64 = part.get_payload()
                    if base64.b64decode(raw_b64, validate=False) != payload:
                        raise ValueError("attachment base64 does not decode cleanly")
                    attachments.append((part.get_filename() or "", part.get_content_type(), payload))
                elif part.get_content_type() == "text/plain" and text is None:
                    text = part.get_content()
                elif part.get_content_type() == "text/html" and html is None:
                    html = part.get_content()
        except (ValueError, LookupError) as exc:
            self._reject(400, f"bad MIME part: {exc}")
            return
        mail_id = self.fake._new_id("18c")
        with self.fake.lock:
            self.fake.mails.append(SentMail(mail_id, raw, message, metadata, addresses, str(message["subject"] or ""),
                                            structure, text, html, attachments, query))
        self._send(200, {"id": mail_id, "threadId": mail_id, "labelIds": ["SENT"]})

    # --- Drive -----------------------------------------------------------------------------------------

    def _drive_create(self, match: re.Match[str], query: dict[str, str], fault: Fault | None) -> None:
        raw = self._read(self._length())
        if query.get("uploadType") != "resumable":
            self._reject(400, f"uploadType {query.get('uploadType')!r}: this fake serves resumable uploads")
            return
        try:
            metadata = json.loads(raw or b"{}")
        except ValueError:
            self._reject(400, "metadata is not JSON")
            return
        declared = self.headers.get("x-upload-content-length")
        if declared is not None and not declared.isdigit():
            self._reject(400, f"X-Upload-Content-Length {declared!r} is not a number")
            return
        utype = self.headers.get("x-upload-content-type", "")
        if metadata.get("mimeType") and utype and metadata["mimeType"] != utype:
            self._reject(400, f"X-Upload-Content-Type {utype!r} differs from metadata mimeType")
            return
        for parent in metadata.get("parents", []):
            with self.fake.lock:
                exists = parent in self.fake.folders
            if not exists:
                self._send(404, google_error(404, f"File not found: {parent}.", "notFound"))
                return
        upload_id = _b64url(hashlib.sha256(f"{time.time_ns()}{self.fake._new_id('u')}".encode()).digest())
        up = Upload(upload_id, metadata, utype, int(declared) if declared is not None else None, query)
        with self.fake.lock:
            self.fake.uploads[upload_id] = up
        location = f"{self.fake.url}upload/drive/v3/files?uploadType=resumable&upload_id={upload_id}"
        self._send(200, None, {"Location": location, "X-GUploader-UploadID": upload_id})

    def _drive_chunk(self, match: re.Match[str], query: dict[str, str], fault: Fault | None) -> None:
        length = self._length()
        with self.fake.lock:
            up = self.fake.uploads.get(query.get("upload_id", ""))
        if up is None:
            self._drain()
            self._reject(404, "upload session not found", "notFound")
            return
        crange = self.headers.get("content-range")
        if crange is None:  # a single PUT with the whole (possibly empty) content
            start, end, total = 0, length - 1, length
        else:
            status_q = re.fullmatch(r"bytes \*/(\d+|\*)", crange)
            data_r = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", crange)
            if status_q:
                self._drain()
                self._status_query(up, length)
                return
            if not data_r:
                self._drain()
                self._reject(400, f"malformed Content-Range {crange!r}")
                return
            start, end = int(data_r.group(1)), int(data_r.group(2))
            total = -1 if data_r.group(3) == "*" else int(data_r.group(3))
        with self.fake.lock:
            committed = len(up.data)
            awaiting = up.awaiting_status
            if up.resumed_at and up.resumed_at[-1] == -1:
                up.resumed_at[-1] = start
        if awaiting:  # the connection "stays broken" until the client asks where the upload stands
            self._abort()
            return
        problem = None
        if end - start + 1 != length:
            problem = f"Content-Range {crange!r} covers {end - start + 1} bytes but Content-Length is {length}"
        elif total not in (-1, up.declared_length) and up.declared_length is not None:
            problem = f"Content-Range total {total} differs from X-Upload-Content-Length {up.declared_length}"
        elif start > committed:
            problem = (f"the upload offset is {start} byte(s), which exceeds already uploaded size of "
                       f"{committed} byte(s)")
        elif total != -1 and end + 1 < total and length % ALIGN:
            problem = f"a non-final chunk of {length} bytes is not a multiple of 256 KiB"
        elif total != -1 and end + 1 > total:
            problem = f"Content-Range {crange!r} ends past the total"
        if problem:
            self._drain()
            self._reject(400, problem)
            return

        if fault is not None and fault.status == "drop":
            data = self._read(min(fault.keep, length))
            aligned_end = (start + len(data)) // ALIGN * ALIGN  # Google persists whole 256 KiB blocks
            self._store(up, start, data[: max(0, aligned_end - start)])
            with self.fake.lock:
                up.awaiting_status = True
            self._abort()
            return
        data = self._read(length)
        if len(data) != length:
            self._violation_short(up, length, len(data))
            return
        with self.fake.lock:
            up.chunks.append((start, end, total))
        if fault is not None and fault.status == "partial":
            self._store(up, start, data[: max(0, fault.keep)])
        elif not self._store(up, start, data):
            return
        with self.fake.lock:
            committed = len(up.data)
        if up.declared_length is not None and committed == up.declared_length or (
            total != -1 and committed == total
        ):
            self._finish(up)
            return
        self._send(308, None, {"Range": f"bytes=0-{committed - 1}"} if committed else None)

    def _violation_short(self, up: Upload, want: int, got: int) -> None:
        self.fake._violation(f"upload {up.id}: body ended after {got} of {want} bytes")
        self.close_connection = True

    def _store(self, up: Upload, start: int, data: bytes) -> bool:
        """Append `data` (placed at `start`) to the upload; overlapping bytes must equal what is stored."""
        with self.fake.lock:
            committed = len(up.data)
            overlap = min(committed - start, len(data))
            if overlap > 0 and bytes(up.data[start:start + overlap]) != data[:overlap]:
                bad = True
            else:
                bad = False
                up.data += data[max(overlap, 0):]
        if bad:
            self._reject(400, f"bytes resent at offset {start} differ from those already uploaded")
            return False
        return True

    def _status_query(self, up: Upload, length: int) -> None:
        with self.fake.lock:
            up.status_queries += 1
            up.awaiting_status = False
            up.resumed_at.append(-1)  # filled in by the next data PUT
            committed = len(up.data)
            finished = up.file_id is not None
        if length:
            self._reject(400, "a status query (Content-Range: bytes */N) must have an empty body")
        elif finished:
            self._send(200, self._file_json(up))
        else:
            self._send(308, None, {"Range": f"bytes=0-{committed - 1}"} if committed else None)

    def _finish(self, up: Upload) -> None:
        with self.fake.lock:
            if up.file_id is None:
                up.file_id = self.fake._new_id("1Fk")
                self.fake.files[up.file_id] = {
                    "id": up.file_id,
                    "name": up.metadata.get("name", "Untitled"),
                    "mimeType": up.metadata.get("mimeType") or up.declared_type,
                    "parents": up.metadata.get("parents", ["root"]),
                    "data": bytes(up.data),
                    "sha256": hashlib.sha256(up.data).hexdigest(),
                }
        self._send(200, self._file_json(up))

    def _file_json(self, up: Upload) -> dict[str, Any]:
        record = self.fake.files[up.file_id or ""]
        full = {"kind": "drive#file", **{k: v for k, v in record.items() if k not in ("data", "sha256")}}
        fields = up.query.get("fields")
        if fields:
            wanted = {f.strip() for f in fields.split(",")}
            return {k: v for k, v in full.items() if k in wanted}
        return {k: full[k] for k in ("kind", "id", "name", "mimeType")}

    # --- Calendar --------------------------------------------------------------------------------------

    def _calendar_insert(self, match: re.Match[str], query: dict[str, str], fault: Fault | None) -> None:
        cal = unquote(match.group("cal"))
        raw = self._read(self._length())
        with self.fake.lock:
            events = self.fake.calendars.get(cal)
        if events is None:
            self._error(404, "Not Found", "notFound")
            return
        try:
            event = json.loads(raw)
            start, end = event.get("start"), event.get("end")
            if not isinstance(end, dict):
                self._reject(400, "Missing end time.", "required")
                return
            if not isinstance(start, dict):
                self._reject(400, "Missing start time.", "required")
                return
            if _moment(end) <= _moment(start):
                self._reject(400, "The specified time range is empty.", "timeRangeEmpty")
                return
        except (ValueError, KeyError, TypeError) as exc:
            self._reject(400, f"Invalid event: {exc}", "invalid")
            return
        event_id = self.fake._new_id("evt")
        stored = {
            "kind": "calendar#event",
            "id": event_id,
            "status": "confirmed",
            "htmlLink": f"https://www.google.com/calendar/event?eid={event_id}",
            "iCalUID": f"{event_id}@google.com",
            **event,
            "attendees": [{**a, "responseStatus": "needsAction"} for a in event.get("attendees", [])],
        }
        if not stored["attendees"]:
            del stored["attendees"]
        with self.fake.lock:
            events.append(stored)
        self._send(200, stored)

    def _calendar_list(self, match: re.Match[str], query: dict[str, str], fault: Fault | None) -> None:
        cal = unquote(match.group("cal"))
        with self.fake.lock:
            events = list(self.fake.calendars.get(cal) or []) if cal in self.fake.calendars else None
        if events is None:
            self._error(404, "Not Found", "notFound")
            return
        bounds = {}
        for key in ("timeMin", "timeMax"):
            if key in query:
                try:
                    moment = datetime.fromisoformat(query[key])
                    if moment.tzinfo is None:
                        raise ValueError
                except ValueError:
                    self._reject(400, f"Bad Request: {key} {query[key]!r}", "badRequest")
                    return
                bounds[key] = moment
        if query.get("orderBy") == "startTime" and query.get("singleEvents") != "true":
            self._reject(400, "The requested ordering is not available for the particular query.", "badRequest")
            return
        try:
            max_results = int(query.get("maxResults", "250"))
        except ValueError:
            max_results = 0
        if not 1 <= max_results <= 2500:
            self._reject(400, f"Invalid value for maxResults: {query.get('maxResults')}", "invalid")
            return
        signature = hashlib.sha256(json.dumps(
            {k: v for k, v in sorted(query.items()) if k != "pageToken"}).encode()).hexdigest()[:16]
        offset = 0
        if "pageToken" in query:
            try:
                token = json.loads(_unb64url(query["pageToken"]))
                offset, sig = int(token["o"]), token["s"]
            except (ValueError, KeyError, TypeError):
                self._reject(400, "Invalid pageToken", "invalid")
                return
            if sig != signature:
                self._reject(400, "pageToken used with different query parameters", "invalid")
                return
        chosen = [e for e in events
                  if ("timeMin" not in bounds or _moment(e["end"]) > bounds["timeMin"])
                  and ("timeMax" not in bounds or _moment(e["start"]) < bounds["timeMax"])]
        chosen.sort(key=lambda e: _moment(e["start"]))
        size = min(max_results, self.fake.page_size or max_results)
        page = chosen[offset:offset + size]
        body: dict[str, Any] = {"kind": "calendar#events", "summary": cal, "timeZone": "UTC", "items": page}
        if offset + size < len(chosen):
            body["nextPageToken"] = _b64url(json.dumps({"o": offset + size, "s": signature}).encode())
        else:
            body["nextSyncToken"] = _b64url(b"sync-" + signature.encode())
        self._send(200, body)


GoogleFake.handler = _Handler  # the handler class comes after the fake in this module


def _split_multipart(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]] | None:
    """The (headers, body) of each part of a multipart body, bytes exact; None if it is malformed."""
    delimiter = b"--" + boundary
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        return None
    parts = []
    for piece in pieces[1:-1]:
        if piece.startswith(b"\r\n"):
            piece = piece[2:]
        elif piece.startswith(b"\n"):
            piece = piece[1:]
        if piece.endswith(b"\r\n"):
            piece = piece[:-2]
        elif piece.endswith(b"\n"):
            piece = piece[:-1]
        crlf, lf = piece.find(b"\r\n\r\n"), piece.find(b"\n\n")
        if crlf != -1 and (lf == -1 or crlf < lf):
            head, content = piece[:crlf], piece[crlf + 4:]
        elif lf != -1:
            head, content = piece[:lf], piece[lf + 2:]
        else:
            return None
        headers = {}
        for line in head.decode("latin-1").splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def main() -> None:
    """Serve in this process: print one JSON line {url, credentials} and serve until stdin closes."""
    import sys

    with GoogleFake() as fake:
        fake.folders.add("bench-folder")
        print(json.dumps({"url": fake.url, "credentials": fake.user_credentials()}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
