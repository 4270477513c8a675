# ruff: noqa: F401 - the imported tests and fixtures are collected here a second time
"""The sandbox's tests again, with every worker forked from its plugin's template (`_zygote`) instead of started
afresh: the hostile corpus, limits, data folders, restarts and the proxy must hold the same way.

Left out: the tests of the plain start itself (its launch line, early cgroup move) and the unit tests.
"""

from __future__ import annotations

import os

import pytest
import test_sandbox
from test_sandbox import (
    cgroup_hostile,
    data_root,
    good,
    hostile,
    plugin_site,
    require_sandbox,
    runtime_dir,
    test_a_hook_calls_timeout_covers_a_restart_of_its_worker,
    test_a_log_flood_is_cut_to_the_budget,
    test_a_worker_that_cannot_enter_its_cgroup_is_stopped,
    test_cancellation_kills_the_worker,
    test_config_and_secrets_never_in_argv_or_environment,
    test_cpu_budget_ends_the_worker_with_sigxcpu,
    test_emit_needs_permission_checked_on_the_host,
    test_events_progress_log_and_usage_cross_the_bridge,
    test_every_worker_start_marks_its_runtime_site_used,
    test_exit_code,
    test_file_permissions_need_a_data_root,
    test_files_bridge_reads_allowed_file_and_refuses_others,
    test_fork_bomb_stopped_by_nproc,
    test_hang_past_timeout_kills_the_worker,
    test_io_uring_refused,
    test_memory_bomb,
    test_memory_used_past_the_limit_ends_the_worker_as_out_of_memory,
    test_network_connect_refused,
    test_no_file_permissions_means_no_data,
    test_pipe_flood_is_a_protocol_violation,
    test_plugin_error_is_reported_with_secrets_redacted,
    test_print_does_not_corrupt_the_pipe,
    test_proxy_has_hook_signature_and_answers,
    test_ptrace_and_kill_the_host,
    test_raise,
    test_read_only_data_can_be_read_not_written,
    test_read_write_data_is_the_tenants_own_host_directory,
    test_remount_root_read_write,
    test_repeated_crashes_put_the_plugin_into_error_state,
    test_restart_after_crash_replays_initialize_and_activate,
    test_segfault,
    test_state_store_unreachable,
    test_stream_that_stalls_past_timeout_kills_the_worker,
    test_stream_with_backpressure,
    test_user_context_reaches_the_worker,
    test_without_a_memory_cgroup_the_address_space_is_the_limit,
    test_worker_event_loop_is_uvloop_unless_the_host_asks_for_asyncio,
    test_worker_runs_in_a_memory_cgroup_with_its_limit,
    test_write_outside_its_area,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="worker templates need the per-tenant uids of a root host")


@pytest.fixture(autouse=True)
async def forked(monkeypatch):
    """`test_sandbox.start` gives each runner its own fleet, whose templates fork its workers; closed afterwards."""
    fleets: list = []
    monkeypatch.setattr(test_sandbox, "FORKED", fleets)
    monkeypatch.delenv("ERP_PLUGINS_SANDBOX_TEMPLATES", raising=False)
    yield
    for fleet in fleets:
        await fleet.close()
