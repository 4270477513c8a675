"""The AI provider plugins through the host against their SDKs called directly, on the same loopback servers.

Both fake servers (`tests/servers/openai_fake.py`, `tests/servers/ollama_fake.py`) run as separate processes on
127.0.0.1. For each provider (`openai_provider`, `local_llm_provider`) and each mode (in process, under
ERP_PLUGINS_UNSAFE_NO_SANDBOX=1; sandboxed, in its bubblewrap worker) one PluginHost, with a temporary state
file and a fresh Fernet key, has that provider alone enabled for its own tenant. Measured side by side:

- ai_request, sequential: `await host.first("ai_request", tenant=T, prompt=P, context={})` against
  `AsyncOpenAI(...).chat.completions.create(...)` / `ollama.AsyncClient(...).chat(..., stream=False)` with the
  parameters the plugin sends. Median per-call latency, target ≤ 1.10×.
- ai_request, N concurrent (default 200, `asyncio.gather`): requests per second, the SDK side with one shared
  client (as the plugin has one). Target ≥ 0.90×.
- ai_stream, sequential: `async for c in host.stream("ai_stream", ...)` against the SDK's stream
  (`stream=True`, content deltas taken out the way the plugin does). Median time to first chunk and to the end,
  target ≤ 1.10× each.
- ai_stream, N concurrent: streams per second (target ≥ 0.90×) and the median first chunk under that load
  (no target: it is mostly queueing).
- Sandboxed only, the floor (no target): the same SDK calls (`bench/_sdk_calls.py`) in a bare process started
  with the plugin's own bwrap command line, interpreter and runtime site, behind a raw length-prefixed pipe:
  what any out-of-process plugin pays here. Rows `[floor vs SDK]` and `[ours vs floor]`, measured in the same
  rounds as the sequential rows above (the three sides take turns going first).

Sequential: 150 rounds of one call per side (`--rounds`, `--calls`), the side going first rotating, so
both see the same moment of a noisy machine; garbage collector off meanwhile, as timeit does; medians over
every call. Concurrent: one warm-up burst per side (both connection pools grow to their size), then 4
alternating rounds of one burst per side (`--burst-rounds`; even, so each side goes first equally often);
the median burst's wall time gives the rate.
Failed calls are counted and shown, never hidden; a provider that cannot be measured becomes a FAILED row.
Exits 0 whatever the ratios are. About 2 minutes on 2 cores (most of it the 200-call bursts: the SDKs'
connection pools cost super-linear CPU at that concurrency, on both sides alike).

    python bench/bench_ai_providers.py [--json] [--rounds N] [--calls N] [--burst-rounds N] [--concurrency N]
                                       [--modes in_process,sandboxed] [--providers openai,ollama]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True

from _sandbox_raw import raw_process, worker_loop_name  # noqa: E402
from _sdk_calls import ANSWER, API_KEY, CALLS, OLLAMA_MODEL, OPENAI_MODEL, PROMPT, TIMEOUT, SdkCalls  # noqa: E402
from _synthetic import fmt_time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ROOT / "tests" / "servers"
SDK_CALLS = Path(__file__).resolve().parent / "_sdk_calls.py"  # also the floor's program
KEY_ENV = "BENCH_OPENAI_KEY"  # the plugin gets the fake's key as env:BENCH_OPENAI_KEY
UNSAFE_ENV = "ERP_PLUGINS_UNSAFE_NO_SANDBOX"
LATENCY_TARGET = 1.10
THROUGHPUT_TARGET = 0.90

_perf = time.perf_counter


# --- the fake servers, each in its own process -------------------------------------------------------------


class FakeProcess:
    """`python tests/servers/<script> --port 0` as a child process; its first stdout line is its URL."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> FakeProcess:
        self.proc = subprocess.Popen([sys.executable, str(SERVERS / self.script), "--port", "0"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.__exit__()
            raise SystemExit(f"{self.script} did not start (printed {self.url!r}); run it by hand to see why")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the fake serves until stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


# --- the sides of each provider: ours, the SDK's, and (sandboxed) the floor --------------------------------


class Floor:
    """The provider's SDK in a bare process under the plugin's own bwrap command line, behind a raw pipe.

    What any out-of-process plugin costs here (interpreter, sandbox, two pipe hops) without the host's RPC
    machinery: `bench/_sdk_calls.py` run with the worker's interpreter and runtime site, driven by a
    length-prefixed frame per call (and per stream chunk) through an asyncio StreamReader.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, runner: Any, provider: str, url: str) -> Floor:
        from erp_plugins_core._sandbox import SANDBOX_SITE, worker_loop

        proc = await raw_process(runner, ["-c", SDK_CALLS.read_text(), SANDBOX_SITE, worker_loop()], pipes=True)
        floor = cls(proc)
        floor._send(json.dumps({"provider": provider, "url": url, "api_key": API_KEY}).encode())
        if await floor.call() != ANSWER:
            await floor.close()
            raise RuntimeError("the floor process answers differently from the SDK")
        return floor

    def _send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(len(data).to_bytes(4, "big") + data)

    async def _receive(self) -> bytes:
        assert self.proc.stdout is not None
        head = await self.proc.stdout.readexactly(4)
        return await self.proc.stdout.readexactly(int.from_bytes(head, "big"))

    async def call(self) -> str:
        self._send(b"c")
        return (await self._receive()).decode()

    async def burst(self, n: int) -> None:
        """`n` concurrent calls in the floor process (its connection pool grows to the size the others' reach)."""
        self._send(b"b%d" % n)
        await self._receive()

    async def stream(self) -> AsyncIterator[str]:
        self._send(b"s")
        while piece := await self._receive():
            yield piece.decode()

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        os.close(self.proc.info_fd)  # type: ignore[attr-defined]


@dataclass
class Sides:
    """What is compared for one provider in one mode: ours (through the host), the SDK's, and when sandboxed
    the floor's calls and streams."""

    ours_call: Callable[[], Awaitable[Any]]
    ours_stream: Callable[[], AsyncIterator[Any]]
    sdk: SdkCalls
    floor: Floor | None = None

    async def close(self) -> None:
        await self.sdk.close()
        if self.floor is not None:
            await self.floor.close()


def host_sides(host: Any, tenant: str, provider: str, url: str) -> Sides:
    def ours_call() -> Awaitable[Any]:
        return host.first("ai_request", tenant=tenant, prompt=PROMPT, context={})

    def ours_stream() -> AsyncIterator[Any]:
        return host.stream("ai_stream", tenant=tenant, prompt=PROMPT, context={})

    return Sides(ours_call, ours_stream, CALLS[provider](url, API_KEY))


PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {
        "plugin": "openai_provider",
        "server": "openai_fake.py",
        "config": lambda url: {"api_key": f"env:{KEY_ENV}", "base_url": url, "model": OPENAI_MODEL,
                               "max_retries": 0, "timeout": TIMEOUT},
    },
    "ollama": {
        "plugin": "local_llm_provider",
        "server": "ollama_fake.py",
        "config": lambda url: {"host": url, "model": OLLAMA_MODEL, "timeout": TIMEOUT},
    },
}


# --- timing --------------------------------------------------------------------------------------------------


class _NoGC:
    """Collect, then keep the garbage collector off for a timed block (as timeit does)."""

    def __enter__(self) -> None:
        gc.collect()
        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            gc.enable()


async def _latencies(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = _perf()
        await fn()
        out.append(_perf() - start)
    return out


async def _one_stream(fn: Callable[[], AsyncIterator[Any]]) -> tuple[float, float]:
    """Seconds to the first chunk and to the end of one stream."""
    start = _perf()
    first = 0.0
    async for _ in fn():
        if not first:
            first = _perf() - start
    return first, _perf() - start


async def _stream_times(fn: Callable[[], AsyncIterator[Any]], n: int) -> list[tuple[float, float]]:
    return [await _one_stream(fn) for _ in range(n)]


async def _burst(fn: Callable[[], Awaitable[Any]], n: int) -> tuple[float, int]:
    """Wall seconds of `n` concurrent calls, and how many of them failed."""
    with _NoGC():
        start = _perf()
        out = await asyncio.gather(*(fn() for _ in range(n)), return_exceptions=True)
        return _perf() - start, _failures(out)


async def _stream_burst(fn: Callable[[], AsyncIterator[Any]], n: int) -> tuple[float, int, list[float]]:
    """Wall seconds of `n` concurrent streams, how many failed, and each other one's time to its first chunk."""
    with _NoGC():
        start = _perf()
        out = await asyncio.gather(*(_one_stream(fn) for _ in range(n)), return_exceptions=True)
        return _perf() - start, _failures(out), [t[0] for t in out if isinstance(t, tuple)]


def _failures(outcomes: list[Any]) -> int:
    """How many outcomes are exceptions; the first one's text is kept to be shown once."""
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed and not _FIRST_FAILURE:
        _FIRST_FAILURE.append(f"{type(failed[0]).__name__}: {failed[0]}")
    return len(failed)


_FIRST_FAILURE: list[str] = []


async def _rotate(sides: list[Callable[[], Awaitable[Any]]], rounds: int, *,
                  gc_off: bool = False) -> list[list[Any]]:
    """Each side once per round, the order rotating by one each round (two sides alternate which goes first);
    every round's outcome of each side.

    With `gc_off` the collector stays off for all rounds (sequential blocks are short; collecting before
    each one would cost more than the block); bursts turn it off themselves, one burst at a time.
    """
    out: list[list[Any]] = [[] for _ in sides]
    with _NoGC() if gc_off else contextlib.nullcontext():
        for r in range(rounds):
            for i in range(len(sides)):
                k = (r + i) % len(sides)
                out[k].append(await sides[k]())
    return out


def _flat(rounds: list[list[Any]]) -> list[Any]:
    return [x for block in rounds for x in block]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_row(name: str, ours: list[float], ref: list[float], reference: str) -> dict[str, Any]:
    o, r = statistics.median(ours), statistics.median(ref)
    ratio = o / r
    return {"name": name, "kind": "latency", "ours_s": o, "reference_s": r, "ratio": round(ratio, 3),
            "overhead_us": round((o - r) * 1e6, 1), "target": LATENCY_TARGET, "met": ratio <= LATENCY_TARGET,
            "ours_p90_s": _pct(ours, 0.9), "reference_p90_s": _pct(ref, 0.9), "samples": len(ours),
            "reference": reference}


def throughput_row(name: str, n: int, ours: list[tuple[Any, ...]], ref: list[tuple[Any, ...]],
                   reference: str) -> dict[str, Any]:
    """Calls per second from the median burst wall time; bursts with failed calls are reported, not hidden."""
    o, r = n / statistics.median(b[0] for b in ours), n / statistics.median(b[0] for b in ref)
    ratio = o / r
    failed = sum(b[1] for b in ours)  # a failed call ends early: with failures the rate is not a result
    return {"name": name, "kind": "throughput", "ours_per_s": round(o, 1), "reference_per_s": round(r, 1),
            "ratio": round(ratio, 3), "target": THROUGHPUT_TARGET, "met": ratio >= THROUGHPUT_TARGET and not failed,
            "rounds": len(ours), "ours_walls_s": [round(b[0], 4) for b in ours],
            "reference_walls_s": [round(b[0], 4) for b in ref], "ours_failed": failed,
            "reference_failed": sum(b[1] for b in ref), "reference": reference}


def info_row(name: str, ours: list[float], ref: list[float], reference: str) -> dict[str, Any]:
    o, r = statistics.median(ours), statistics.median(ref)
    return {"name": name, "kind": "latency", "ours_s": o, "reference_s": r, "ratio": round(o / r, 3),
            "overhead_us": round((o - r) * 1e6, 1), "target": None, "met": None, "samples": len(ours),
            "reference": reference}


# --- one provider in one mode --------------------------------------------------------------------------------


async def measure(label: str, sides: Sides, args: argparse.Namespace) -> list[dict[str, Any]]:
    sdk, floor = sides.sdk, sides.floor
    got, want = await sides.ours_call(), await sdk.call()
    chunks = [c async for c in sides.ours_stream()]
    ref_chunks = [c async for c in sdk.stream()]
    if not (got == want == ANSWER and chunks == ref_chunks and "".join(chunks) == ANSWER and len(chunks) > 1):
        raise SystemExit(f"{label}: host and SDK answer differently: {got!r} / {want!r}, {chunks!r} / {ref_chunks!r}")
    if floor is not None and [c async for c in floor.stream()] != ref_chunks:
        raise SystemExit(f"{label}: the floor process streams differently from the SDK")
    n, c, rounds, bursts = args.calls, args.concurrency, args.rounds, args.burst_rounds
    calls = [sides.ours_call, sdk.call] + ([floor.call] if floor is not None else [])
    streams = [sides.ours_stream, sdk.stream] + ([floor.stream] if floor is not None else [])
    # warm every side: connections open in each pool, code paths and caches hot
    for _ in range(3):
        for fn in calls:
            await _latencies(fn, 5)
    await _burst(sides.ours_call, c)  # every pool opens its connections (the streams reuse them)
    await _burst(sdk.call, c)
    if floor is not None:  # a pool of c connections costs each request more: the floor's must match
        await floor.burst(c)

    rows: list[dict[str, Any]] = []
    lat = [_flat(x) for x in await _rotate([lambda f=f: _latencies(f, n) for f in calls], rounds, gc_off=True)]
    rows.append(latency_row(f"{label}: ai_request p50", lat[0], lat[1], sdk.call_text))
    rows += floor_rows(f"{label}: ai_request p50", lat, sdk.call_text)
    a, b = await _rotate([lambda: _burst(sides.ours_call, c), lambda: _burst(sdk.call, c)], bursts)
    rows.append(throughput_row(f"{label}: ai_request ×{c} concurrent", c, a, b,
                               f"asyncio.gather of {c} of: {sdk.call_text}, one shared client"))
    if floor is not None:  # idle connections expire after 5 s: its pool must be as full as the two that just burst
        await floor.burst(c)
    st = [_flat(x) for x in await _rotate([lambda f=f: _stream_times(f, n) for f in streams], rounds, gc_off=True)]
    firsts, totals = [[f for f, _ in x] for x in st], [[t for _, t in x] for x in st]
    rows.append(latency_row(f"{label}: ai_stream first chunk p50", firsts[0], firsts[1], sdk.stream_text))
    rows += floor_rows(f"{label}: ai_stream first chunk p50", firsts, sdk.stream_text)
    rows.append(latency_row(f"{label}: ai_stream total p50", totals[0], totals[1], sdk.stream_text))
    rows += floor_rows(f"{label}: ai_stream total p50", totals, sdk.stream_text)
    a, b = await _rotate([lambda: _stream_burst(sides.ours_stream, c), lambda: _stream_burst(sdk.stream, c)], bursts)
    rows.append(throughput_row(f"{label}: ai_stream ×{c} concurrent", c, a, b,
                               f"asyncio.gather of {c} SDK streams, one shared client"))
    rows.append(info_row(f"{label}: ai_stream ×{c}, first chunk p50", _flat([f for *_, f in a]),
                         _flat([f for *_, f in b]), "the same bursts"))
    return rows


def floor_rows(name: str, samples: list[list[float]], reference: str) -> list[dict[str, Any]]:
    """With a floor (samples[2]): the floor against the SDK, and ours against the floor (no targets)."""
    if len(samples) < 3:
        return []
    ours, sdk, floor = samples
    return [info_row(f"{name}  [floor vs SDK]", floor, sdk, f"{FLOOR_TEXT}; vs: {reference}"),
            info_row(f"{name}  [ours vs floor]", ours, floor, FLOOR_TEXT)]


FLOOR_TEXT = "the same SDK call in a bare process under the plugin's bwrap command line, behind a raw pipe"


async def run_mode(mode: str, urls: dict[str, str], args: argparse.Namespace, tmp: Path,
                   phases: dict[str, float]) -> list[dict[str, Any]]:
    from erp_plugins_core import PluginHost

    if mode == "in_process":
        os.environ[UNSAFE_ENV] = "1"  # read when a plugin instance is created, i.e. during enable()
    else:
        os.environ.pop(UNSAFE_ENV, None)
    rows: list[dict[str, Any]] = []
    try:
        async with PluginHost(tmp / f"state-{mode}.db", health_loop=False) as host:
            for provider in args.providers:
                spec = PROVIDERS[provider]
                tenant = f"bench-{provider}"  # one provider per tenant: first/stream can only pick that one
                label = f"{spec['plugin']} {'in-proc' if mode == 'in_process' else 'sandbox'}"
                start = _perf()
                await host.enable(spec["plugin"], tenant=tenant, config=spec["config"](urls[provider]))
                phases[f"{label}: enable"] = round(_perf() - start, 2)
                sides = host_sides(host, tenant, provider, urls[provider])
                start = _perf()
                try:
                    if mode == "sandboxed":
                        runner = host._instances[(tenant, spec["plugin"])].runner
                        sides.floor = await Floor.start(runner, provider, urls[provider])
                    rows += await measure(label, sides, args)
                except Exception as exc:  # reported as a row: a benchmark reports, it does not crash
                    rows.append({"name": label, "kind": "failed", "error": f"{type(exc).__name__}: {exc}",
                                 "met": False, "reference": ""})
                finally:
                    await sides.close()
                phases[f"{label}: measure"] = round(_perf() - start, 2)
    finally:
        os.environ.pop(UNSAFE_ENV, None)
    return rows


# --- output --------------------------------------------------------------------------------------------------


def _signed(seconds: float) -> str:
    """A time difference with its sign and a readable unit."""
    return ("+" if seconds >= 0 else "-") + fmt_time(abs(seconds)).replace(" ", "")


def report(rows: list[dict[str, Any]], extra: dict[str, Any], as_json: bool) -> None:
    title = "bench_ai_providers: host vs SDK direct on loopback fakes in other processes"
    if as_json:
        print(json.dumps({"benchmark": title, "python": sys.version.split()[0], "rows": rows, **extra}, indent=2))
        return
    print(title)
    header = f"{'measurement':<58} {'ours':>11} {'SDK':>11} {'ratio':>7} {'+ours':>9} {'target':>7}  met"
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["kind"] == "failed":
            print(f"{r['name']:<58} FAILED: {r['error']}")
            continue
        if r["kind"] == "throughput":
            ours, ref, extra_col = f"{r['ours_per_s']:.0f}/s", f"{r['reference_per_s']:.0f}/s", ""
            target = f"≥{r['target']:.2f}×"
        else:
            ours, ref = fmt_time(r["ours_s"]), fmt_time(r["reference_s"])
            extra_col = _signed(r["overhead_us"] / 1e6)
            target = f"≤{r['target']:.2f}×" if r["target"] is not None else "-"
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['name']:<58} {ours:>11} {ref:>11} {r['ratio']:>6.2f}× {extra_col:>9} {target:>7}  {met}")
        if r.get("ours_failed") or r.get("reference_failed"):
            print(f"    failed calls (not met while ours fail): ours {r['ours_failed']}, SDK {r['reference_failed']} "
                  f"(first: {_FIRST_FAILURE[0]})")
    seen: set[str] = set()
    for r in rows:
        if r["reference"] not in seen and r["kind"] != "throughput" and r["target"] is not None:
            seen.add(r["reference"])
            print(f"SDK side: {r['reference']}")
    for key, value in extra.items():
        print(f"{key}: {value}")


def _interpreters() -> str:
    """The host's and the sandbox workers' interpreters and the workers' event loop: the interpreters differ when
    the host's is not reachable by the workers' uids (pyenv under a private home), and a different build or loop
    runs the same SDK code faster or slower."""
    from erp_plugins_core._sandbox import choose_python

    worker = choose_python()[0]
    version = subprocess.run([worker, "-I", "-S", "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    host = f"{os.path.realpath(sys.executable)} {sys.version.split()[0]}"
    same = os.path.realpath(worker) == os.path.realpath(sys.executable)
    return (f"host {host}; sandbox worker {worker} {version}" + (" (the same)" if same else "")
            + f"; workers' and floor's event loop {worker_loop_name()} (ERP_PLUGINS_SANDBOX_LOOP)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--rounds", type=int, default=150, help="alternating rounds of the sequential measurements")
    parser.add_argument("--calls", type=int, default=1, help="sequential calls per side per round")
    parser.add_argument("--burst-rounds", type=int, default=4, help="alternating rounds of the concurrent bursts")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent calls per burst")
    parser.add_argument("--modes", default="in_process,sandboxed", help="comma-separated: in_process,sandboxed")
    parser.add_argument("--providers", default="openai,ollama", help="comma-separated: openai,ollama")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    args.providers = [p for p in args.providers.split(",") if p]
    bad = [m for m in args.modes if m not in ("in_process", "sandboxed")] + \
          [p for p in args.providers if p not in PROVIDERS]
    if bad:
        parser.error(f"unknown mode/provider {', '.join(bad)}; modes: in_process, sandboxed; providers: openai, ollama")

    from cryptography.fernet import Fernet

    # the in-process mode is the development opt-out; the host's warning about it is expected here
    logging.getLogger("erp_plugins").setLevel(logging.ERROR)
    started = _perf()
    extra: dict[str, Any] = {}
    if "sandboxed" in args.modes:
        from erp_plugins_core._sandbox import sandbox_available

        why = sandbox_available()
        if why is not None:
            args.modes.remove("sandboxed")
            extra["sandboxed"] = f"skipped: the sandbox cannot start here: {why}"
        else:
            extra["interpreters"] = _interpreters()
            extra["floor"] = FLOOR_TEXT + " (the worker's interpreter, runtime site and event loop; no RPC machinery)"
    rows: list[dict[str, Any]] = []
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="erp-bench-ai-") as tmp, \
            FakeProcess("openai_fake.py") as openai_fake, FakeProcess("ollama_fake.py") as ollama_fake:
        os.environ["ERP_PLUGINS_CACHE_DIR"] = str(Path(tmp, "cache"))
        os.environ["ERP_PLUGINS_SECRET_KEY"] = Fernet.generate_key().decode()
        os.environ[KEY_ENV] = API_KEY
        urls = {"openai": openai_fake.url, "ollama": ollama_fake.url}
        for mode in args.modes:
            rows += asyncio.run(run_mode(mode, urls, args, Path(tmp), phases))
    extra.update({"rounds": args.rounds, "sequential_calls_per_round": args.calls, "burst_rounds": args.burst_rounds,
                  "concurrency": args.concurrency,
                  "cpus": os.cpu_count(), "seconds": phases, "wall_s": round(_perf() - started, 1)})
    report(rows, extra, args.json)


if __name__ == "__main__":
    main()
