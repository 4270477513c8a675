"""The sandbox: a plugin instance in a bubblewrap worker, reached over a validated msgpack pipe.

What holds the plugin (measured on Debian 12, see docs and notes/sandbox.md):
- bwrap with its own user, mount, PID, IPC, UTS, cgroup and (unless `resources.network_access`) network
  namespaces, all capabilities dropped, `--disable-userns`, a seccomp filter compiled on the host, `/`
  read-only, a private 64 MB tmpfs on /tmp, no host environment;
- an unprivileged uid per (plugin, tenant) when the host runs as root, so RLIMIT_NPROC binds;
- rlimits set by the worker before any plugin import: AS from `memory_limit`, a lifetime CPU budget from
  `cpu_limit`, NPROC 32, NOFILE 256 (4096 with network access), CORE 0, FSIZE 64 MB; the host's
  `resources.timeout` per call;
- where the host can create one (and unless ERP_PLUGINS_SANDBOX_CGROUP=0), a memory cgroup per worker
  limited to `memory_limit` (`_cgroup`); AS is then 4× `memory_limit`, a backstop, and the OOM killer's end
  of a worker is reported as out of memory.

What the worker sees of the file system: /usr (the system interpreter and libraries), and a private
read-only "runtime site" at /sandbox/site: hard links (copies across file systems) of exactly the files of the
plugin's distribution and its dependency closure, plus erp-plugins-core and msgpack. It is built once per
set of installed versions under `runtime_dir`. This solves two things: an unprivileged uid cannot reach an
interpreter or site-packages under a mode-700 home (pyenv under /root), and the plugin sees no other
installed package, no state store and no key file. `security.file_permissions` `read-only`/`read-write`
binds a per-(plugin, tenant) directory `<data_root>/<plugin>/<tenant>` at /data (owned by the worker's uid);
`none` leaves nothing writable but /tmp.

Config and secret values travel over the pipe only (never argv or environment). A call that times out or is
cancelled kills the worker's PID namespace; the next call starts a new worker and replays load, initialize
and activate, after an exponential backoff; `max_crashes` deaths within `crash_window` seconds put the
runner into a failed state whose SandboxError says the plugin is put into its error state.

Modules, one concept each: `_availability` (bwrap, event loop, uids), `_site` (runtime site), `_process`
(a running worker's objects), `_command` (bwrap argv and limits), `_launch` (spawning, cgroup moves, kills,
reaping), `_proxy` (calls and streams), `_bridge` (what the worker sends), `_runner` (SandboxRunner),
`_fleet` (WorkerFleet: the cap on live workers, idle stops), `_template` and `_template_pool` (worker
templates: as root, a worker is forked from its plugin's template, keeping its tenant's uid; see the README),
`_forking` (a worker forked from a template). The worker side (`erp_plugins_core._worker`, `_rpc`, `_zygote`)
runs inside the sandbox and imports none of these.
"""

from __future__ import annotations

from ._availability import (
    INSTALL_HINT,
    LOOP_ENV,
    UID_BASE,
    UID_SPAN,
    WORKER_LOOPS,
    bwrap_path,
    sandbox_available,
    uid_for,
    worker_loop,
)
from ._command import AS_FACTOR_WITH_CGROUP, FSIZE_BYTES, TMPFS_BYTES
from ._fleet import IDLE_ENV, MAX_WORKERS_ENV, WorkerFleet, derived_max_workers
from ._launch import START_TIMEOUT
from ._process import LOG_BURST, LOG_RATE, STREAM_WINDOW, describe_exit
from ._proxy import PluginRaised
from ._runner import IDLE_HEALTH, SandboxRunner
from ._site import (
    SANDBOX_SITE,
    SITE_RETENTION_S,
    STALE_BUILD_S,
    Runtime,
    build_runtime,
    choose_python,
    default_runtime_dir,
    mark_used,
    prune_runtime_sites,
)

__all__ = [
    "AS_FACTOR_WITH_CGROUP",
    "FSIZE_BYTES",
    "IDLE_ENV",
    "IDLE_HEALTH",
    "INSTALL_HINT",
    "LOG_BURST",
    "LOG_RATE",
    "LOOP_ENV",
    "MAX_WORKERS_ENV",
    "SANDBOX_SITE",
    "SITE_RETENTION_S",
    "STALE_BUILD_S",
    "START_TIMEOUT",
    "STREAM_WINDOW",
    "TMPFS_BYTES",
    "UID_BASE",
    "UID_SPAN",
    "WORKER_LOOPS",
    "WorkerFleet",
    "PluginRaised",
    "Runtime",
    "SandboxRunner",
    "build_runtime",
    "bwrap_path",
    "choose_python",
    "default_runtime_dir",
    "derived_max_workers",
    "describe_exit",
    "mark_used",
    "prune_runtime_sites",
    "sandbox_available",
    "uid_for",
    "worker_loop",
]
