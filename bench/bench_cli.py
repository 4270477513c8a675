"""Wall time of the `erp-plugins` command line, and which modules `list` imports.

- `erp-plugins list --json` with the three first-party plugins installed (the interpreter's own installs), its
  discovery cache warm and off (`ERP_PLUGINS_CACHE=0`), against `python -c pass` and
  `python -c "import erp_plugins_core"` on the same interpreter.
- `erp-plugins call ai_request --tenant acme --arg prompt=hello --json` for one trusted in-process synthetic
  plugin, against `erp-plugins list --json` in the same environment (the synthetic plugin's site dir on
  PYTHONPATH, a temporary state file, ERP_PLUGINS_SECRET_KEY set to a fresh Fernet key).
- A check that `list` imports no SDK (openai, ollama, googleapiclient) and no plugin package: `list` runs in a
  wrapper that prints `sys.modules` at exit.

Every command runs once per round, in rotating order; medians of wall time (process start to exit).
No targets are set for these; the ratios are for the reader.

    python bench/bench_cli.py [--json] [--rounds N] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True

from _synthetic import install_plugin, report, row  # noqa: E402

SDKS = ("openai", "ollama", "googleapiclient")
PLUGIN_PACKAGES = ("erp_plugin_openai", "erp_plugin_ollama", "erp_plugin_google")

WRAPPER = """\
import sys
sys.argv = ["erp-plugins", *sys.argv[1:]]
from erp_plugins_core._cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
tops = sorted({m.split(".")[0] for m in sys.modules})
print("\\n@@MODULES@@ " + " ".join(tops) + " @@COUNT@@ " + str(len(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def _script() -> str:
    """The real console script of this interpreter (not a version-manager shim, which adds its own start-up)."""
    beside = Path(sys.executable).parent / "erp-plugins"
    if beside.exists():
        return str(beside)
    found = shutil.which("erp-plugins")
    if not found:
        raise SystemExit("erp-plugins is not installed for this interpreter: pip install -e erp_plugins_core")
    return found


def _run(cmd: list[str], env: dict[str, str], *, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed, proc


def _modules(env: dict[str, str], args: list[str]) -> tuple[list[str], int]:
    _, proc = _run([sys.executable, "-c", WRAPPER, *args], env)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("@@MODULES@@"))
    names, _, count = line.removeprefix("@@MODULES@@ ").partition(" @@COUNT@@ ")
    return names.split(), int(count)


def _cache_state(cache_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache_dir.glob("discovery-*")} if cache_dir.exists() else {}


def _importtime(env: dict[str, str], args: list[str], top: int = 15) -> str:
    _, proc = _run([sys.executable, "-X", "importtime", "-c", WRAPPER, *args], env)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3:
                rows.append((int(parts[1]), int(parts[0]), parts[2].rstrip()))
    rows.sort(reverse=True)
    out = [f"--- import time of `erp-plugins {' '.join(args)}` (top {top} cumulative, µs) ---"]
    out += [f"{cum:>9} {self_:>9}  {name}" for cum, self_, name in rows[:top]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (median)")
    parser.add_argument("--importtime", action="store_true", help="also print the biggest imports of list and call")
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    script = _script()
    with tempfile.TemporaryDirectory(prefix="erp-bench-cli-") as tmp:
        site = Path(tmp, "site")
        site.mkdir()
        install_plugin(site, "bcli_000", sandbox=False)
        cache_dir = Path(tmp, "cache")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ERP_PLUGINS_", "PYTHON"))}
        base.update({
            "ERP_PLUGINS_STATE": str(Path(tmp, "state.db")),
            "ERP_PLUGINS_SECRET_KEY": Fernet.generate_key().decode(),
            "ERP_PLUGINS_CACHE_DIR": str(cache_dir),
        })
        with_plugin = {**base, "PYTHONPATH": str(site)}
        cold = {**base, "ERP_PLUGINS_CACHE": "0"}

        listing = [script, "list", "--json"]
        calling = [script, "call", "ai_request", "--tenant", "acme", "--arg", "prompt=hello", "--json"]
        _run([script, "enable", "bcli_000", "--tenant", "acme", "--trust"], with_plugin)
        _, proc = _run(calling, with_plugin)
        results = json.loads(proc.stdout)
        if [(r["plugin"], r["success"], r["result"]) for r in results] != [("bcli_000", True, "hello")]:
            raise SystemExit(f"call gave unexpected results: {results}")
        _, proc = _run(listing, base)
        first_party = sorted(p["name"] for p in json.loads(proc.stdout))

        # the discovery cache is trusted only when written ≥ 2 s after the newest sys.path mtime/ctime
        time.sleep(max(0.0, 2.2 - (time.time() - site.stat().st_ctime)))
        for env in (base, with_plugin):
            _run(listing, env)
        before = _cache_state(cache_dir)
        for env in (base, with_plugin):
            _run(listing, env)
        cache_hit = bool(before) and before == _cache_state(cache_dir)

        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "pass": ([sys.executable, "-c", "pass"], base),
            "import": ([sys.executable, "-c", "import erp_plugins_core"], base),
            "list": (listing, base),
            "list_cold": (listing, cold),
            "list_with_plugin": (listing, with_plugin),
            "call": (calling, with_plugin),
        }
        samples: dict[str, list[float]] = {k: [] for k in commands}
        names = list(commands)
        for r in range(args.rounds):
            for key in names[r % len(names):] + names[:r % len(names)]:
                cmd, env = commands[key]
                samples[key].append(_run(cmd, env)[0])
        med = {k: statistics.median(v) for k, v in samples.items()}

        mods, count = _modules(base, ["list", "--json"])
        sdk_loaded = [m for m in SDKS if m in mods]
        plugin_loaded = [m for m in PLUGIN_PACKAGES if m in mods]
        call_mods, call_count = _modules(with_plugin, calling[1:])
        call_sdks = [m for m in SDKS if m in call_mods]

        rows = [
            row("list --json (cache warm) vs python -c pass", med["list"], med["pass"], None, "python -c pass"),
            row("list --json (cache warm) vs import core", med["list"], med["import"], None,
                "python -c 'import erp_plugins_core'"),
            row("list --json, cache off vs cache warm", med["list_cold"], med["list"], None,
                "list --json, cache warm"),
            row("call ai_request (1 trusted plugin) vs list", med["call"], med["list_with_plugin"], None,
                "list --json, same environment"),
        ]
        extra = {
            "plugins_listed": first_party,
            "discovery_cache_hit": cache_hit,
            "sdks_imported_by_list": sdk_loaded or "none",
            "plugin_packages_imported_by_list": plugin_loaded or "none",
            "modules_loaded_by_list": count,
            "sdks_imported_by_call": call_sdks or "none",
            "modules_loaded_by_call": call_count,
            "rounds": args.rounds,
            "script": script,
        }
        report("bench_cli: median wall seconds per command", rows, args.json, extra)
        if sdk_loaded or plugin_loaded:
            print(f"FAIL: list imported {sdk_loaded + plugin_loaded}", file=sys.stderr)
        if not cache_hit:
            print("warning: the discovery cache did not hit between list runs", file=sys.stderr)
        if args.importtime:
            print(_importtime(base, ["list", "--json"]), file=sys.stderr)
            print(_importtime(with_plugin, calling[1:]), file=sys.stderr)


if __name__ == "__main__":
    main()
