"""Test helpers for google_services: the host bridge of a test PluginContext, and per-call file permission."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the shared fakes live in <repo>/tests/servers
    sys.path.insert(0, str(ROOT))

from erp_plugins_core._services import FilesService, current_call_files  # noqa: E402
from erp_plugins_core.pytest_plugin import RecordingBridge  # noqa: E402

ALL_PERMISSIONS = frozenset({"email.send", "files.upload", "files.read", "calendar.read", "calendar.write"})


class _CountingReader:
    """Wraps a host reader to record how it is read (sizes of reads), to prove uploads stream."""

    def __init__(self, inner: BinaryIO, reads: list[int]) -> None:
        self._inner = inner
        self._reads = reads

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._reads.append(len(data) if n is None or n < 0 else n)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


class _CountingFiles(FilesService):
    def __init__(self, reads: list[int]) -> None:
        self._reads = reads

    def open(self, path: str) -> BinaryIO:  # type: ignore[override]
        return _CountingReader(super().open(path), self._reads)  # type: ignore[return-value]


class Bridge(RecordingBridge):
    """The core's RecordingBridge whose files service also records the size of every read (`reads`)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def get_service(self, name: str) -> Any:
        if name == "files":
            return _CountingFiles(self.reads)
        return super().get_service(name)


def allow_files(*paths: str | os.PathLike[str]) -> None:
    """Allow the current hook call to read `paths`, as the host's dispatcher does around each call."""
    current_call_files.set(frozenset(os.path.realpath(p) for p in paths))


def secrets_of(config: dict[str, Any]) -> list[str]:
    """Every secret a config holds: the credential JSON and the secrets inside it."""
    out = []
    for key in ("credentials_file", "service_account_file"):
        if key in config:
            out.append(config[key])
            try:
                info = json.loads(config[key])
            except ValueError:
                continue
            out += [str(info[k]) for k in ("client_secret", "refresh_token", "token", "private_key") if k in info]
    return out
