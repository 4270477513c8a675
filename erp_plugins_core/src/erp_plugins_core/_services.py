"""Host services a plugin reaches through `PluginContext.get_service(name)`.

`files`: read-only access to exactly the host files that ERP code named in the current hook call (the
`attachments` of send_email, the `file_path` of upload_file). A plugin cannot name any other path, so a
sandboxed plugin with no file system still gets the bytes it needs, streamed, never the state store.
"""

from __future__ import annotations

import contextvars
import os
from typing import BinaryIO

from ._errors import PermissionDenied

#: Paths the current hook call allows the plugin to read (set by the dispatcher around each call).
current_call_files: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "erp_plugins_call_files", default=frozenset()
)


def allowed_files(paths: object) -> frozenset[str]:
    """Normalized absolute paths from a hook argument that is a path or a list of paths."""
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, (list, tuple)):
        return frozenset()
    return frozenset(os.path.realpath(p) for p in paths if isinstance(p, str))


class FilesService:
    """Opens the files of the current call for reading; any other path is refused."""

    def open(self, path: str) -> BinaryIO:
        """A seekable binary reader of `path`, which must be one of the current call's file arguments."""
        real = os.path.realpath(path)
        if real not in current_call_files.get():
            raise PermissionDenied(f"file {path!r} was not passed to this hook call; a plugin may only read those")
        return open(real, "rb")  # noqa: SIM115 - the caller owns and closes the reader

    def size(self, path: str) -> int:
        """Size in bytes of one of the current call's files."""
        with self.open(path) as fh:
            return os.fstat(fh.fileno()).st_size
