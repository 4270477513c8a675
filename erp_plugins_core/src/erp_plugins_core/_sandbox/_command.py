"""The bwrap command line of a worker and the limits it sets: namespaces, binds, seccomp, rlimits, /data.

No config or secret value is ever part of it: those cross the pipe once the worker is up.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from .. import _cgroup
from .._discovery import PluginRecord
from .._errors import SandboxError
from .._manifest import Manifest
from ._availability import bwrap_path, worker_loop
from ._site import SANDBOX_SITE, Runtime, _others_can_read

TMPFS_BYTES = 64 * 1024 * 1024
FSIZE_BYTES = 64 * 1024 * 1024
#: How bwrap starts the worker: imported (from the bytecode `build_runtime` compiled), not run as a script,
#: which Python would compile from source on every start. argv[1] is the site, argv[2] the limits, argv[3] the
#: event loop (`worker_loop`).
_LAUNCH = ("import sys;p=sys.argv[1]+'/erp_plugins_core';sys.path.insert(0,p);import _worker;"
           "sys.path.remove(p);_worker.main()")
#: The same for a worker template: argv[4] and argv[5] name the plugin's module and class (`_zygote`).
_TEMPLATE_LAUNCH = ("import sys;p=sys.argv[1]+'/erp_plugins_core';sys.path.insert(0,p);import _worker,_zygote;"
                    "sys.path.remove(p);_zygote.main()")
#: With a memory cgroup counting what a worker really uses, its address space is capped at this many times
#: `memory_limit` instead of once (a backstop against address-space bombs; stacks and arenas are mostly untouched).
AS_FACTOR_WITH_CGROUP = 4


class WorkerCommand:
    """The part of `SandboxRunner` that writes its worker's bwrap command line and limits."""

    record: PluginRecord
    tenant: str
    manifest: Manifest
    uid: int | None
    _runtime: Runtime | None
    _data_root: Path | None

    def _data_dir(self) -> Path | None:
        mode = self.manifest.security.file_permissions
        if mode == "none":
            return None
        if self._data_root is None:
            raise SandboxError(
                f"plugin {self.record.name!r} asks for file_permissions {mode!r}, but the host gave the sandbox no "
                "data_root for plugin data"
            )
        tenant = self.tenant if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.tenant) and self.tenant not in {
            ".", ".."} else hashlib.sha256(self.tenant.encode()).hexdigest()[:32]
        path = self._data_root / self.record.name / tenant
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.uid is not None:
            os.chown(path, self.uid, self.uid)
        os.chmod(path, 0o700)
        if not _others_can_read(str(path.parent)):
            raise SandboxError(f"data_root {self._data_root} (or a parent) is not traversable by unprivileged users")
        return path

    def argv(self, info_fd: int, seccomp_fd: int, *, cgroup: bool = False) -> list[str]:
        """The bwrap command line of a worker (no config or secrets: those go over the pipe); `cgroup`: a memory
        cgroup will hold the worker, so its address space gets the looser cap."""
        argv = [bwrap_path() or "bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL"]
        if self.manifest.resources.network_access:
            argv += ["--share-net"]
        argv += self._filesystem()
        data = self._data_dir()
        if data is not None:
            rw = self.manifest.security.file_permissions == "read-write"
            argv += ["--bind" if rw else "--ro-bind", str(data), "/data"]
        argv += ["--disable-userns", *self._environment(info_fd, seccomp_fd),
                 "-c", _LAUNCH, SANDBOX_SITE, self.limits_text(cgroup), worker_loop()]
        return argv

    def template_argv(self, info_fd: int, seccomp_fd: int, userns_fd: int) -> list[str]:
        """The bwrap command line of this plugin's worker template (`_zygote`): in the user namespace `userns_fd`
        as its inner uid 0, the plugin's data folders (every tenant's, each only its owner's) at /.data."""
        argv = [bwrap_path() or "bwrap", "--userns", str(userns_fd), "--uid", "0", "--gid", "0",
                "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
                "--new-session", "--cap-drop", "ALL"]
        if not self.manifest.resources.network_access:
            argv += ["--unshare-net"]
        # bubblewrap makes the folders above a bind's destination 0700, its own user's: here that is the template's
        # uid, and the tenants' uids must traverse them
        assert self._runtime is not None
        above = {str(p) for dst in (SANDBOX_SITE, *(d for _, d in self._runtime.binds)) for p in Path(dst).parents}
        for folder in sorted(above - {"/"}, key=len):
            argv += ["--perms", "0755", "--dir", folder]
        argv += self._filesystem()
        if self.manifest.security.file_permissions != "none" and self._data_root is not None:
            plugin_data = self._data_root / self.record.name
            plugin_data.mkdir(parents=True, exist_ok=True)  # as `_data_dir` makes it: each tenant's inside is 0700
            argv += ["--bind", str(plugin_data), "/.data", "--perms", "0755", "--dir", "/data"]
        # its children lower these to their own (a memory cgroup's worker has the looser address-space cap)
        argv += [*self._environment(info_fd, seccomp_fd), "-c", _TEMPLATE_LAUNCH, SANDBOX_SITE,
                 self.limits_text(_cgroup.wanted(), template=True), worker_loop(), self.record.module,
                 self.record.attr]
        return argv

    def template_key(self) -> tuple[object, ...]:
        """What a worker template is shared by: plugin and version, runtime site, network, limits and data root."""
        assert self._runtime is not None
        return (self.record.name, self.record.dist_version, self.record.module, self.record.attr, self._runtime.site,
                self.manifest.resources.network_access, self.limits_text(_cgroup.wanted()), str(self._data_root))

    def limits_text(self, cgroup: bool = False, *, template: bool = False) -> str:
        """The worker's rlimits as its command line gives them: `NAME=soft[:hard],...`. A template's keep the
        host's NPROC: every task of its tenants' user namespaces also counts against the template's own uid, so
        a worker's cap of 32 there would cap all its tenants' workers together (their forks fail with EAGAIN)."""
        limits = self._limits(cgroup)
        if template:
            del limits["NPROC"]
        return ",".join(f"{k}={v}" for k, v in limits.items())

    def _filesystem(self) -> list[str]:
        """What every worker and template sees of the file system: /usr, the runtime site, /proc, /dev, /tmp."""
        assert self._runtime is not None
        res = self.manifest.resources
        argv = ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                 "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
                 "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache",
                 "--ro-bind-try", "/etc/localtime", "/etc/localtime"]
        if res.network_access:
            for path in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/ssl",
                         "/etc/ca-certificates"):
                argv += ["--ro-bind-try", path, path]
        for src, dst in self._runtime.binds:
            argv += ["--ro-bind", src, dst]
        argv += ["--ro-bind", self._runtime.site, SANDBOX_SITE,
                 "--proc", "/proc", "--dev", "/dev", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]  # noqa: S108
        return argv

    def _environment(self, info_fd: int, seccomp_fd: int) -> list[str]:
        """The environment, info and seccomp descriptors, read-only root, and the interpreter up to its `-c`."""
        assert self._runtime is not None
        return ["--chdir", "/tmp", "--clearenv", "--setenv", "HOME", "/tmp",  # noqa: S108
                "--setenv", "PATH", "/usr/bin", "--setenv", "MALLOC_ARENA_MAX", "2", "--setenv", "LANG", "C.UTF-8",
                "--hostname", "sandbox", "--info-fd", str(info_fd), "--seccomp", str(seccomp_fd),
                "--remount-ro", "/", "--", self._runtime.python, "-I", "-S", "-B"]

    def _limits(self, cgroup: bool = False) -> dict[str, str]:
        """rlimits as `soft[:hard]`; CPU is a lifetime budget (an hour at `cpu_limit`), SIGXCPU past it."""
        res = self.manifest.resources
        memory = res.memory_bytes * (AS_FACTOR_WITH_CGROUP if cgroup else 1)
        cpu = int(max(60, res.cpu_limit * 3600))
        # a plugin with network access keeps a connection pool: 256 descriptors broke 200 concurrent calls
        nofile = "4096" if self.manifest.resources.network_access else "256"
        return {"CORE": "0", "NOFILE": nofile, "NPROC": "32", "FSIZE": str(FSIZE_BYTES),
                "AS": str(memory), "CPU": f"{cpu}:{cpu + 5}"}
