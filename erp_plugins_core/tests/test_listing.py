"""`erp-plugins list` and `--help` answered without click (`__main__`, `_listing`, `_helptext`), against click.

Every command runs as a real process (`python -c` calling `erp_plugins_core.__main__.main`, as the console script
does) that reports at exit which modules it loaded, so each test knows whether the cache answered (no discovery
loaded). The reference ("cold") is click's command line itself (`erp_plugins_core._cli.main`) with the caches off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_host import ECHO, ECHO_MANIFEST

from erp_plugins_core._listing import _parse

SECRET = "sk-listing-planted-secret-4321"
HEAVY = ("pydantic", "jsonschema", "packaging", "click", "yaml", "erp_plugins_core._host", "erp_plugins_core._cli",
         "erp_plugins_core._discovery", "erp_plugins_core._manifest", "erp_plugins_core._catalog")
WRAPPER = """\
import atexit, sys
atexit.register(lambda: sys.stderr.write("\\n@@MODULES@@ " + " ".join(sorted(sys.modules)) + "\\n"))
from erp_plugins_core.{module} import main
main(sys.argv[1:])
"""
FOLDER_MANIFEST = ('name: {name}\nversion: "{version}"\nplugin_type: workflow\napi_version: "1.0"\n'
                   "main_file: main.py\nmain_class: Plugin\n")


class Result:
    """One finished command: exit code, stdout, stderr (without the module report) and the modules it loaded."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        err, _, mods = proc.stderr.rpartition("\n@@MODULES@@ ")
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = err
        self.modules = set(mods.split())

    @property
    def from_cache(self) -> bool:
        return "erp_plugins_core._discovery" not in self.modules

    def heavy(self) -> list[str]:
        return [m for m in HEAVY if m in self.modules]


@pytest.fixture
def env(site, manifest_text, secret_key, tmp_path):
    site.install("erp-echo", plugins={"echo": (manifest_text("echo", extra=ECHO_MANIFEST), ECHO)})
    perm_less = manifest_text("perm_less", extra="hooks: [{name: ai_request, method: answer}]\n")
    site.install("erp-perm-less", plugins={"perm_less": (perm_less, ECHO)})  # listed INVALID, with its error
    folders = tmp_path / "folders"
    (folders / "flow").mkdir(parents=True)
    (folders / "flow" / "plugin.yaml").write_text(FOLDER_MANIFEST.format(name="flow", version="0.1"))
    (folders / "flow" / "main.py").write_text("from erp_plugins_core import PluginInterface\n"
                                              "class Plugin(PluginInterface):\n    pass\n")
    work = tmp_path / "work"  # the processes' cwd: nothing changes in it
    work.mkdir()
    values = {k: v for k, v in os.environ.items() if not k.startswith("ERP_PLUGINS_") or k == "ERP_PLUGINS_SECRET_KEY"}
    values.update({
        # only the site dir is added: the interpreter finds erp_plugins_core as installed, and no folder that
        # others edit while the tests run is part of the cache key
        "PYTHONPATH": str(site.root),
        "ERP_PLUGINS_STATE": str(tmp_path / "state.db"),
        "ERP_PLUGINS_CACHE_DIR": str(tmp_path / "cache"),
        "ECHO_KEY": SECRET,
    })
    values.pop("ERP_PLUGINS_UNSAFE_NO_SANDBOX", None)
    return {"values": values, "work": work, "folders": folders, "site": site, "tmp": tmp_path}


def run(env, *args: str, cold: bool = False, **extra: str) -> Result:
    values = {**env["values"], **extra}
    if cold:
        values["ERP_PLUGINS_CACHE"] = "0"
    code = WRAPPER.format(module="_cli" if cold else "__main__")
    proc = subprocess.run([sys.executable, "-c", code, *args], env=values, cwd=env["work"], capture_output=True,
                          text=True, timeout=120)
    result = Result(proc)
    assert "Traceback" not in result.err, result.err
    assert SECRET not in result.out + result.err
    return result


def warm(env, *args: str, **extra: str) -> Result:
    """`args` answered from the cache: the cache is (re)written once the racy-clean window has passed."""
    for _ in range(4):
        time.sleep(2.1)  # a cache written within 2 s of the newest stamp of its key is not trusted
        run(env, *args, **extra)
        result = run(env, *args, **extra)
        if result.from_cache:
            return result
    pytest.fail(f"the cache never answered {args}: {result.err}")


CASES = [
    ("list",),
    ("list", "--json"),
    ("list", "--tenant", "acme"),
    ("list", "--json", "--tenant=acme"),
    ("--plugins-dir", "{folders}", "list", "--json", "--tenant", "acme"),
    ("--plugins-dir={folders}", "--state", "{state}", "list"),
]


def test_warm_list_prints_exactly_what_cold_list_prints_without_heavy_imports(env) -> None:
    enable = run(env, "enable", "echo", "--tenant", "acme", "--config", "api_key=env:ECHO_KEY", "--trust",
                 "--grant", "ai.generate")
    assert enable.code == 0, enable.err
    for i, case in enumerate(CASES):
        args = [a.format(folders=env["folders"], state=env["tmp"] / "state.db") for a in case]
        cold = run(env, *args, cold=True)  # click
        assert cold.code == 0 and not cold.from_cache and "click" in cold.modules, (args, cold.err)
        # an empty cache folder: scanned and written, still without click
        empty = run(env, *args, ERP_PLUGINS_CACHE_DIR=str(env["tmp"] / f"empty-{i}"))
        assert not empty.from_cache and "click" not in empty.modules
        hot = warm(env, *args)
        assert (empty.code, empty.out, empty.err) == (cold.code, cold.out, cold.err), args
        assert (hot.code, hot.out, hot.err) == (cold.code, cold.out, cold.err), args
        assert hot.heavy() == [], (args, hot.heavy())
    rows = json.loads(run(env, "--plugins-dir", str(env["folders"]), "list", "--json", "--tenant", "acme").out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["echo"]["tenant"]["state"] == "active" and by_name["echo"]["tenant"]["trusted"]
    assert by_name["flow"]["source"] == "folder" and by_name["flow"]["tenant"]["state"] == "not enabled"
    assert not by_name["perm_less"]["valid"] and "needs permission 'ai.generate'" in by_name["perm_less"]["errors"][0]


def test_the_tenant_part_is_read_from_the_state_every_time(env) -> None:
    assert run(env, "enable", "echo", "--tenant", "acme", "--config", "api_key=env:ECHO_KEY", "--trust").code == 0
    before = warm(env, "list", "--json", "--tenant", "acme")
    assert next(r for r in json.loads(before.out) if r["name"] == "echo")["tenant"]["enabled"]
    assert run(env, "disable", "echo", "--tenant", "acme").code == 0
    after = run(env, "list", "--json", "--tenant", "acme")
    assert after.from_cache  # the state is not part of the cache key; it is read, not cached
    echo = next(r for r in json.loads(after.out) if r["name"] == "echo")["tenant"]
    assert not echo["enabled"]
    assert after.out == run(env, "list", "--json", "--tenant", "acme", cold=True).out
    other = run(env, "list", "--json", "--tenant", "globex")  # another tenant, same cache
    assert other.from_cache and {r["tenant"]["state"] for r in json.loads(other.out)} == {"not enabled"}


def test_a_changed_folder_plugin_or_install_is_listed_at_once(env, manifest_text) -> None:
    args = ("--plugins-dir", str(env["folders"]), "list", "--json")
    assert {r["name"]: r["version"] for r in json.loads(warm(env, *args).out)}["flow"] == "0.1"
    manifest = env["folders"] / "flow" / "plugin.yaml"
    manifest.write_text(FOLDER_MANIFEST.format(name="flow", version="0.2"))  # within the same clock tick, even
    edited = run(env, *args)
    assert not edited.from_cache and {r["name"]: r["version"] for r in json.loads(edited.out)}["flow"] == "0.2"
    again = run(env, *args)  # written within 2 s of the edit: not trusted yet (racy-clean rule)
    assert not again.from_cache and again.out == edited.out
    env["site"].install("erp-late", plugins={"late": (manifest_text("late"), ECHO)})
    installed = run(env, *args)
    assert not installed.from_cache and "late" in {r["name"] for r in json.loads(installed.out)}
    (env["folders"] / "flow" / "main.py").unlink()
    gone = run(env, *args)
    flow = next(r for r in json.loads(gone.out) if r["name"] == "flow")
    assert not gone.from_cache and not flow["valid"] and "is not a file" in flow["errors"][0]


@pytest.mark.parametrize("args, code, message", [
    (("list", "--tenant", "no way!"), 2, "invalid tenant name 'no way!'"),
    (("--state", "ftp://host/x", "list", "--tenant", "acme"), 2, "unsupported state location"),
    (("--plugins-dir", "https://example.com/plugins", "list"), 2, "is a URL; give a local folder"),
    (("list", "--tenant"), 2, "requires an argument"),
    (("list", "--verbose"), 2, "No such option"),
])
def test_bad_input_gets_clicks_message_whether_the_cache_is_warm_or_not(env, args, code, message) -> None:
    warm(env, "list", "--json")
    cold = run(env, *args, cold=True)
    hot = run(env, *args)
    assert cold.code == hot.code == code and message in hot.err
    assert (hot.out, hot.err) == (cold.out, cold.err)
    assert len([ln for ln in hot.err.splitlines() if ln.strip()]) <= 3  # click's usage lines, or one line


def test_an_unreachable_postgresql_state_is_said_once_without_the_password(env) -> None:
    pytest.importorskip("psycopg")
    warm(env, "list", "--json")
    url = "postgresql://erp:hunter2-secret@127.0.0.1:9/erp?connect_timeout=2"  # port 9: refused at once
    cold = run(env, "--state", url, "list", "--tenant", "acme", cold=True)
    hot = run(env, "--state", url, "list", "--tenant", "acme")
    assert hot.from_cache and "psycopg" in " ".join(hot.modules)  # answered here, not retried by click
    assert cold.code == hot.code == 1 and hot.err.startswith("erp-plugins: error: ")
    assert hot.err == cold.err and len(hot.err.strip().splitlines()) == 1
    assert "hunter2-secret" not in hot.err + hot.out


def test_import_and_clicks_command_line_stay_light() -> None:
    def modules(code: str) -> set[str]:
        env = {**os.environ, "ERP_PLUGINS_CACHE": "0"}  # click answers --help, not the help cache
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        return set(proc.stdout.split())

    report = "import sys; print(' '.join(sys.modules))"
    core = modules("import erp_plugins_core; " + report)
    assert not core & {"typing", "pydantic", "click", "erp_plugins_core._host", "erp_plugins_core._cli"}
    for args in (["--help"], ["list", "--help"], ["serve", "--help"], ["worker", "--help"]):
        loaded = modules("import sys\nfrom erp_plugins_core.__main__ import main\n"
                         f"try: main({args!r})\nexcept SystemExit: pass\n{report}")
        assert "click" in loaded
        assert not {m for m in loaded if m.split(".")[0] in ("pydantic", "jsonschema", "packaging", "yaml")}, args
        assert not loaded & {"erp_plugins_core._catalog", "erp_plugins_core._discovery", "erp_plugins_core._host"}


def help_hit(env, *args: str, **extra: str) -> Result:
    """`args` answered from the help cache (kept by the first run, trusted once no source changed for 2 s)."""
    for _ in range(8):  # another edit of the package within 2 s of a run makes it a miss again
        result = run(env, *args, **extra)
        if "click" not in result.modules:
            return result
        time.sleep(2.1)
    pytest.fail(f"the help cache never answered {args}: {result.err}")


def test_help_from_the_cache_is_clicks_text_for_each_width_and_command(env) -> None:
    for columns in ("60", "200"):
        for args in (["--help"], ["list", "--help"], ["config", "show", "--help"], ["-h"], ["worker", "-h"]):
            cold = run(env, *args, cold=True, COLUMNS=columns)
            assert cold.code == 0 and "Usage: erp-plugins" in cold.out and "click" in cold.modules
            hot = help_hit(env, *args, COLUMNS=columns)
            assert (hot.code, hot.out, hot.err) == (cold.code, cold.out, cold.err), (args, columns)
            assert hot.heavy() == [], hot.heavy()
    narrow = run(env, "--help", COLUMNS="60").out
    assert narrow != run(env, "--help", COLUMNS="200").out and max(map(len, narrow.splitlines())) <= 60
    for _ in range(2):  # an error is click's every time, never kept
        unknown = run(env, "nosuch", "--help")
        assert unknown.code == 2 and "No such command 'nosuch'" in unknown.err and "click" in unknown.modules
    assert "click" in run(env, "--state", "x.db", "--help").modules  # only plain [COMMAND ...] --help is cached


def test_the_help_cache_key_covers_the_command_lines_code_and_click() -> None:
    import click

    from erp_plugins_core import _helptext

    sources = set(_helptext._sources())
    package = Path(_helptext.__file__).parent
    for name in ("_cli.py", "_cli_server.py", "_cli_jobs.py", "_interface.py", "_errors.py"):
        assert str(package / name) in sources, name
    assert str(package) in sources  # a module added or removed
    assert str(Path(click.__file__).parent / "core.py") in sources and str(Path(click.__file__).parent) in sources


@pytest.mark.parametrize("argv, parsed", [
    (["list"], (None, [], None, False)),
    (["list", "--json", "--tenant", "acme"], (None, [], "acme", True)),
    (["--state=s.db", "--plugins-dir", "a", "--plugins-dir=b", "list", "--tenant=t"], ("s.db", ["a", "b"], "t", False)),
    (["--state", "", "list"], ("", [], None, False)),
    (["list", "--help"], None),
    (["-h", "list"], None),
    (["list", "--tenant", "--json"], None),  # click would take --json as the tenant; left to click
    (["list", "--tenant", "a", "--tenant", "b"], None),
    (["list", "extra"], None),
    (["--state"], None),
    (["check"], None),
    ([], None),
])
def test_only_what_click_reads_the_same_way_is_answered_from_the_cache(argv, parsed, monkeypatch) -> None:
    monkeypatch.delenv("ERP_PLUGINS_STATE", raising=False)
    assert _parse(argv) == parsed


def test_state_comes_from_the_environment_as_clicks_envvar(monkeypatch) -> None:
    monkeypatch.setenv("ERP_PLUGINS_STATE", "env.db")
    assert _parse(["list"]) == ("env.db", [], None, False)
    assert _parse(["--state", "cli.db", "list"]) == ("cli.db", [], None, False)
    monkeypatch.setenv("ERP_PLUGINS_STATE", "")
    assert _parse(["list"]) == (None, [], None, False)


def test_the_cache_folder_follows_the_xdg_rule_as_platformdirs_does(monkeypatch, tmp_path) -> None:
    platformdirs = pytest.importorskip("platformdirs")
    from erp_plugins_core._cachefile import cache_root

    if not sys.platform.startswith("linux"):
        pytest.skip("the XDG rule is computed only on Linux")
    monkeypatch.delenv("ERP_PLUGINS_CACHE_DIR", raising=False)
    for xdg in (None, str(tmp_path / "xdg"), "", "   "):
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        assert cache_root() == platformdirs.user_cache_dir("erp-plugins"), xdg
    monkeypatch.setenv("ERP_PLUGINS_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == str(tmp_path / "mine")
    assert Path(cache_root()).parent == tmp_path
