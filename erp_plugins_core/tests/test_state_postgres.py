"""PostgreSQL faults: atomic() retried on conflicts, the database lost mid-run and back (reads, writes, the
watch), and what the errors show."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from erp_plugins_core._errors import StateError
from erp_plugins_core._state import TenantPlugin, open_store


def test_atomic_retries_a_serialization_failure(pg_url: str) -> None:
    """Two threads read the same row, then both write it: the later one fails to serialize, is retried, and
    sees the first one's write, so no increment is lost."""
    with open_store(pg_url) as store:
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p", config={"n": 0}))
        both_read = threading.Barrier(2)
        attempts: list[str] = []
        errors: list[BaseException] = []

        def bump(tx, name: str) -> None:
            attempts.append(name)
            rec = tx.get("acme", "p")
            if attempts.count(name) == 1:
                both_read.wait(timeout=10)  # both first attempts hold a snapshot with n == 0
            rec.config["n"] += 1
            tx.put(rec)

        def run(name: str) -> None:
            try:
                store.atomic(lambda tx: bump(tx, name))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == []
        assert store.get("acme", "p").config["n"] == 2  # type: ignore[union-attr]
        assert len(attempts) == 3  # one of them ran twice


def test_atomic_returns_fn_result_and_lets_its_errors_through(state_location: str) -> None:
    with open_store(state_location) as store:
        assert store.atomic(lambda tx: tx.put(TenantPlugin("acme", "p")).plugin) == "p"
        with pytest.raises(ZeroDivisionError):
            store.atomic(lambda tx: (tx.put(TenantPlugin("acme", "q")), 1 / 0))
        assert store.get("acme", "q") is None  # rolled back


def test_database_lost_mid_run_and_back(pg_cluster, pg_url: str) -> None:
    url = pg_url.replace("postgres@", "postgres:never-shown@")
    store = open_store(url, busy_timeout=2)
    try:
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "p", enabled=True))
        pg_cluster.stop()
        try:
            # reads fail fast with one line naming the database, never the password
            with pytest.raises(StateError) as info:
                store.list("acme")
            message = str(info.value)
            assert "unreachable" in message and pg_url.rsplit("/", 1)[1] in message
            assert f":{pg_cluster.port}" in message and "never-shown" not in message and "\n" not in message
            for _ in range(3):  # and keep failing the same way while it is down (fast: see DOWN_READ_TIMEOUT_S)
                with pytest.raises(StateError, match="unreachable"):
                    store.get("acme", "p")
            # writes are retried up to the busy timeout (that they wait is tested below), then say the same
            with pytest.raises(StateError, match="unreachable"):
                store.atomic(lambda tx: tx.put(TenantPlugin("acme", "q")))
            with pytest.raises(StateError, match="unreachable"):
                store.set_runtime_state("acme", "p", "active", host="h")
        finally:
            pg_cluster.start()
        # the same store works again once the database is back: the pool reconnects by itself
        deadline = time.monotonic() + 30
        while True:
            try:
                rows = store.list("acme")
                break
            except StateError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert [r.plugin for r in rows] == ["p"]
        with store.transaction() as tx:
            tx.put(TenantPlugin("acme", "q"))
        assert store.set_runtime_state("acme", "q", "active", host="h") is True
    finally:
        store.close()


def test_a_write_waits_for_the_database_to_come_back(pg_cluster, pg_url: str) -> None:
    with open_store(pg_url, busy_timeout=30) as store:
        store.get("acme", "p")
        pg_cluster.stop()
        restarter = threading.Timer(1.0, pg_cluster.start)
        restarter.start()
        try:
            store.atomic(lambda tx: tx.put(TenantPlugin("acme", "p", enabled=True)))  # retried until it is back
        finally:
            restarter.join()
        assert store.get("acme", "p").enabled  # type: ignore[union-attr]


def test_the_watch_reconnects_and_says_maybe(pg_cluster, pg_url: str) -> None:
    async def go() -> None:
        with open_store(pg_url) as store, open_store(pg_url) as other:
            watch = store.watch()
            task = asyncio.create_task(watch.run())
            try:
                await _until(lambda: watch.connected)
                watch.maybe_changed()
                await asyncio.to_thread(pg_cluster.stop)
                await _until(lambda: not watch.connected)
                await asyncio.to_thread(pg_cluster.start)
                await _until(lambda: watch.connected, timeout=30)
                assert watch.maybe_changed() is True  # notifications may have been missed meanwhile
                assert watch.maybe_changed() is False
                await asyncio.to_thread(_retry, lambda: other.set_setting("k", "v"))
                await _until(watch.maybe_changed)  # and it hears notifications again
            finally:
                watch.close()
                await asyncio.wait_for(task, 5)

    asyncio.run(go())


async def _until(check, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a polling helper)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.01)


def _retry(fn, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except StateError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
