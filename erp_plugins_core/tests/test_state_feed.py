"""The change feed on both backends: what records a change, the watch, followers in other processes, pruning."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import textwrap
import time

import pytest

from erp_plugins_core._state import AuditEntry, TenantPlugin, TokenRecord, _queries, open_store


def _token(token_id: str, tenant: str | None = "acme") -> TokenRecord:
    return TokenRecord(token_id, tenant, "call", hashlib.sha256(token_id.encode()).hexdigest(), time.time())


def test_policy_writes_record_changes_and_runtime_writes_do_not(state_location: str) -> None:
    with open_store(state_location) as store:
        assert store.change_seq() == 0 and store.changes_since(0) == []
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p1", enabled=True))
            tx.add_audit(AuditEntry.now("acme", "p1", "enable"))  # audit alone is no change
        store.set_setting("lock", "{}")
        with store.transaction() as tx:
            tx.delete("acme", "p1")
        store.add_token(_token("tok_1"))
        store.revoke_token("tok_1")
        assert store.revoke_token("tok_unknown") is False
        seq = store.change_seq()
        # none of these is a change
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p2"))
        seq = store.change_seq()
        store.set_runtime_state("acme", "p2", "active", host="h1")
        store.heartbeat("h1")
        store.touch_token("tok_1", time.time())
        store.forget_host("h1")
        with store.transaction() as tx:
            tx.add_audit(AuditEntry.now("acme", "p2", "note"))
        assert store.change_seq() == seq
        changes = store.changes_since(0)
        assert [(c.tenant, c.plugin, c.kind) for c in changes] == [
            ("acme", "p1", "plugin"), (None, None, "setting:lock"), ("acme", "p1", "plugin"),
            ("acme", None, "token"), ("acme", None, "token"), ("acme", "p2", "plugin")]
        seqs = [c.seq for c in changes]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[-1] == seq
        assert all(c.time > 0 for c in changes)
        assert [c.kind for c in store.changes_since(seqs[2])] == ["token", "token", "plugin"]
        assert store.changes_since(seq) == []


def test_a_rolled_back_transaction_records_no_change(state_location: str) -> None:
    with open_store(state_location) as store:
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p1"))
            raise RuntimeError("abort")
        assert store.changes_since(0) == []


def test_the_watch_sees_other_connections_commits(state_location: str) -> None:
    async def go() -> None:
        with open_store(state_location) as store, open_store(state_location) as other, store.watch() as watch:
            task = asyncio.create_task(watch.run())
            try:
                if store.backend == "postgresql":
                    for _ in range(500):
                        if getattr(watch, "connected", False):
                            break
                        await asyncio.sleep(0.01)
                    assert watch.connected  # type: ignore[attr-defined]
                assert watch.maybe_changed() is True  # the first answer: nothing compared yet
                assert watch.maybe_changed() is False
                other.set_setting("k", "v")
                for _ in range(500):
                    if watch.maybe_changed():
                        break
                    await asyncio.sleep(0.002)
                else:
                    pytest.fail("the watch never saw the other connection's commit")
                assert [c.kind for c in store.changes_since(0)] == ["setting:k"]
            finally:
                watch.close()
                await asyncio.wait_for(task, 5)
            assert watch.maybe_changed() is True  # closed: always "maybe"

    asyncio.run(go())


def test_postgres_watch_falls_back_to_saying_maybe_every_second(pg_url: str) -> None:
    with open_store(pg_url) as store, store.watch() as watch:  # run() never started: no notifications at all
        assert watch.maybe_changed() is True
        assert watch.maybe_changed() is False
        time.sleep(1.1)
        assert watch.maybe_changed() is True
        assert watch.maybe_changed() is False


def test_postgres_watch_stops_when_cancelled(pg_url: str) -> None:
    async def go() -> None:
        with open_store(pg_url) as store:
            watch = store.watch()
            task = asyncio.create_task(watch.run())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())


_FOLLOWER = """
import asyncio, json, sys, time
from erp_plugins_core._state import open_store
async def main():
    store = open_store(sys.argv[1])
    watch = store.watch()
    task = asyncio.create_task(watch.run())
    while store.backend == "postgresql" and not watch.connected:
        await asyncio.sleep(0.005)
    base = store.change_seq()
    watch.maybe_changed()
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    seen = []
    while time.monotonic() < deadline and not seen:
        if watch.maybe_changed():
            seen = store.changes_since(base)
        await asyncio.sleep(0.001)
    print(json.dumps([[c.tenant, c.plugin, c.kind] for c in seen]), flush=True)
    watch.close()
    await task
    store.close()
asyncio.run(main())
"""

_WRITER = """
import sys
from erp_plugins_core._state import open_store, TenantPlugin, AuditEntry
with open_store(sys.argv[1]) as store, store.transaction() as tx:
    tx.put(TenantPlugin("acme", "from_a", enabled=True))
    tx.add_audit(AuditEntry.now("acme", "from_a", "enable"))
"""


def test_a_change_committed_in_one_process_reaches_a_follower_in_another(state_location: str) -> None:
    open_store(state_location).close()  # create/migrate first, so the follower starts from a ready store
    follower = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_FOLLOWER), state_location],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().strip() == "ready", follower.stderr.read() if follower.stderr else ""
        writer = subprocess.run([sys.executable, "-c", textwrap.dedent(_WRITER), state_location],
                                capture_output=True, text=True, timeout=60)
        assert writer.returncode == 0, writer.stderr
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert json.loads(out) == [["acme", "from_a", "plugin"]]


def test_old_changes_are_pruned_and_a_late_follower_is_told_to_reset(
    state_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_queries, "KEEP_CHANGES", 5)
    monkeypatch.setattr(_queries, "KEEP_CHANGES_S", 0.0)
    monkeypatch.setattr(_queries, "PRUNE_EVERY", 10)
    with open_store(state_location) as store:
        for i in range(25):
            store.set_setting("k", str(i))
        seqs = [c.seq for c in store.changes_since(0)]
        assert store.changes_since(0)[0].kind == "reset"
        reset = store.changes_since(0)[0]
        assert reset.seq == seqs[0] and reset.tenant is None and reset.plugin is None
        rest = store.changes_since(reset.seq)
        assert [c.kind for c in rest] == ["setting:k"] * len(rest) and rest[-1].seq == store.change_seq()
        assert rest[0].seq > reset.seq and len(rest) >= 5  # the newest KEEP_CHANGES are kept
        assert "reset" not in [c.kind for c in store.changes_since(store.change_seq() - 3)]


def test_changes_are_kept_while_young(state_location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_queries, "KEEP_CHANGES", 5)
    monkeypatch.setattr(_queries, "PRUNE_EVERY", 10)  # KEEP_CHANGES_S stays an hour: nothing is old enough
    with open_store(state_location) as store:
        for i in range(25):
            store.set_setting("k", str(i))
        assert [c.kind for c in store.changes_since(0)] == ["setting:k"] * 25
