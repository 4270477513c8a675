"""The import-time rehearsal: every SDK call of the plugin runs once in memory where no loop runs, leaves no
thread, descriptor or event loop behind, is skipped inside a running loop, and never breaks the import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from erp_plugin_openai import _rehearsal
from erp_plugin_openai.plugin import OpenAIProvider

EXPECTED = ["initialize True", "answer ready", "stream ready", "embeddings 1", "health True"]


def test_importing_the_plugin_rehearses_each_call_and_leaves_nothing_running() -> None:
    code = textwrap.dedent("""
        import asyncio, json, os
        fds = sorted(os.listdir("/proc/self/fd"))
        import erp_plugin_openai.plugin as plugin
        print(json.dumps({"rehearsed": plugin.REHEARSED, "tasks": len(os.listdir("/proc/self/task")),
                          "new_fds": sorted(set(os.listdir("/proc/self/fd")) - set(fds)),
                          "loop_set": asyncio.get_event_loop_policy()._local._loop is not None}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["rehearsed"] == EXPECTED
    # a template forks after this import: no thread may be left (the SDK's platform probe runs in one)
    assert seen["tasks"] == 1
    assert seen["new_fds"] == [] and seen["loop_set"] is False


async def test_inside_a_running_loop_the_rehearsal_is_skipped() -> None:
    assert _rehearsal.rehearse(OpenAIProvider) is None


def test_a_failing_rehearsal_leaves_the_sdk_cold_and_raises_nothing() -> None:
    class Broken(OpenAIProvider):
        async def generate_response(self, prompt, context=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("broken on purpose")

    assert _rehearsal.rehearse(Broken) is None
    assert _rehearsal.rehearse(OpenAIProvider) == EXPECTED  # and a sound plugin class still rehearses


def test_the_rehearsal_never_reaches_the_network() -> None:
    """Its answers come from memory for the paths the plugin calls; any other path is a 404, not a request."""
    lib = _rehearsal.http_library()
    assert _rehearsal._answer(lib.Request("GET", "http://rehearsal.invalid/v1/files")).status_code == 404
    client = OpenAIProvider()._http_client()
    assert not isinstance(client._transport, lib.MockTransport)  # a tenant's client is the real one
