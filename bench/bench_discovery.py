"""Discovery and validation of 200 installed synthetic plugins: ours against a bare loop and against stevedore.

Cold: `Catalog.load(use_cache=False)` (entry points, manifests read from the distributions' files, strict
validation, dependency graph) against the bare minimum any host does: `entry_points(group="erp_plugins")` plus
`yaml.safe_load` of each manifest, found through the distribution's file list. Target ≤ 1.3×.

Warm: `Catalog.load()` answered from our discovery cache against stevedore's entry point cache answering
from its file (`stevedore._cache.Cache(dir).get_group_all(...)` on a fresh `Cache`, i.e. what the first
`ExtensionManager` of a process costs before it imports the plugins). Target ≤ 1.0×.

Timing is in process, so interpreter start-up is not measured: before every cold measurement
`importlib.invalidate_caches()` drops importlib.metadata's path caches, so each round finds the distributions
afresh. The synthetic site directory goes first on the real `sys.path`, so the interpreter's own
site-packages (and the editable first-party plugins) are scanned too, as in a real environment.

    python bench/bench_discovery.py [--json] [--rounds N] [--warm-rounds N] [--plugins N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import importlib.util
import io
import os
import pstats
import sys
import tempfile
import time
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep bench/ unchanged while its mtime is part of the discovery cache key

import yaml  # noqa: E402
from _synthetic import alternate, make_site, report, row, timed  # noqa: E402

GROUP = "erp_plugins"


def _manifest_bytes(ep: EntryPoint) -> bytes:
    """plugin.yaml beside the entry point's module: from the dist's file list, else (editable) via find_spec."""
    module = ep.value.partition(":")[0].strip()
    parts = module.split(".")
    wanted = "/".join(parts[:-1] + ["plugin.yaml"])
    dist = ep.dist
    assert dist is not None
    for f in dist.files or ():
        if f.name == "plugin.yaml" and f.as_posix() == wanted:
            return Path(str(dist.locate_file(f))).read_bytes()
    spec = importlib.util.find_spec(parts[0])
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root, *parts[1:-1], "plugin.yaml")
        if path.is_file():
            return path.read_bytes()
    raise FileNotFoundError(module)


def bare_loop(loader: Any = None) -> list[Any]:
    """The reference: every entry point of the group, its manifest parsed with yaml (no validation)."""
    out = []
    for ep in entry_points(group=GROUP):
        text = _manifest_bytes(ep)
        out.append(yaml.safe_load(text) if loader is None else yaml.load(text, Loader=loader))  # noqa: S506
    return out


def _per_call(fn: Any, repeat: int) -> Any:
    def measure() -> float:
        return timed(lambda: [fn() for _ in range(repeat)]) / repeat

    return measure


def _cold(fn: Any) -> Any:
    def measure() -> float:
        importlib.invalidate_caches()
        return timed(fn)

    return measure


def _profile(fn: Any, label: str, top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        importlib.invalidate_caches()
        fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return f"--- profile: {label} (5 calls) ---\n" + buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the cold measurement (median)")
    parser.add_argument("--warm-rounds", type=int, default=15, help="alternating rounds of the warm measurement")
    parser.add_argument("--plugins", type=int, default=200, help="synthetic plugins to install")
    parser.add_argument("--profile", action="store_true", help="also print cProfile of our cold and warm load")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="erp-bench-discovery-") as tmp:
        site = Path(tmp, "site")
        make_site(site, args.plugins)
        sys.path.insert(0, str(site))
        os.environ["ERP_PLUGINS_CACHE_DIR"] = str(Path(tmp, "cache"))
        importlib.invalidate_caches()

        from stevedore import _cache as stevedore_cache

        from erp_plugins_core._catalog import Catalog

        # sanity: both sides see the same plugins, and ours finds them all valid
        catalog = Catalog.load(use_cache=False)
        found = len(bare_loop())
        invalid = [r.name for r in catalog.records if r.errors]
        if len(catalog.records) != found or invalid:
            print(f"warning: ours found {len(catalog.records)} plugins ({len(invalid)} invalid: {invalid[:3]}), "
                  f"the bare loop {found}", file=sys.stderr)

        cold = alternate(
            {
                "ours": _cold(lambda: Catalog.load(use_cache=False)),
                "bare": _cold(bare_loop),
                "bare_c": _cold(lambda: bare_loop(yaml.CSafeLoader)),
            },
            args.rounds,
        )

        # warm: the cache is trusted only when written ≥ 2 s after the newest site-dir mtime/ctime (racy-clean
        # rule), so retry until a load is served from it
        deadline = time.monotonic() + 15
        while not Catalog.load().discovery.from_cache:
            if time.monotonic() > deadline:
                print("warning: our discovery cache never hit; warm figures are cold ones", file=sys.stderr)
                break
            time.sleep(0.25)
        stv_dir = str(Path(tmp, "stevedore-cache"))
        eps = stevedore_cache.Cache(stv_dir).get_group_all(GROUP)  # writes its cache file
        if len(eps) != found or not os.listdir(stv_dir):
            print(f"warning: stevedore cache saw {len(eps)} entry points", file=sys.stderr)

        warm = alternate(
            {
                "ours": _per_call(Catalog.load, 10),
                "stevedore": _per_call(lambda: stevedore_cache.Cache(stv_dir).get_group_all(GROUP), 10),
            },
            args.warm_rounds,
        )
        hit = Catalog.load().discovery.from_cache

        rows = [
            row(f"cold: Catalog.load(use_cache=False), {found} plugins", cold["ours"], cold["bare"], 1.3,
                "entry_points(group) + yaml.safe_load of each manifest"),
            row("cold, vs the bare loop with libyaml (info)", cold["ours"], cold["bare_c"], None,
                "entry_points(group) + yaml.load(Loader=CSafeLoader)"),
            row(f"warm: Catalog.load() cache hit ({'hit' if hit else 'MISS'})", warm["ours"], warm["stevedore"], 1.0,
                "stevedore._cache.Cache(dir).get_group_all (fresh Cache: disk hit)"),
        ]
        extra = {"plugins_found": found, "sys_path_entries": len(sys.path), "rounds": args.rounds,
                 "warm_rounds": args.warm_rounds}
        report("bench_discovery: median seconds per load", rows, args.json, extra)

        if args.profile:
            print(_profile(lambda: Catalog.load(use_cache=False), "cold Catalog.load(use_cache=False)"),
                  file=sys.stderr)
            print(_profile(Catalog.load, "warm Catalog.load()"), file=sys.stderr)
            print(_profile(lambda: stevedore_cache.Cache(stv_dir).get_group_all(GROUP), "stevedore cache hit"),
                  file=sys.stderr)
        sys.path.remove(str(site))


if __name__ == "__main__":
    main()
