"""ServerRuntime: what every route reaches through `request.app.state.rt` (the host, tokens, settings).

Also the checks shared by the API, the OpenAI-compatible routes and the console: tenant names, request
bodies, and hook arguments that name files.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request

from .._errors import ConfigError
from .._hookspecs import ARG_TYPES, HOOKS
from .._host import PluginHost
from .._state import validate_tenant
from ._auth import Authenticator
from ._problems import Problem
from ._settings import ServerSettings


@dataclass
class ServerRuntime:
    """The open host and the server's own state (one per process)."""

    host: PluginHost
    auth: Authenticator
    settings: ServerSettings
    _tenants: set[str] = field(default_factory=set)

    @property
    def store(self) -> Any:
        store = self.host.store
        if store is None:
            raise Problem(503, "the server is shutting down")
        return store

    def known_tenant(self, tenant: str) -> str:
        """`tenant` if some plugin was ever enabled for it; Problem 404 (with the CLI's words) otherwise."""
        if tenant in self._tenants:
            return tenant
        try:
            validate_tenant(tenant)
        except ConfigError as exc:
            raise Problem(404, f"unknown tenant: {exc}") from None
        self._tenants = set(self.store.tenants())
        if tenant not in self._tenants:
            raise Problem(404, f"unknown tenant {tenant!r}: no plugin has been enabled for it; enable one first "
                               f"(PUT /v1/tenants/{tenant}/plugins/NAME or erp-plugins enable NAME --tenant {tenant})")
        return tenant


async def read_json(request: Request, what: str = "request body") -> Any:
    """The body as JSON; Problem 400 naming the position of a syntax error, 415 for another media type."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise Problem(415, f"{what} must be application/json, got {ctype}")
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, RecursionError):
        raise Problem(400, f"{what} is not valid JSON (UTF-8 text expected)") from None
    except json.JSONDecodeError as exc:
        raise Problem(400, f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from None


async def read_object(request: Request, what: str = "request body") -> dict[str, Any]:
    """The body as a JSON object (an empty body is `{}`); Problem 422 for any other JSON value."""
    data = await read_json(request, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Problem(422, f"{what} must be a JSON object, got {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class CallFiles:
    """Files uploaded for one hook call, removed when the call is over."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


async def hook_arguments(request: Request, rt: ServerRuntime, hook: str, files: CallFiles) -> dict[str, Any]:
    """The hook's keyword arguments from a JSON body, or from multipart/form-data with uploaded files.

    Arguments naming host files (`attachments`, `file_path`) are refused unless the server has an upload
    folder; then they must be uploaded (stored for this call) or name a file inside that folder.
    """
    info = HOOKS.get(hook)
    file_args = info.file_args if info is not None else ()
    upload_dir = rt.settings.upload_dir
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        if upload_dir is None:
            raise Problem(422, "file uploads are off on this server; start it with "
                               "erp-plugins serve --upload-dir DIR")
        return await _multipart(request, hook, file_args, upload_dir, files, rt.settings.max_body)
    kwargs = await read_object(request, f"arguments of hook {hook}")
    for name in file_args:
        value = kwargs.get(name)
        if value in (None, "", []):
            continue
        if upload_dir is None:
            raise Problem(422, f"hook {hook} argument {name} names files on the server, which is refused over "
                               f"HTTP; start serve with --upload-dir DIR and send the files as multipart/form-data")
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, str) and not _inside(upload_dir, path):
                raise Problem(422, f"hook {hook} argument {name}: {path!r} is not a file inside the upload folder; "
                                   f"upload it as multipart/form-data")
    return kwargs


def _inside(folder: Path, path: str) -> bool:
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real.is_file() and real.is_relative_to(folder.resolve())


async def _multipart(request: Request, hook: str, file_args: tuple[str, ...], upload_dir: Path, files: CallFiles,
                     max_body: int) -> dict[str, Any]:
    form = await request.form(max_files=64, max_fields=256, max_part_size=max_body)
    kwargs: dict[str, Any] = {}
    text = form.get("args")
    if text is not None:
        if not isinstance(text, str):
            raise Problem(422, "the multipart field args must be text holding a JSON object")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Problem(400, f"the multipart field args is not valid JSON: {exc.msg} at position {exc.pos}") \
                from None
        if not isinstance(parsed, dict):
            raise Problem(422, f"the multipart field args must be a JSON object, got {_json_type(parsed)}")
        kwargs.update(parsed)
    for key in form:
        if key == "args":
            continue
        if key not in file_args:
            raise Problem(422, f"hook {hook} takes no file in field {key!r}; file arguments: "
                               f"{', '.join(file_args) or 'none'}")
        if files.folder is None:
            files.folder = upload_dir / f"call-{uuid.uuid4().hex}"
            files.folder.mkdir(parents=True, mode=0o700)
        paths = []
        for i, upload in enumerate(form.getlist(key)):
            if isinstance(upload, str):
                raise Problem(422, f"multipart field {key!r} must be a file upload")
            name = Path(upload.filename or "upload").name or "upload"
            target = files.folder / f"{i}-{name}"
            with target.open("wb") as out:
                while chunk := await upload.read(1 << 20):
                    out.write(chunk)
            paths.append(str(target))
        many = list in ARG_TYPES.get(key, ())
        if not many and len(paths) > 1:
            raise Problem(422, f"hook {hook} argument {key} takes one file, got {len(paths)}")
        kwargs[key] = paths if many else paths[0]
    return kwargs
