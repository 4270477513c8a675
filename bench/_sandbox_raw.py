"""A bare process under a sandboxed plugin's own bubblewrap command line: the benchmarks' floor for the sandbox.

Same namespaces, seccomp filter, uid, interpreter and runtime site as the plugin's worker, but running the
benchmark's own code (`python -I -S -B <code_args>`) instead of the worker, so a benchmark can tell what the
sandbox itself costs apart from what the host's RPC adds.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os

from erp_plugins_core import _seccomp
from erp_plugins_core._sandbox import SandboxRunner, worker_loop


async def raw_process(runner: SandboxRunner, code_args: list[str], *,
                      pipes: bool = False) -> asyncio.subprocess.Process:
    """Start `code_args` with `runner`'s bwrap command line; stdin/stdout are pipes with `pipes`, else /dev/null.

    The caller closes `proc.info_fd` once the process has exited: bwrap writes its info there while setting up,
    and closing the read end earlier would kill bwrap by SIGPIPE half-way, leaving its child waiting forever.
    """
    fd = _seccomp.filter_fd(runner.manifest.resources.network_access)
    r, w = os.pipe()
    try:
        argv = runner.argv(w, fd)
        argv = argv[: argv.index("-B") + 1] + code_args
        kwargs = {"user": runner.uid, "group": runner.uid, "extra_groups": []} if runner.uid is not None else {}
        stdio = asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(
            *argv, pass_fds=(fd, w), cwd="/", env={}, start_new_session=True, stdin=stdio, stdout=stdio, **kwargs)
    finally:
        os.close(fd)
        os.close(w)
    proc.info_fd = r  # type: ignore[attr-defined]
    return proc


def worker_loop_name() -> str:
    """The event loop sandboxed workers run here: `uvloop <version>` or `asyncio` (ERP_PLUGINS_SANDBOX_LOOP)."""
    if worker_loop() == "auto":
        try:
            return f"uvloop {importlib.metadata.version('uvloop')}"
        except importlib.metadata.PackageNotFoundError:
            pass
    return "asyncio"
