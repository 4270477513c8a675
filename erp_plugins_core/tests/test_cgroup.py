"""MemoryCgroup's reading of /proc and its file protocol (against a directory tree shaped like cgroupfs).

The kernel's side (limit enforced, OOM kill counted) is tested with real workers in test_sandbox.py where
the host can create a memory cgroup.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from erp_plugins_core import _cgroup
from erp_plugins_core._cgroup import MemoryCgroup, _memory_base, wanted
from erp_plugins_core._errors import SandboxError

MOUNTS_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
CGROUPS_V1 = "8:pids:/\n4:memory:/process_api/abc\n0::/\n"
MOUNTS_V2 = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
CGROUPS_V2 = "0::/system.slice/erp.service\n"


def test_v1_memory_controller_is_preferred_where_mounted() -> None:
    assert _memory_base(MOUNTS_V1, CGROUPS_V1) == (Path("/sys/fs/cgroup/memory/process_api/abc"), 1)


def test_a_mount_of_a_subtree_is_joined_without_its_root() -> None:
    mounts = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    assert _memory_base(mounts, "4:memory:/docker/abc/worker\n") == (Path("/sys/fs/cgroup/memory/worker"), 1)
    assert _memory_base(mounts, "4:memory:/docker/abc\n") == (Path("/sys/fs/cgroup/memory"), 1)


def test_v2_only_where_memory_is_enabled_for_children(tmp_path: Path) -> None:
    mounts = MOUNTS_V2.replace("/sys/fs/cgroup", str(tmp_path))
    base = tmp_path / "system.slice" / "erp.service"
    base.mkdir(parents=True)
    assert _memory_base(mounts, CGROUPS_V2) is None  # no cgroup.subtree_control: nothing delegated
    (base / "cgroup.subtree_control").write_text("cpu pids\n")
    assert _memory_base(mounts, CGROUPS_V2) is None
    (base / "cgroup.subtree_control").write_text("cpu memory pids\n")
    assert _memory_base(mounts, CGROUPS_V2) == (base, 2)
    assert _memory_base("", "") is None


def test_v2_files_limit_procs_oom_count_and_removal(tmp_path: Path) -> None:
    group = MemoryCgroup.create(256 * 1024 * 1024, base=(tmp_path, 2))
    assert group is not None and group.path.parent == tmp_path
    assert group.path.name.startswith(f"{_cgroup.PREFIX}{os.getpid()}-")
    assert (group.path / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (group.path / "memory.swap.max").read_text() == "0"
    assert group.add(12345) and (group.path / "cgroup.procs").read_text() == "12345"
    assert group.oom_kills() == 0  # no memory.events yet
    (group.path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n")
    assert group.oom_kills() == 1
    assert not group.remove()  # files inside: like a cgroup with processes left, it stays
    for f in group.path.iterdir():
        f.unlink()
    assert group.remove() and not group.path.exists()
    assert group.remove()  # already gone


def test_v1_files(tmp_path: Path) -> None:
    group = MemoryCgroup.create(1 << 20, base=(tmp_path, 1))
    assert group is not None
    assert (group.path / "memory.limit_in_bytes").read_text() == str(1 << 20)
    (group.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert group.oom_kills() == 3


def test_no_cgroup_where_the_base_cannot_be_written(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    assert MemoryCgroup.create(1 << 20, base=(missing, 2)) is None


def test_cgroups_of_hosts_that_are_gone_are_pruned(tmp_path: Path) -> None:
    dead = tmp_path / f"{_cgroup.PREFIX}999999999-1"  # no such pid
    alive = tmp_path / f"{_cgroup.PREFIX}1-1"  # pid 1 always exists
    other = tmp_path / "someone-else"
    for d in (dead, alive, other):
        d.mkdir()
    MemoryCgroup.create(1 << 20, base=(tmp_path, 2))
    assert not dead.exists() and alive.exists() and other.exists()


def test_wanted_reads_its_environment_variable(monkeypatch) -> None:
    monkeypatch.delenv(_cgroup.ENV, raising=False)
    assert wanted() is True  # on by default (where the host can make one)
    for value, expected in (("1", True), ("on", True), ("0", False), ("off", False)):
        monkeypatch.setenv(_cgroup.ENV, value)
        assert wanted() is expected
    monkeypatch.setenv(_cgroup.ENV, "2")
    with pytest.raises(SandboxError, match="ERP_PLUGINS_SANDBOX_CGROUP='2' is not understood"):
        wanted()
