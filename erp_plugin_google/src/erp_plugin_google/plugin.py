"""GoogleServicesPlugin: Gmail send_email, Drive upload_file, Calendar create/list events, over the official client.

The client is synchronous; every blocking step runs on the plugin's small thread pool (with the caller's
context variables, as asyncio.to_thread does) so the host's event loop keeps running. Uploads go one chunk
per step, and progress is reported from the event loop between chunks.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import mimetypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import Any, BinaryIO, TypeVar

from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload

from erp_plugins_core import BadRequestError, PluginError, PluginInterface, UnavailableError

from . import _scopes
from ._calendar import check_range, validate_event
from ._client import GoogleClient, TokenRejected
from ._config import GoogleConfig, parse_config
from ._credentials import load_credentials
from ._errors import TRANSPORT_ERRORS, map_error
from ._mime import build_message
from ._upload import ReaderUpload

T = TypeVar("T")


class GoogleServicesPlugin(PluginInterface):
    """Gmail, Drive and Calendar for one tenant, acting as one Google user."""

    #: Retries the client itself makes on 429/5xx and connection errors (with its exponential backoff).
    num_retries: int = 3
    #: How often an interrupted upload is resumed (asking the server where it stopped) before giving up.
    upload_resume_attempts: int = 5
    #: Seconds before the first resume; doubles each time.
    resume_backoff: float = 0.5
    #: Events per page asked of Calendar (Google's maximum is 2500), and a bound on pages followed.
    list_page_size: int = 250
    max_list_pages: int = 1000
    #: Whom Calendar emails about an event with attendees ("all", "externalOnly" or "none").
    send_updates: str = "all"
    #: Threads for blocking client calls (concurrent hook calls of this tenant).
    max_workers: int = 4

    def __init__(self) -> None:
        self._settings: GoogleConfig | None = None
        self._client: GoogleClient | None = None
        self._granted_hint: frozenset[str] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def initialize(self, config: dict[str, Any], context: Any) -> bool:
        """Check the config, load the credentials and build the three services (offline, from packaged docs)."""
        await super().initialize(config, context)
        self._settings = parse_config(config)
        credentials, self._granted_hint = load_credentials(self._settings)
        self._executor = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="google_services")
        self._client = await self._run(GoogleClient, credentials, self._settings.root_url)
        return True

    async def cleanup(self) -> bool:
        """Stop the thread pool; the connections close with it."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._client = None
        return True

    async def health_check(self) -> dict[str, Any]:
        """Healthy when Google accepts the access token (refreshing an expired or rejected one) and the scopes
        it carries cover the hooks the tenant granted."""
        if self._client is None or self._settings is None:
            return {"healthy": False, "detail": "google_services is not initialized"}
        client = self._client
        creds = client.credentials
        try:
            if not creds.valid:
                await self._run(client.refresh)
            try:
                info = await self._run(client.token_info)
            except TokenRejected:  # revoked, or ended early: a refresh tells which
                await self._run(client.refresh)
                info = await self._run(client.token_info)
        except TokenRejected:
            return {"healthy": False, "error": "AuthenticationError",
                    "detail": "Google rejects even a freshly refreshed access token; re-authorise: create a new "
                              "credentials file and update the config"}
        except Exception as exc:  # noqa: BLE001 - every failure is reported as unhealthy, mapped
            mapped = map_error(exc, hook="health_check", resource="credentials")
            return {"healthy": False, "detail": str(mapped), "error": type(mapped).__name__}
        live = info.get("scope")  # what the token really carries, whatever the credentials file says
        granted_scopes = (
            (live.split() if isinstance(live, str) else None)
            or getattr(creds, "granted_scopes", None) or self._granted_hint or self._settings.scopes
        )
        scopes = set(self._settings.scopes) & set(granted_scopes) if granted_scopes else set(self._settings.scopes)
        permissions = self._granted_permissions()
        problems: list[str] = []
        covered: list[str] = []
        for hook, permission in _scopes.HOOK_PERMISSIONS.items():
            if permissions is not None and permission not in permissions:
                continue
            missing = _scopes.missing_for(hook, scopes)
            if missing:
                problems.append(f"{hook} needs scope {missing}: add it to 'scopes' and re-authorise")
            else:
                covered.append(hook)
        expiry = creds.expiry.replace(tzinfo=UTC).isoformat() if creds.expiry else None
        detail = "; ".join(problems) or f"token valid until {expiry or 'unknown'}; scopes cover {', '.join(covered)}"
        return {"healthy": not problems, "detail": detail, "token_expiry": expiry, "hooks": covered}

    # --- hooks -------------------------------------------------------------------------------------------

    async def send_email(self, to: str, subject: str, body: str, attachments: list[str] | None = None) -> str:
        """Send a mail (HTML body with a text alternative, attachments) as the configured user; the message id."""
        client = self._require_client()
        open_file = self._files().open if attachments else _no_files
        raw = await self._run(build_message, to, subject, body, list(attachments or []), open_file)

        def send() -> dict[str, Any]:
            # multipart upload (uploadType=multipart): metadata and the RFC 822 bytes in one request
            media = MediaIoBaseUpload(io.BytesIO(raw), mimetype="message/rfc822", resumable=False)
            request = client.services["gmail"].users().messages().send(userId="me", body={}, media_body=media)
            return request.execute(http=client.http(), num_retries=self.num_retries)

        result = await self._call(send, hook="send_email", resource="the sending mailbox")
        return str(result["id"])

    async def upload_file(self, file_path: str, folder_id: str | None = None) -> str:
        """Upload a host file into a Drive folder with a resumable, chunked upload; the new file's id."""
        client = self._require_client()
        assert self._settings is not None
        if not isinstance(file_path, str) or not file_path:
            raise BadRequestError("upload_file: 'file_path' must be the path of a file")
        if folder_id is not None and (not isinstance(folder_id, str) or not folder_id.strip()):
            raise BadRequestError("upload_file: 'folder_id' must be a Drive folder id, or null for My Drive")
        name = os.path.basename(file_path)
        mimetype, encoding = mimetypes.guess_type(name)
        if mimetype is None or encoding is not None:
            mimetype = "application/octet-stream"
        resource = f"Drive folder {folder_id!r}" if folder_id else "My Drive"
        metadata: dict[str, Any] = {"name": name, "mimeType": mimetype}
        if folder_id:
            metadata["parents"] = [folder_id]

        reader: BinaryIO = await self._run(self._files().open, file_path)
        try:
            chunk = self._settings.upload_chunk_size
            media: ReaderUpload = await self._run(ReaderUpload, reader, mimetype, chunk)
            total = media.size()
            request = client.services["drive"].files().create(
                body=metadata, media_body=media, fields="id", supportsAllDrives=True
            )

            def next_chunk() -> tuple[Any, Any]:
                return request.next_chunk(http=client.http(), num_retries=self.num_retries)

            self.context.progress(0, total, name)
            response = None
            failures = 0
            done = 0
            while response is None:
                try:
                    status, response = await self._run(next_chunk)
                except (HttpError, *TRANSPORT_ERRORS) as exc:
                    resumable = request.resumable_uri is not None and _transient(exc)
                    if not resumable or failures >= self.upload_resume_attempts:
                        raise _mapped(exc, "upload_file", resource) from None
                    failures += 1
                    self.context.log("warning", "upload interrupted; resuming where the server stopped",
                                     file=name, done=done, attempt=failures, error=type(exc).__name__)
                    await asyncio.sleep(self.resume_backoff * 2 ** (failures - 1))
                    continue
                except Exception as exc:
                    raise _mapped(exc, "upload_file", resource) from None
                if status is not None:
                    if status.resumable_progress > done:
                        failures = 0
                    elif failures >= self.upload_resume_attempts:
                        raise UnavailableError(f"upload_file: Google stopped accepting bytes of {name!r} at {done}")
                    else:
                        failures += 1
                    done = status.resumable_progress
                    self.context.progress(done, total, name)
            self.context.progress(total, total, name)
        finally:
            await self._run(reader.close)
        return str(response["id"])

    async def create_calendar_event(self, calendar_id: str, event: dict[str, Any]) -> str:
        """Create `event` (checked first) in a calendar; the new event's id."""
        client = self._require_client()
        _check_calendar_id(calendar_id, "create_calendar_event")
        body = validate_event(event)
        params: dict[str, Any] = {"calendarId": calendar_id, "body": body}
        if body.get("attendees"):
            params["sendUpdates"] = self.send_updates

        def insert() -> dict[str, Any]:
            request = client.services["calendar"].events().insert(**params)
            return request.execute(http=client.http(), num_retries=self.num_retries)

        result = await self._call(insert, hook="create_calendar_event", resource=f"calendar {calendar_id!r}")
        return str(result["id"])

    async def list_calendar_events(
        self, calendar_id: str, time_min: str | None = None, time_max: str | None = None
    ) -> list[dict[str, Any]]:
        """Every event of a calendar overlapping [time_min, time_max), expanded and ordered by start, all pages."""
        client = self._require_client()
        _check_calendar_id(calendar_id, "list_calendar_events")
        check_range(time_min, time_max)
        events = client.services["calendar"].events()
        params: dict[str, Any] = {
            "calendarId": calendar_id,
            "singleEvents": True,
            "orderBy": "startTime",
            "maxResults": self.list_page_size,
        }
        if time_min:
            params["timeMin"] = time_min
        if time_max:
            params["timeMax"] = time_max
        request = events.list(**params)
        items: list[dict[str, Any]] = []
        for _ in range(self.max_list_pages):
            page = await self._call(
                functools.partial(self._execute, request),
                hook="list_calendar_events",
                resource=f"calendar {calendar_id!r}",
            )
            items.extend(page.get("items", []))
            request = events.list_next(request, page)
            if request is None:
                return items
        raise BadRequestError(
            f"list_calendar_events: more than {self.max_list_pages} pages of events; narrow time_min/time_max"
        )

    # --- helpers -----------------------------------------------------------------------------------------

    def _execute(self, request: Any) -> Any:
        """Execute a client request on this thread's connection, with the client's retries (blocking)."""
        return request.execute(http=self._require_client().http(), num_retries=self.num_retries)

    def _require_client(self) -> GoogleClient:
        if self._client is None:
            raise PluginError("google_services is not initialized (enable it for the tenant first)")
        return self._client

    def _files(self) -> Any:
        """The host's files service: readers of exactly the files named in this hook call."""
        return self.context.get_service("files")

    def _granted_permissions(self) -> frozenset[str] | None:
        """The tenant's grants for this plugin, when the context tells them (None: assume all)."""
        granted = getattr(self.context, "granted", None)
        return frozenset(granted) if granted is not None else None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking function on the plugin's threads, with the caller's context variables."""
        if self._executor is None:
            raise PluginError("google_services is not initialized (enable it for the tenant first)")
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(ctx.run, fn, *args))

    async def _call(self, fn: Callable[[], T], *, hook: str, resource: str) -> T:
        """`_run` with the client's errors mapped to the host's error classes."""
        try:
            return await self._run(fn)
        except PluginError:
            raise
        except Exception as exc:
            raise _mapped(exc, hook, resource) from None


def _mapped(exc: BaseException, hook: str, resource: str) -> BaseException:
    return map_error(exc, hook=hook, resource=resource)


def _transient(exc: BaseException) -> bool:
    """Whether an upload step failed in a way a resume may cure (5xx, 429, a dropped connection)."""
    if isinstance(exc, HttpError):
        return exc.status_code is not None and (exc.status_code >= 500 or exc.status_code == 429)
    return True


def _check_calendar_id(calendar_id: Any, hook: str) -> None:
    if not isinstance(calendar_id, str) or not calendar_id.strip():
        raise BadRequestError(f"{hook}: 'calendar_id' must be a calendar id such as 'primary' or an address")


def _no_files(path: str) -> BinaryIO:
    raise BadRequestError(f"send_email: attachment {path!r} cannot be read")


__all__ = ["GoogleServicesPlugin"]
