"""Sandboxed workers: cold start, warm hook round trip, and 100 concurrent calls.

Cold start: `SandboxRunner` spawning a worker until its hello (limits set, pipe moved, msgpack imported)
against the same bwrap command line running `python -I -S -B -c pass`. Target ≤ 1.5×. Also printed: until
the worker answers a first `ping` (asyncio and its event loop imported, serving), which the hello does not
include; and, where the host can make memory cgroups (workers then start in one by default), the cold start
without one, ERP_PLUGINS_SANDBOX_CGROUP=0 (no target), to show what the cgroup costs.

Warm round trip: a hook call through the proxy (`hook_function("ai_request")`: frame, worker task, plugin
method, reply, usage merge) against a raw length-prefixed msgpack echo over the pipe to the same kind of worker
(same bwrap flags, same interpreter, a blocking read/write loop), driven by the same asyncio client, 2000
calls each in alternating blocks of 200 (so machine noise hits both alike). Target ≤ 2× at p50 and p99.
Also measured in the same blocks, with no target: the floor of any event-loop worker, an echo that reads and
writes the pipe from an `add_reader` callback on the workers' own loop (uvloop, or asyncio under
ERP_PLUGINS_SANDBOX_LOOP=asyncio) with no decoding at all. What the proxy costs above it is our RPC: frames,
checks, the task per call, the plugin method, on both sides.

Run as root: `python bench/bench_sandbox.py`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack

from erp_plugins_core import _cgroup, _rpc
from erp_plugins_core._cgroup import MemoryCgroup
from erp_plugins_core._context import PluginContext
from erp_plugins_core._discovery import PluginRecord
from erp_plugins_core._manifest import load_manifest
from erp_plugins_core._redact import Redactor
from erp_plugins_core._sandbox import SANDBOX_SITE, SandboxRunner, sandbox_available, worker_loop

sys.dont_write_bytecode = True

from _sandbox_raw import raw_process, worker_loop_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "erp_plugins_core" / "tests" / "hostile" / "sbx_good"
ECHO = (
    "import os,struct\n"
    "i,o=0,1\n"
    "def rd(n):\n"
    "    b=b''\n"
    "    while len(b)<n:\n"
    "        c=os.read(i,n-len(b))\n"
    "        if not c: raise SystemExit\n"
    "        b+=c\n"
    "    return b\n"
    "while True:\n"
    "    h=rd(4); p=rd(struct.unpack('>I',h)[0]); os.write(o,h+p)\n"
)


#: The event-loop floor: `python -c LOOP_ECHO <site> <auto|asyncio>` echoes from an add_reader callback on the
#: loop the worker's own `new_loop` makes.
LOOP_ECHO = (
    "import os,sys\n"
    "sys.path[:0]=[sys.argv[1],sys.argv[1]+'/erp_plugins_core']\n"
    "from _worker import new_loop\n"
    "loop=new_loop(sys.argv[2])\n"
    "os.set_blocking(0,False)\n"
    "def echo():\n"
    "    data=os.read(0,65536)\n"
    "    if not data: loop.stop(); return\n"
    "    os.write(1,data)\n"
    "loop.add_reader(0,echo)\n"
    "loop.run_forever()\n"
)


def build_site(work: Path) -> Path:
    shutil.copytree(CORPUS, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "wheels"), str(work / "src")], check=True)
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    *map(str, (work / "wheels").glob("*.whl"))], check=True)
    return site


def record(site: Path) -> PluginRecord:
    path = site / "sbx_good" / "plugin.yaml"
    return PluginRecord(name="sbx_good", entry_point="sbx_good.plugin:Plugin", distribution="sbx-good",
                        dist_version="0.1.0", dist_path=str(site / "sbx_good-0.1.0.dist-info"),
                        manifest_path=str(path), manifest=load_manifest(path.read_bytes(), str(path)))


class _Bridge:
    def get_service(self, name):  # noqa: ANN001, ANN201
        raise KeyError(name)

    async def emit_event(self, event_type, data):  # noqa: ANN001, ANN201
        return None

    def progress(self, done, total, message):  # noqa: ANN001, ANN201
        return None


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    reason = sandbox_available()
    if reason:
        raise SystemExit(f"cannot benchmark: {reason}")
    work = Path(tempfile.mkdtemp(prefix="erp-bench-sbx-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        site = build_site(work)
        (work / "rt").mkdir(mode=0o755)
        runner = SandboxRunner(record(site), "bench", runtime_dir=work / "rt")
        await runner.load()
        config = {"greeting": "hi", "api_key": "sk-bench-secret"}
        ctx = PluginContext(tenant_id="bench", plugin="sbx_good", config=config, granted=frozenset(),
                            bridge=_Bridge(), redactor=Redactor())
        await runner.initialize(config, ctx)

        # cold start, alternating; where workers get memory cgroups, also without one (no target)
        cgroups = MemoryCgroup.create(1 << 30) if _cgroup.wanted() else None
        if cgroups is not None:
            cgroups.remove()
        ours, ready, base, without = [], [], [], []
        for _ in range(15):
            t = time.perf_counter()
            w = await runner._spawn()
            ours.append(time.perf_counter() - t)
            await runner._call(w, "ping", {}, what="ping", seconds=10)
            ready.append(time.perf_counter() - t)
            await runner._stop(w, "bench")
            t = time.perf_counter()
            proc = await raw_process(runner, ["-c", "pass"])
            await proc.wait()
            os.close(proc.info_fd)
            base.append(time.perf_counter() - t)
            if cgroups is not None:
                os.environ[_cgroup.ENV] = "0"
                try:
                    t = time.perf_counter()
                    w = await runner._spawn()
                    without.append(time.perf_counter() - t)
                    await runner._stop(w, "bench")
                finally:
                    del os.environ[_cgroup.ENV]
        o, b = statistics.median(ours), statistics.median(base)
        print(f"cold start{' (in its memory cgroup)' if cgroups is not None else ''}: worker to hello "
              f"{o * 1e3:.1f} ms, bwrap python -c pass {b * 1e3:.1f} ms, ratio {o / b:.2f}x (target <= 1.5x)")
        r = statistics.median(ready)
        print(f"cold start to a first answer (asyncio and the worker loop imported, serving; no plugin import): "
              f"{r * 1e3:.1f} ms, ratio {r / b:.2f}x")
        if without:
            c = statistics.median(without)
            print(f"cold start without a memory cgroup ({_cgroup.ENV}=0; no target): worker to hello "
                  f"{c * 1e3:.1f} ms, ratio {c / b:.2f}x")

        # warm round trip through the proxy, and a raw echo worker with the same flags and interpreter driven by
        # the same asyncio client; measured in alternating blocks of 200 calls so that both see the same
        # machine (shared cores drift by 2x within seconds)
        fn = runner.hook_function("ai_request", "answer")
        echoes = [await raw_process(runner, ["-c", ECHO], pipes=True),
                  await raw_process(runner, ["-c", LOOP_ECHO, SANDBOX_SITE, worker_loop()], pipes=True)]
        frame = _rpc.encode({"t": "req", "id": 1, "op": "hook", "user": {}, "files": [],
                             "args": {"method": "answer", "kwargs": {"prompt": "x", "context": {}}}})
        proxy: list[float] = []
        raw: list[list[float]] = [[], []]  # the blocking echo, the event-loop echo
        for block in range(11):  # the first block of each warms up
            for _ in range(200):
                t = time.perf_counter()
                await fn("x", {})
                if block:
                    proxy.append(time.perf_counter() - t)
            for proc, out in zip(echoes, raw, strict=True):
                for _ in range(200):  # inline, exactly as before: no helper coroutine added to the reference
                    t = time.perf_counter()
                    proc.stdin.write(frame)
                    head = await proc.stdout.readexactly(4)
                    msgpack.unpackb(await proc.stdout.readexactly(int.from_bytes(head, "big")))
                    if block:
                        out.append(time.perf_counter() - t)
        for proc in echoes:
            proc.stdin.close()
            await proc.wait()
            os.close(proc.info_fd)
        loop_name = worker_loop_name()
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            a, c, e = pct(proxy, q), pct(raw[0], q), pct(raw[1], q)
            print(f"warm round trip {name}: proxy {a * 1e6:.0f} us, raw pipe {c * 1e6:.0f} us, "
                  f"ratio {a / c:.2f}x (target <= 2x); {loop_name} echo {e * 1e6:.0f} us "
                  f"({e / c:.2f}x raw; proxy {a / e:.2f}x it)")

        # 100 concurrent calls
        t = time.perf_counter()
        results = await asyncio.gather(*(fn(f"c{i}", {}) for i in range(100)))
        took = time.perf_counter() - t
        assert results == [f"hi c{i}" for i in range(100)]
        t = time.perf_counter()
        results = await asyncio.gather(*(fn("sleep:0.2", {}) for i in range(100)))
        slept = time.perf_counter() - t
        print(f"100 concurrent calls: {took * 1e3:.1f} ms total ({took * 1e4:.0f} us/call); "
              f"100 concurrent 200 ms calls: {slept * 1e3:.0f} ms total")
        print(f"worker event loop: {loop_name} (ERP_PLUGINS_SANDBOX_LOOP; the raw echo needs none)")
        await runner.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
