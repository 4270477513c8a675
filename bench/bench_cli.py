"""Whole-process wall time of the `erp-plugins` command line against bare-interpreter references (issue 17).

Every row is two whole processes started with `subprocess.run`, all commands run once per round in rotating
order, medians over the rounds:

- warm `erp-plugins list --json` with 200 synthetic plugins installed (203 with the first-party ones) against a
  `python -c` process doing stevedore's entry point cache hit on the same distributions. Target ≤ 1.0×.
- `erp-plugins list` with the first-party plugins (warm) against `llm plugins` (`--llm PATH`, Simon Willison's
  `llm` installed in its own venv; the row is left out, with a note, when it is not given). Target ≤ 0.15×.
- `erp-plugins --help` and `erp-plugins list --help` against `python -c pass`. Target ≤ 3×; `python -c "import
  click"` is shown as the floor a click command line starts from.
- cold `erp-plugins list --json` (an empty cache folder per run, so each run scans, validates and writes the
  cache), 200 plugins, against a `python -c` process doing `entry_points(group=...)` plus `yaml.safe_load` of
  each manifest. Target ≤ 0.7×.
- `erp-plugins call ai_request` of one trusted in-process plugin against `erp-plugins list --json` in the same
  environment (no target), and `python -c "import erp_plugins_core"` against `python -c pass` (no target).

Checks printed with the table: the warm runs were answered from the caches (no discovery loaded by `list`, no
click by `--help`; a file of a cache's key changed by someone else during the run makes misses, and says so), and
which heavy modules (pydantic, jsonschema, packaging, click, the host) and SDKs a warm `list` loaded
(`@@MODULES@@` wrapper).

    python bench/bench_cli.py [--json] [--rounds N] [--plugins N] [--llm PATH] [--importtime]
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
from collections.abc import Callable
from pathlib import Path

sys.dont_write_bytecode = True

from _synthetic import install_plugin, make_site, report, row  # noqa: E402

SDKS = ("openai", "ollama", "googleapiclient")
PLUGIN_PACKAGES = ("erp_plugin_openai", "erp_plugin_ollama", "erp_plugin_google")
HEAVY = ("pydantic", "jsonschema", "packaging", "click", "yaml", "erp_plugins_core._host", "erp_plugins_core._cli",
         "erp_plugins_core._discovery")

# the console script's own code (pip's wrapper), with the loaded modules reported at exit; sys.path[0] is the
# script's folder, as for the script itself, so both share one discovery cache file
WRAPPER = """\
import atexit, sys
sys.path[0] = {bindir!r}
atexit.register(lambda: print("\\n@@MODULES@@ " + " ".join(sorted(sys.modules)), file=sys.stderr))
from erp_plugins_core.__main__ import main
sys.argv = ["erp-plugins", *sys.argv[1:]]
main()
"""

STEVEDORE_HIT = "from stevedore import _cache; _cache.Cache({dir!r}).get_group_all('erp_plugins')"
STEVEDORE_COUNT = "from stevedore import _cache; print(len(_cache.Cache({dir!r}).get_group_all('erp_plugins')))"

BARE_LOOP = """\
import importlib.util, yaml
from importlib.metadata import entry_points
from pathlib import Path
out = []
for ep in entry_points(group="erp_plugins"):
    parts = ep.value.partition(":")[0].strip().split(".")
    wanted = "/".join(parts[:-1] + ["plugin.yaml"])
    text = None
    for f in ep.dist.files or ():
        if f.name == "plugin.yaml" and f.as_posix() == wanted:
            text = Path(str(ep.dist.locate_file(f))).read_bytes()
            break
    if text is None:  # an editable install lists no package files
        spec = importlib.util.find_spec(parts[0])
        for root in spec.submodule_search_locations or []:
            path = Path(root, *parts[1:-1], "plugin.yaml")
            if path.is_file():
                text = path.read_bytes()
    out.append(yaml.safe_load(text))
"""

Command = Callable[[], tuple[list[str], dict[str, str]]]


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


def _modules(env: dict[str, str], args: list[str]) -> set[str]:
    wrapper = WRAPPER.format(bindir=str(Path(_script()).parent))
    _, proc = _run([sys.executable, "-c", wrapper, *args], env)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("@@MODULES@@"))
    return set(line.removeprefix("@@MODULES@@ ").split())


def _settle(env: dict[str, str], args: list[str], marker: str = "erp_plugins_core._discovery") -> bool:
    """Run `args` until a run is answered from a cache (`marker` not loaded: discovery for `list`, click for
    `--help`), the racy-clean window having passed; whether one was."""
    for _ in range(8):
        if marker not in _modules(env, args):
            return True
        time.sleep(0.5)
    return False


def _importtime(cmd: list[str], env: dict[str, str], top: int = 15) -> str:
    cold = Path(env["ERP_PLUGINS_CACHE_DIR"]).parent.name == "cold"  # an empty cache folder of `cold_many`
    _, proc = _run([sys.executable, "-X", "importtime", *cmd], env)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3:
                rows.append((int(parts[1]), int(parts[0]), parts[2].rstrip()))
    rows.sort(reverse=True)
    total = sum(self_ for _, self_, _ in rows)
    out = [f"--- import time of `{' '.join(Path(c).name if '/' in c else c for c in cmd)}`{' (cold)' * cold}: "
           f"{len(rows)} modules, "
           f"{total / 1000:.1f} ms self in all (top {top} cumulative, µs) ---"]
    out += [f"{cum:>9} {self_:>9}  {name}" for cum, self_, name in rows[:top]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--rounds", type=int, default=11, help="rounds (median)")
    parser.add_argument("--plugins", type=int, default=200, help="synthetic plugins for the 200-plugin rows")
    parser.add_argument("--llm", metavar="PATH", help="the `llm` executable of a venv with `pip install llm`")
    parser.add_argument("--importtime", action="store_true", help="also print the biggest imports of each command")
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    script = _script()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="erp-bench-cli-") as tmp:
        one, many = Path(tmp, "one"), Path(tmp, "many")
        one.mkdir()
        install_plugin(one, "bcli_000", sandbox=False)
        make_site(many, args.plugins, prefix="bcli")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ERP_PLUGINS_", "PYTHON"))}
        base.update({
            "ERP_PLUGINS_STATE": str(Path(tmp, "state.db")),
            "ERP_PLUGINS_SECRET_KEY": Fernet.generate_key().decode(),
            "ERP_PLUGINS_CACHE_DIR": str(Path(tmp, "cache")),
        })
        with_plugin = {**base, "PYTHONPATH": str(one)}
        with_many = {**base, "PYTHONPATH": str(many)}
        cold_dirs = iter(range(10**6))

        def cold_many() -> tuple[list[str], dict[str, str]]:  # a new, empty cache folder for every run
            return [script, "list", "--json"], {**with_many, "ERP_PLUGINS_CACHE_DIR": str(Path(tmp, "cold",
                                                                                            str(next(cold_dirs))))}

        listing = [script, "list", "--json"]
        calling = [script, "call", "ai_request", "--tenant", "acme", "--arg", "prompt=hello", "--json"]
        _run([script, "enable", "bcli_000", "--tenant", "acme", "--trust"], with_plugin)
        _, proc = _run(calling, with_plugin)
        results = json.loads(proc.stdout)
        if [(r["plugin"], r["success"], r["result"]) for r in results] != [("bcli_000", True, "hello")]:
            raise SystemExit(f"call gave unexpected results: {results}")
        first_party = sorted(p["name"] for p in json.loads(_run(listing, base)[1].stdout))
        listed_many = len(json.loads(_run(listing, with_many)[1].stdout))
        stv_dir = str(Path(tmp, "stevedore"))
        stevedore_hit = STEVEDORE_HIT.format(dir=stv_dir)
        _run([py, "-c", stevedore_hit], with_many)  # writes stevedore's cache file
        seen = int(_run([py, "-c", STEVEDORE_COUNT.format(dir=stv_dir)], with_many)[1].stdout)
        if seen != listed_many:
            print(f"warning: stevedore's cache holds {seen} entry points, list printed {listed_many}", file=sys.stderr)

        # the discovery cache is trusted only when written ≥ 2 s after the newest stamp of its key
        time.sleep(max(0.0, 2.2 - (time.time() - max(one.stat().st_ctime, many.stat().st_ctime))))
        hits = {name: _settle(env, a) for name, env, a in (("first-party", base, ["list"]),
                                                            ("first-party --json", base, ["list", "--json"]),
                                                            ("200 --json", with_many, ["list", "--json"]),
                                                            ("one plugin", with_plugin, ["list", "--json"]))}
        for words in (["--help"], ["list", "--help"]):
            hits[" ".join(words)] = _settle(base, words, "click")

        commands: dict[str, Command] = {
            "pass": lambda: ([py, "-c", "pass"], base),
            "import": lambda: ([py, "-c", "import erp_plugins_core"], base),
            "import_click": lambda: ([py, "-c", "import click"], base),
            "help": lambda: ([script, "--help"], base),
            "list_help": lambda: ([script, "list", "--help"], base),
            "list_text": lambda: ([script, "list"], base),
            "list_json": lambda: (listing, base),
            "list_many": lambda: (listing, with_many),
            "stevedore": lambda: ([py, "-c", stevedore_hit], with_many),
            "list_many_cold": cold_many,
            "bare_loop": lambda: ([py, "-c", BARE_LOOP], with_many),
            "list_with_plugin": lambda: (listing, with_plugin),
            "call": lambda: (calling, with_plugin),
        }
        if args.llm:
            llm_env = {k: v for k, v in base.items() if not k.startswith("ERP_PLUGINS_")}
            llm_env["LLM_USER_PATH"] = str(Path(tmp, "llm"))
            _run([args.llm, "plugins"], llm_env)
            commands["llm"] = lambda: ([args.llm, "plugins"], llm_env)
        cache_dir = Path(base["ERP_PLUGINS_CACHE_DIR"])
        before = {p.name: p.stat().st_mtime_ns for p in cache_dir.iterdir()}
        samples: dict[str, list[float]] = {k: [] for k in commands}
        names = list(commands)
        for r in range(args.rounds):
            for key in names[r % len(names):] + names[:r % len(names)]:
                cmd, env = commands[key]()
                samples[key].append(_run(cmd, env)[0])
        med = {k: statistics.median(v) for k, v in samples.items()}
        rewritten = sorted(p.name.split("-")[0] for p in cache_dir.iterdir()
                           if p.name in before and p.stat().st_mtime_ns != before[p.name])

        hits["after the timed rounds"] = _settle(with_many, ["list", "--json"])
        hits["--help after the timed rounds"] = _settle(base, ["--help"], "click")
        warm_mods = _modules(with_many, ["list", "--json"])  # right after a hit: a hit too, unless sys.path changed
        heavy = [m for m in HEAVY if m in warm_mods]
        sdk_loaded = [m for m in SDKS + PLUGIN_PACKAGES if m in _modules(base, ["list", "--json"])]
        call_mods = _modules(with_plugin, calling[1:])

        n = listed_many
        rows = [
            row(f"warm list --json, {n} plugins", med["list_many"], med["stevedore"], 1.0,
                "python -c: stevedore's entry point cache hit, same distributions"),
        ]
        if "llm" in med:
            rows.append(row(f"list, first-party ({len(first_party)}), warm", med["list_text"], med["llm"], 0.15,
                            "llm plugins (own venv)"))
        rows += [
            row("--help", med["help"], med["pass"], 3.0, "python -c pass"),
            row("list --help", med["list_help"], med["pass"], 3.0, "python -c pass"),
            row("  floor: python -c 'import click'", med["import_click"], med["pass"], None, "python -c pass"),
            row(f"cold list --json (empty cache), {n} plugins", med["list_many_cold"], med["bare_loop"], 0.7,
                "python -c: entry_points(group) + yaml.safe_load of each manifest"),
            row("call ai_request (1 trusted plugin) vs list", med["call"], med["list_with_plugin"], None,
                "list --json, same environment (warm)"),
            row("warm list --json, first-party", med["list_json"], med["pass"], None, "python -c pass"),
            row("import erp_plugins_core", med["import"], med["pass"], None, "python -c pass"),
        ]
        extra = {
            "plugins_listed_first_party": first_party,
            "plugins_listed_many": n,
            "warm_runs_answered_from_cache": hits,
            "caches_rewritten_during_timed_rounds": rewritten or "none",
            "heavy_modules_loaded_by_warm_list": heavy or "none",
            "modules_loaded_by_warm_list": len(warm_mods),
            "sdks_or_plugin_packages_loaded_by_list": sdk_loaded or "none",
            "modules_loaded_by_call": len(call_mods),
            "sdks_loaded_by_call": [m for m in SDKS if m in call_mods] or "none",
            "llm": args.llm or "not given (--llm PATH): the llm row is left out",
            "rounds": args.rounds,
            "script": script,
        }
        report("bench_cli: median wall seconds per whole process", rows, args.json, extra)
        if sdk_loaded or heavy:
            print(f"FAIL: a warm list imported {sdk_loaded + heavy}", file=sys.stderr)
        if rewritten:
            print(f"warning: the {', '.join(rewritten)} cache(s) missed during the timed rounds (a file of their key "
                  "changed, e.g. an edit of the package): their warm figures include misses", file=sys.stderr)
        if not all(hits.values()):
            print(f"warning: a cache missed a warm run (a file of its key changed): {hits}", file=sys.stderr)
        if args.importtime:
            for cmd, env in ((listing, with_many), cold_many(), ([script, "--help"], base), ([script, "list"], base),
                             (calling, with_plugin)):
                print(_importtime(cmd, env), file=sys.stderr)


if __name__ == "__main__":
    main()
