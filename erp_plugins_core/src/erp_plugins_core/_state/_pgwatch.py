"""PostgreSQL's change watch: a LISTEN task sets a flag that `maybe_changed()` reads, with a 1 s fallback poll.

Every transaction that records a change runs `pg_notify(channel, seq)`, which PostgreSQL delivers only when it
commits. The task reconnects with backoff when the database goes away and raises the flag on every
(re)connection, since notifications sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from typing import Any

from ._base import ChangeWatch

log = logging.getLogger("erp_plugins.state")

#: `maybe_changed()` says True at least this often, whatever the LISTEN connection heard (or missed).
FALLBACK_POLL_S = 1.0
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 2.0
#: How often the notification wait wakes up to see whether the watch was closed.
_WAKE_S = 0.5


class PostgresWatch(ChangeWatch):
    """The flag, the fallback clock and the LISTEN task of one watch (see the module docstring)."""

    def __init__(self, conninfo: str, channel: str, where: str, connect_kwargs: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._where = where
        self._kwargs = connect_kwargs
        self._flag = threading.Event()
        self._flag.set()  # nothing compared yet: the first call says True
        self._last_true = 0.0
        self._closed = False
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def maybe_changed(self) -> bool:
        """True after a notification, on a (re)connection, and at least once a second; cheap (an Event read)."""
        now = time.monotonic()
        if self._flag.is_set() or now - self._last_true >= FALLBACK_POLL_S or self._closed:
            self._flag.clear()  # cleared before the caller reads: a commit notified after this sets it again
            self._last_true = now
            return True
        return False

    async def run(self) -> None:
        """LISTEN until `close()` or cancellation, reconnecting with jittered backoff while the database is away."""
        import psycopg

        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        delay = _RETRY_FIRST_S
        try:
            while not self._closed:
                try:
                    conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, **self._kwargs)
                except psycopg.Error as exc:
                    self.connected = False
                    self._flag.set()
                    log.debug("state watch: cannot connect to %s: %s", self._where, " ".join(str(exc).split()))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 (jitter)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                try:
                    async with conn:
                        await conn.execute(f"LISTEN {self._channel}")
                        self.connected = True
                        self._flag.set()  # whatever was notified while we were away is lost: say "maybe"
                        delay = _RETRY_FIRST_S
                        while not self._closed:
                            async for _ in conn.notifies(timeout=_WAKE_S):
                                self._flag.set()
                except psycopg.Error as exc:
                    log.info("state watch: lost the connection to %s (%s); reconnecting", self._where,
                             " ".join(str(exc).split()))
                finally:
                    self.connected = False
                    self._flag.set()
        except asyncio.CancelledError:
            if not self._closed:
                raise
        finally:
            self._task = None

    def close(self) -> None:
        """Stop the LISTEN task (from any thread); it ends within half a second, or at once on its own loop."""
        self._closed = True
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
