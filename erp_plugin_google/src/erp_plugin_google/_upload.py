"""A chunked upload source over the host's file reader, safe to resend.

The client's MediaIoBaseUpload hands a *stream slice* to httplib2; when the client retries a chunk after a 5xx
it sends that already-consumed slice again, i.e. nothing. Reporting `has_stream() == False` makes the client
ask `getbytes()` for each chunk instead: one chunk in memory (constant for any file size), resent intact.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from googleapiclient.http import MediaIoBaseUpload


class ReaderUpload(MediaIoBaseUpload):
    """Resumable upload of a seekable binary reader, one chunk read at a time."""

    def __init__(self, reader: BinaryIO, mimetype: str, chunksize: int) -> None:
        super().__init__(reader, mimetype, chunksize=chunksize, resumable=True)
        reader.seek(0, os.SEEK_END)
        self._size = reader.tell()  # the base class asked the same; ask again in case seek() returned None

    def has_stream(self) -> bool:
        """No: chunks are read with getbytes(), so a retried chunk is sent with its bytes."""
        return False

    def getbytes(self, begin: int, length: int) -> bytes:
        """`length` bytes from `begin` (fewer only at the end of the file), even from a reader that reads short."""
        self._fd.seek(begin)
        parts: list[bytes] = []
        want = length
        while want > 0:
            part = self._fd.read(want)
            if not part:
                break
            parts.append(part)
            want -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
