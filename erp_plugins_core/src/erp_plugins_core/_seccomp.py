"""The seccomp filter of sandboxed workers, compiled on the host with libseccomp (pyseccomp) and handed to bwrap.

Compiling on the host costs the worker nothing at start-up, and the worker never needs libseccomp. The filter
allows everything except what a plugin has no business doing and what could weaken the other layers:
debugging other processes, mounting, new namespaces, kernel modules and keyrings, io_uring, and (unless the
manifest allows network access) any socket other than a local AF_UNIX one. Refused calls fail with EPERM, so
a plugin sees an ordinary PermissionError that the host reports as refused access.
"""

from __future__ import annotations

import errno
import functools
import os
import socket

#: Syscalls refused to every worker.
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "fspick", "mount_setattr", "unshare", "setns",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff", "reboot", "syslog", "acct",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "personality", "quotactl",
    "lookup_dcookie", "vhangup", "iopl", "ioperm",
    # io_uring: a large kernel surface with a record of sandbox escapes, and a way around the socket rule
    # below (its requests are not syscalls seccomp sees); libuv (uvloop) falls back to epoll without it
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)

#: clone flags that would create namespaces (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME).
_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
_TIOCSTI = 0x5412


#: What a worker template (`_zygote`) may do beyond a worker: a forked child makes its namespaces and mounts
#: before it sets the worker's own filter on top of this one.
TEMPLATE_ALLOWED = ("mount", "umount2", "unshare")


@functools.lru_cache(maxsize=4)
def filter_bytes(network: bool, template: bool = False) -> bytes:
    """The BPF program (as bwrap's `--seccomp` reads it) for a worker with or without network access, or for
    a worker template (`template`), which may also unshare namespaces and mount."""
    import pyseccomp as sc

    flt = sc.SyscallFilter(sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        if template and name in TEMPLATE_ALLOWED:
            continue
        try:
            flt.add_rule(eperm, name)
        except (ValueError, RuntimeError, OSError):  # a syscall this kernel/arch does not know
            continue
    # clone3 passes its flags in memory, where seccomp cannot see them; ENOSYS makes libc fall back to clone.
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for bit in _NS_FLAGS:
        flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    flt.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    allowed = {socket.AF_UNIX}
    if network:
        allowed |= {socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK}
    for family in range(0, 64):  # AF_MAX is below 64 on every current kernel
        if family not in allowed:
            flt.add_rule(eperm, "socket", sc.Arg(0, sc.EQ, family))
    with os.fdopen(os.memfd_create("erp-plugins-seccomp-build", 0), "w+b") as buf:
        flt.export_bpf(buf)
        buf.seek(0)
        return buf.read()


def filter_fd(network: bool, template: bool = False) -> int:
    """A fresh readable fd (memfd, at offset 0) holding the BPF program, for bwrap's `--seccomp FD`."""
    data = filter_bytes(network, template)
    fd = os.memfd_create("erp-plugins-seccomp", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
