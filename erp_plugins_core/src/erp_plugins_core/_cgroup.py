"""Memory cgroups for sandboxed workers, where the host may create them.

RLIMIT_AS caps a worker's address space, which is not its memory: thread stacks, arenas and mapped libraries
count in full though little of them is ever touched. Where the host can create a child of its own memory
cgroup (v1's memory controller, or v2 with `memory` enabled for its children, as root or by delegation), each
worker gets one whose limit is the manifest's `memory_limit`. The kernel then counts what the worker really
uses and ends it with its OOM killer past the limit, and `oom_kills` tells the host that this is how it died.
Elsewhere the workers keep RLIMIT_AS alone.

On by default; `ERP_PLUGINS_SANDBOX_CGROUP=0` keeps RLIMIT_AS alone. Moving a process into a cgroup waits
for an RCU grace period of the kernel (14–25 ms on these machines), so the sandbox moves the worker while
its Python starts up, where it costs the cold start nothing measurable.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from ._errors import SandboxError

#: Environment variable that turns memory cgroups off (`0`); on (`1`, the default) where the host can make one.
ENV = "ERP_PLUGINS_SANDBOX_CGROUP"
#: Prefix of the cgroups this host creates: `<prefix><host pid>-<n>`, under the host's own memory cgroup.
PREFIX = "erp-plugins-"
_counter = itertools.count(1)


def wanted() -> bool:
    """Whether workers get memory cgroups (`ERP_PLUGINS_SANDBOX_CGROUP`, on unless `0`)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "1", "on", "yes"):
        return True
    if value in ("0", "off", "no"):
        return False
    raise SandboxError(f"{ENV}={value[:40]!r} is not understood; set it to 1 (a memory cgroup per worker "
                       "where the host can create one, the default) or 0 (address-space limit only)")


def _memory_base(mountinfo: str, cgroups: str) -> tuple[Path, int] | None:
    """The host's own memory cgroup directory and its version, from /proc/self/mountinfo and /proc/self/cgroup.

    A mount may show only a subtree of its hierarchy (a container's): its root is taken off the host's path.
    """
    v1_mount = v2_mount = None
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)
        if len(fields) != 2 or len(fields[0].split()) < 5:
            continue
        root, mount_point = fields[0].split()[3:5]
        fstype, _source, options = (fields[1].split() + ["", ""])[:3]
        if fstype == "cgroup" and "memory" in options.split(","):
            v1_mount = (root, mount_point)
        elif fstype == "cgroup2":
            v2_mount = (root, mount_point)
    v1_path = v2_path = None
    for line in cgroups.splitlines():
        _hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            v1_path = path
        elif controllers == "":
            v2_path = path
    if v1_mount is not None and v1_path is not None:
        return _inside(v1_mount, v1_path), 1
    if v2_mount is not None and v2_path is not None:
        base = _inside(v2_mount, v2_path)
        with contextlib.suppress(OSError):
            if "memory" in (base / "cgroup.subtree_control").read_text().split():
                return base, 2
    return None


def _inside(mount: tuple[str, str], path: str) -> Path:
    """Where cgroup `path` of a hierarchy is, given the (root, mount point) that hierarchy is mounted with."""
    root, mount_point = mount
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return Path(mount_point, path.lstrip("/"))


@dataclass
class MemoryCgroup:
    """One worker's memory cgroup: created with its limit, the worker's processes added, removed at its end."""

    path: Path
    version: int

    @classmethod
    def create(cls, limit: int, base: tuple[Path, int] | None = None) -> MemoryCgroup | None:
        """A new cgroup limited to `limit` bytes (swap included where the kernel accounts it); None where the
        host cannot create one (no memory controller, not writable)."""
        if base is None:
            try:
                base = _memory_base(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())
            except OSError:
                return None
            if base is None:
                return None
        root, version = base
        _prune(root)
        path = root / f"{PREFIX}{os.getpid()}-{next(_counter)}"
        try:
            path.mkdir()
        except OSError:
            return None
        group = cls(path, version)
        try:
            if version == 1:
                (path / "memory.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):  # only where swap accounting is on
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            else:
                (path / "memory.max").write_text(str(limit))
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
        except OSError:
            group.remove()
            return None
        return group

    def add(self, pid: int) -> bool:
        """Move process `pid` into the cgroup (its later children are born there); False if it is gone,
        OSError if the kernel refuses."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except ProcessLookupError:  # it ended meanwhile
            return False
        return True

    def pids(self) -> set[int]:
        """The processes in the cgroup now."""
        try:
            return {int(p) for p in (self.path / "cgroup.procs").read_text().split()}
        except OSError:
            return set()

    def oom_kills(self) -> int:
        """How many processes of the cgroup the kernel's OOM killer ended."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.path / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> bool:
        """Remove the cgroup once its processes are gone; False while some remain."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


def _prune(root: Path) -> None:
    """Remove cgroups left by hosts that ended without removing theirs (their pid is gone, the cgroup empty)."""
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if not entry.name.startswith(PREFIX):
                continue
            pid = entry.name[len(PREFIX):].partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not Path("/proc", pid).exists():
                with contextlib.suppress(OSError):
                    entry.rmdir()
