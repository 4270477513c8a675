# ruff: noqa: ASYNC240 - tests read /proc inline
"""Worker templates: two tenants' workers forked from one plugin's template stay apart, and apart from it.

As root (the per-tenant uid design), with the hostile plugin probing from inside its worker: it may not signal,
ptrace, `process_vm_readv`, read the memory, environment or channel of another tenant's processes or of its
template, sees only its own PID namespace, and finds no other tenant's secret anywhere it can read. The host
checks the template holds no tenant's config in its memory at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import pytest
from sandboxkit import uid_of
from test_sandbox import plugin_site, record, require_sandbox, runtime_dir  # noqa: F401 - fixtures

from erp_plugins_core._context import PluginContext
from erp_plugins_core._redact import Redactor
from erp_plugins_core._sandbox import SandboxRunner, WorkerFleet
from erp_plugins_core._sandbox._launch import _children
from erp_plugins_core._sandbox._template import preload_names

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="worker templates need the per-tenant uids of a root host")

SECRETS = {"acme": "sk-acme-template-secret-1111", "globex": "sk-globex-template-secret-2222",
           "initech": "sk-initech-template-secret-3333"}


async def forked(fleet: WorkerFleet, site: Path, runtime: Path, tenant: str) -> SandboxRunner:
    runner = SandboxRunner(record(site, "sbx_hostile"), tenant, runtime_dir=runtime, fleet=fleet)
    await runner.load()
    secret = SECRETS.get(tenant, f"sk-{tenant}-template-secret")
    config = {"api_key": secret}
    context = PluginContext(tenant_id=tenant, plugin="sbx_hostile", config=config, granted=frozenset(), bridge=None,
                            redactor=Redactor([secret]))
    assert await runner.initialize(config, context)
    assert type(runner._worker.proc).__name__ == "ForkedProcess"
    return runner


@pytest.fixture
async def tenants(plugin_site: Path, runtime_dir: Path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("ERP_PLUGINS_SANDBOX_TEMPLATES", raising=False)
    fleet = WorkerFleet()
    runners = {t: await forked(fleet, plugin_site, runtime_dir, t) for t in ("acme", "globex")}
    yield fleet, runners
    for runner in runners.values():
        await runner.close()
    await fleet.close()


def processes(runner: SandboxRunner) -> list[int]:
    """Host pids of a forked worker: its waiting parent, its PID 1 and the worker itself."""
    waiting, init = runner.worker_pids
    return [waiting, init, *_children(init)]


async def probe(runner: SandboxRunner, pid: int) -> dict:
    return json.loads(await runner.hook_function("ai_request", "attack")(f"probe:{pid}", {}))


async def test_two_tenants_workers_of_one_template_cannot_reach_each_other(tenants) -> None:
    fleet, runners = tenants
    acme, globex = runners["acme"], runners["globex"]
    [template] = fleet.templates.running()
    assert acme.uid != globex.uid and template.uid not in (acme.uid, globex.uid)
    for runner in (acme, globex):  # the worker runs as its tenant's uid, as a plain worker does
        assert {uid_of(pid) for pid in processes(runner)} == {runner.uid}
    for attacker, victim in ((acme, globex), (globex, acme)):
        for pid in processes(victim):
            report = await probe(attacker, pid)
            assert report["uid"] == attacker.uid
            assert report["pids"] == [1, 2], report  # its own PID 1 and itself, nothing of the other tenant
            for way, outcome in report["target"].items():
                assert outcome.startswith("refused"), (way, outcome, pid)


async def test_a_forked_worker_collects_its_garbage_and_inherits_the_template_frozen(tenants) -> None:
    """The template never collects (Python's advice for fork without exec) and freezes what it made before its
    forks; each worker turns collection back on, or it would keep every reference cycle it ever made."""
    for runner in tenants[1].values():
        assert await runner.hook_function("ai_request", "attack")("gc", {}) == "True True"


async def test_a_forked_worker_reads_its_runtime_site_as_a_plain_worker_does(tenants) -> None:
    # the folders above the site's mount are the template's; a tenant's uid must still traverse them to import
    # what the template did not (a lazy import)
    _, runners = tenants
    read = runners["acme"].hook_function("upload_file", "read_path")
    assert bytes.fromhex(await read(file_path="/sandbox/site/.complete", folder_id=None)) == b"ok\n"


async def test_a_worker_cannot_reach_its_template_or_the_namespace_holder(tenants) -> None:
    fleet, runners = tenants
    [template] = fleet.templates.running()
    for pid in (template.pid, template._holder.pid, template._proc.pid):
        report = await probe(runners["acme"], pid)
        assert all(outcome.startswith("refused") for outcome in report["target"].values()), (pid, report)


async def test_no_tenant_learns_another_tenants_config(tenants) -> None:
    _, runners = tenants
    for tenant, runner in runners.items():
        seen = await runner.hook_function("ai_request", "attack")("look", {})
        assert "done:" in seen  # it could read something (its own /proc), so the search below means something
        for other, secret in SECRETS.items():
            assert secret not in seen, (tenant, other)


async def test_the_template_holds_no_tenants_config(tenants) -> None:
    fleet, runners = tenants
    [template] = fleet.templates.running()
    assert await runners["acme"].hook_function("ai_request", "attack")("harmless", {}) == "harmless"
    memory = read_memory(template.pid)
    assert len(memory) > 1_000_000  # the search covered the template's heap, not nothing
    for secret in SECRETS.values():
        assert secret.encode() not in memory
    for runner in runners.values():  # while each tenant's own worker does hold its config
        worker = processes(runner)[-1]
        assert SECRETS[runner.tenant].encode() in read_memory(worker)


async def test_a_template_ends_with_its_last_runner_and_a_dead_one_is_replaced(tenants) -> None:
    fleet, runners = tenants
    [template] = fleet.templates.running()
    old = [pid for runner in runners.values() for pid in processes(runner)]
    os.kill(template.pid, signal.SIGKILL)
    for _ in range(200):  # the workers it forked end with it (each by its parent-death signal)
        if all(uid_of(pid) is None for pid in old) and template.dead:
            break
        await asyncio.sleep(0.05)
    assert all(uid_of(pid) is None for pid in old) and template.dead
    for runner in runners.values():
        assert await runner.hook_function("ai_request", "attack")("harmless", {}) == "harmless"
    [again] = fleet.templates.running()
    assert again is not template and again.pid != template.pid
    assert type(runners["acme"]._worker.proc).__name__ == "ForkedProcess"
    await runners["acme"].close()
    assert fleet.templates.running() == [again]  # globex still uses it
    await runners["globex"].close()
    assert fleet.templates.running() == []
    assert again._proc.returncode is not None and again._holder.returncode is not None


async def test_one_template_serves_more_tenants_than_a_workers_task_cap(
        plugin_site: Path, runtime_dir: Path, monkeypatch) -> None:  # noqa: F811
    """Every task of every tenant's user namespace also counts against the template's uid: with a worker's cap of
    32 tasks on the template, the eleventh tenant (3 tasks each) could not be forked any more."""
    monkeypatch.delenv("ERP_PLUGINS_SANDBOX_TEMPLATES", raising=False)
    fleet = WorkerFleet()
    names = [f"tenant{i}" for i in range(14)]
    runners = []
    try:
        for name in names:
            runners.append(await forked(fleet, plugin_site, runtime_dir, name))
        assert len(fleet.templates.running()) == 1 and len({r.uid for r in runners}) == len(names)
        for runner in runners:  # (a worker keeps its own cap: test_sandbox_forked runs the fork bomb test)
            assert await runner.hook_function("ai_request", "attack")("harmless", {}) == "harmless"
        assert sum(len(processes(r)) for r in runners) >= 3 * len(names)
    finally:
        for runner in runners:
            await runner.close()
        await fleet.close()


def read_memory(pid: int) -> bytes:
    """The readable private and heap mappings of process `pid`, read as root through /proc/PID/mem."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if not fields[1].startswith("r") or (len(fields) > 5 and fields[5].startswith("/")):
                continue  # files mapped read-only hold no config
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start > 256 * 1024 * 1024 or re.search(r"\[(vvar|vsyscall)\]", line):
                continue
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except OSError:
                continue
    return b"".join(chunks)


async def test_a_template_imports_what_its_first_worker_imported_lazily(tenants, plugin_site: Path,  # noqa: F811
                                                                      runtime_dir: Path) -> None:  # noqa: F811
    fleet, runners = tenants
    [template] = fleet.templates.running()
    assert not template.taught  # starting is no hook call: the template is taught after the first one
    assert await runners["acme"].hook_function("ai_request", "attack")("import:colorsys", {}) == "imported"
    for _ in range(100):
        if template.taught:
            break
        await asyncio.sleep(0.05)
    assert template.taught
    await asyncio.sleep(0.5)  # the template imports between forks
    later = await forked(fleet, plugin_site, runtime_dir, "initech")
    try:
        modules = await later._call(later._worker, "modules", {}, what="modules", seconds=5.0)
        assert "colorsys" in modules  # imported by the template for it, not by itself
    finally:
        await later.close()


def test_only_site_and_standard_module_names_are_preloaded(tmp_path: Path) -> None:
    (tmp_path / "openai").mkdir()
    (tmp_path / "openai-1.0.dist-info").mkdir()
    (tmp_path / "six.py").write_text("")
    names = ["openai.resources.chat", "six", "json.decoder", "antigravity", "this", "os; import x", "../etc",
             "not_installed.mod", "openai-1", 7, "a" * 300]
    assert preload_names(names, str(tmp_path)) == ["openai.resources.chat", "six", "json.decoder"]
    many = [f"openai.m{i:05d}_{'x' * 20}" for i in range(10000)]  # what fits one message to the template
    kept = preload_names(many, str(tmp_path))
    assert 1000 < len(kept) < 4000 and kept == many[:len(kept)] and len(json.dumps(kept)) < 60 * 1024


def test_a_bad_templates_setting_is_refused_naming_the_variable(monkeypatch) -> None:
    from erp_plugins_core._errors import SandboxError
    from erp_plugins_core._sandbox._template_pool import templates_wanted

    monkeypatch.setenv("ERP_PLUGINS_SANDBOX_TEMPLATES", "sometimes")
    with pytest.raises(SandboxError, match="ERP_PLUGINS_SANDBOX_TEMPLATES='sometimes' is not understood"):
        templates_wanted()
    monkeypatch.setenv("ERP_PLUGINS_SANDBOX_TEMPLATES", "0")
    assert templates_wanted() is False
    monkeypatch.setenv("ERP_PLUGINS_SANDBOX_TEMPLATES", "1")
    assert templates_wanted() is True  # as root


async def test_each_runtime_site_has_its_own_template_ended_with_its_last_runner(plugin_site: Path,  # noqa: F811
                                                                                 runtime_dir: Path) -> None:  # noqa: F811
    # a plugin's files changing gives it a new runtime site: here, a second runtime folder builds another one
    fleet = WorkerFleet()
    other_dir = runtime_dir / "other"
    other_dir.mkdir(mode=0o755, exist_ok=True)
    old = await forked(fleet, plugin_site, runtime_dir, "acme")
    new = SandboxRunner(record(plugin_site, "sbx_hostile"), "globex", runtime_dir=other_dir, fleet=fleet)
    try:
        await new.load()
        assert old._runtime.site != new._runtime.site
        first, second = sorted(fleet.templates.running(), key=lambda t: t.pid)
        assert first.key != second.key and first.pid != second.pid
        await old.close()  # the old site's last runner: its template ends, the new one stays
        [left] = fleet.templates.running()
        assert left.key == new.template_key() and not left.dead
        assert {first, second} - {left} == {t for t in (first, second) if t.dead}
    finally:
        await old.close()
        await new.close()
        await fleet.close()


async def test_a_template_whose_preload_starts_a_thread_ends_and_its_plugin_starts_workers_afresh(tenants) -> None:
    fleet, runners = tenants
    [template] = fleet.templates.running()
    attack = runners["acme"].hook_function("ai_request", "attack")
    assert await attack("import:sbx_hostile.threader", {}) == "imported"  # the first call: the template learns it
    for _ in range(200):
        if template.dead:
            break
        await asyncio.sleep(0.05)
    assert template.dead and "thread" in (template.failure or "")
    old = runners["acme"]._worker
    if old is not None:  # its worker ends with it (the host sees it end)
        await asyncio.wait_for(old.finished.wait(), 10)
    assert await attack("harmless", {}) == "harmless"  # this one started afresh
    assert type(runners["acme"]._worker.proc).__name__ != "ForkedProcess"
    assert fleet.templates.running() == []  # and no new template is started for the plugin


async def test_a_preload_that_joins_its_threads_keeps_the_template(tenants, plugin_site: Path,  # noqa: F811
                                                                   runtime_dir: Path) -> None:  # noqa: F811
    fleet, runners = tenants
    [template] = fleet.templates.running()
    assert await runners["acme"].hook_function("ai_request", "attack")("import:sbx_hostile.joiner", {}) == "imported"
    for _ in range(100):
        if template.taught:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the template imports between forks
    later = await forked(fleet, plugin_site, runtime_dir, "initech")
    try:
        modules = await later._call(later._worker, "modules", {}, what="modules", seconds=5.0)
        assert not template.dead and template.failure is None, template.failure
        assert "sbx_hostile.joiner" in modules
        assert fleet.templates.running() == [template]
    finally:
        await later.close()

