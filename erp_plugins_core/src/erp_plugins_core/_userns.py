"""The holder of a worker template's user namespace, and the one process that maps a tenant's uid into it.

The host starts this script (with the runtime site's interpreter, `-I -S -B`) as the template's own uid. It
unshares a user namespace, says `ready`, and the host, as root, maps the template's uid and the whole range of
tenant uids into it. bubblewrap then starts the template in this namespace. For each worker the template
forks, the child unshares a user namespace of its own; only a process of the parent namespace with CAP_SETUID
there may map ids into it, and this holder is that process: for each line `PID UID INNER` from the host it
maps `UID` (seen inside the child) to `INNER` (the tenant's uid inside the template's namespace), uids and
gids, and answers `ok` or `error ...`.

Neither the template nor a worker can reach it: it runs outside their PID namespaces, is not dumpable, and
nothing but the host writes to its stdin. Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE = 4


def main() -> None:
    """Unshare, say ready, then map each child the host names until its stdin closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER) != 0:
        print(f"error unshare: {os.strerror(ctypes.get_errno())}", flush=True)
        return
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            pid, uid, inner = (int(v) for v in line.split())
            with open(f"/proc/{pid}/setgroups", "w") as fh:
                fh.write("deny")
            for kind in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{kind}", "w") as fh:
                    fh.write(f"{uid} {inner} 1\n")
        except (OSError, ValueError) as exc:
            print(f"error {exc}".replace("\n", " "), flush=True)
        else:
            print("ok", flush=True)


if __name__ == "__main__":
    main()
