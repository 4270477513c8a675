"""google_services driven through PluginHost, in process and sandboxed, with the real google-api-python-client
talking to the loopback Google server; and the CLI's progress bar for upload_file, drawn on a pseudo-terminal.

Sandboxed, the plugin has no file system: the files ERP code names (attachments, file_path) are read by the host
and streamed to the worker chunk by chunk; progress notes come back over the same channel.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from erp_plugins_core import PluginHost
from erp_plugins_core._cli import _Progress
from erp_plugins_core._errors import ConfigError, PluginError
from servers.google_fake import GoogleFake

KiB = 1024
MiB = 1024 * KiB
CHUNK = MiB
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"
ROOT = Path(__file__).resolve().parents[1]


def make_file(path: Path, size: int) -> bytes:
    """`size` bytes, each 4 KiB block stamped with its offset (a misplaced chunk cannot go unnoticed)."""
    data = bytearray(hashlib.sha256(path.name.encode()).digest() * (size // 32 + 1))[:size]
    for offset in range(0, size - 8, 4096):
        data[offset:offset + 8] = offset.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return bytes(data)


def secrets_of(creds: dict[str, Any]) -> list[str]:
    return [creds[k] for k in ("token", "refresh_token", "client_secret")]


def assert_no_secrets(value: Any, creds: dict[str, Any]) -> None:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    for secret in secrets_of(creds):
        assert secret not in text, f"a secret leaked: {text}"


@pytest.fixture(params=["in_process", "sandboxed"])
def mode(request, monkeypatch) -> str:
    if request.param == "in_process":
        monkeypatch.setenv("ERP_PLUGINS_UNSAFE_NO_SANDBOX", "1")
    else:
        monkeypatch.delenv("ERP_PLUGINS_UNSAFE_NO_SANDBOX", raising=False)
        from erp_plugins_core._sandbox import sandbox_available

        why = sandbox_available()
        if why is not None:
            pytest.fail(f"the sandbox cannot start here: {why}")
    return request.param


@pytest.fixture
def fake() -> Iterator[GoogleFake]:
    with GoogleFake(page_size=2) as server:
        server.folders.add("folder-exports")
        yield server
        assert server.violations == [], server.violations


@pytest.fixture
def creds(fake, monkeypatch) -> dict[str, Any]:
    """Authorized-user credentials (token valid for an hour), given to the host as env:GOOGLE_TEST_CREDS."""
    info = fake.user_credentials(expires_in=3600)
    monkeypatch.setenv("GOOGLE_TEST_CREDS", json.dumps(info))
    return info


@pytest.fixture
async def host(mode, fake, creds, tmp_path, monkeypatch) -> AsyncIterator[PluginHost]:
    monkeypatch.setenv("ERP_PLUGINS_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("ERP_PLUGINS_DATA_DIR", str(tmp_path / "data"))
    async with PluginHost(tmp_path / "state.db", health_loop=False) as h:
        row = await h.enable("google_services", tenant="acme", config={
            "credentials_file": "env:GOOGLE_TEST_CREDS", "root_url": fake.url, "upload_chunk_size": CHUNK,
        })
        assert row.state == "active", row
        yield h


async def call_one(host: PluginHost, hook: str, **kwargs: Any) -> Any:
    [result] = await host.call(hook, tenant="acme", **kwargs)
    assert result.plugin == "google_services"
    return result


async def test_mail_upload_and_calendar(host, fake, creds, tmp_path) -> None:
    # Gmail: an invoice to two recipients with the PDF attached
    pdf = tmp_path / "invoice-0042.pdf"
    pdf.write_bytes(PDF)
    sent = await call_one(host, "send_email", to="billing@customer.example, Jane Doe <jane@customer.example>",
                          subject="Invoice 0042", body="<p>Please find the invoice <b>attached</b>.</p>",
                          attachments=[str(pdf)])
    assert sent.success, sent.error
    [mail] = fake.mails
    assert sent.result == mail.id
    assert mail.recipients == ["billing@customer.example", "jane@customer.example"]
    assert mail.structure == ["multipart/mixed", "multipart/alternative", "text/plain", "text/html",
                              "application/pdf"]
    assert mail.attachments == [("invoice-0042.pdf", "application/pdf", PDF)]
    assert "Please find the invoice attached." in mail.text

    # Drive: a multi-chunk resumable upload into a folder, progress reaching the caller's callback
    export = tmp_path / "export-2025.csv"
    data = make_file(export, 6 * CHUNK + 12345)
    seen: list[tuple[str, int, int | None, str]] = []
    uploaded = await call_one(host, "upload_file", file_path=str(export), folder_id="folder-exports",
                              progress=lambda *a: seen.append(a))
    assert uploaded.success, uploaded.error
    stored = fake.files[uploaded.result]
    assert stored["data"] == data and stored["parents"] == ["folder-exports"] and stored["mimeType"] == "text/csv"
    [upload] = fake.uploads.values()
    assert [c[0] for c in upload.chunks] == [i * CHUNK for i in range(7)]
    done = [d for _, d, _, _ in seen]
    assert {(p, t, m) for p, _, t, m in seen} == {("google_services", len(data), "export-2025.csv")}
    assert done[0] == 0 and done[-1] == len(data) and done == sorted(done)
    assert len(set(done)) >= 7  # 0, each chunk boundary, the total

    # Calendar: create three events, list them back across pages (the fake serves two per page)
    ids = []
    for day in (3, 1, 2):
        created = await call_one(host, "create_calendar_event", calendar_id="primary", event={
            "summary": f"Review {day}",
            "start": {"dateTime": f"2025-03-0{day}T10:00:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": f"2025-03-0{day}T11:00:00", "timeZone": "Europe/Berlin"},
            "attendees": [{"email": "jane@customer.example"}],
        })
        assert created.success, created.error
        ids.append(created.result)
    listed = await call_one(host, "list_calendar_events", calendar_id="primary",
                            time_min="2025-03-01T00:00:00Z", time_max="2025-03-03T00:00:00Z")
    assert listed.success, listed.error
    assert [e["summary"] for e in listed.result] == ["Review 1", "Review 2"]
    everything = await call_one(host, "list_calendar_events", calendar_id="primary")
    assert [e["id"] for e in everything.result] == [ids[1], ids[2], ids[0]]
    assert len(fake.requests_to("calendar.list")) == 1 + 2  # one page, then two pages (2 + 1 events)
    for result in (sent, uploaded, listed, everything):
        assert_no_secrets(result.to_json(), creds)


async def test_errors_name_the_fix_and_never_the_secrets(host, fake, creds, tmp_path) -> None:
    [report] = await host.health("acme")
    assert report.healthy, report
    assert "token valid until" in report.detail and "upload_file" in report.detail

    small = tmp_path / "notes.txt"
    small.write_bytes(b"hello drive\n")
    missing = await call_one(host, "upload_file", file_path=str(small), folder_id="no-such-folder")
    assert not missing.success and missing.error_kind == "not_found"
    assert "Drive folder 'no-such-folder'" in missing.error and "does not exist" in missing.error

    fake.revoke_all()
    revoked = await call_one(host, "create_calendar_event", calendar_id="primary", event={
        "summary": "x", "start": {"date": "2025-03-01"}, "end": {"date": "2025-03-02"}})
    assert not revoked.success and revoked.error_kind == "authentication"
    assert "re-authorise" in revoked.error
    for result in (missing, revoked):
        assert_no_secrets(result.to_json(), creds)
        assert_no_secrets(str(result.exception), creds)


async def test_credentials_from_a_key_file_reach_the_plugin(host, fake, creds, tmp_path, monkeypatch) -> None:
    """`file:/path` for a sensitive key: the host reads the file at start (mode 600, not readable by a sandboxed
    worker's uid) and the plugin gets its content; the state keeps only the reference."""
    key_file = tmp_path / "google-credentials.json"
    key_file.write_text(json.dumps(fake.user_credentials(expires_in=3600)) + "\n")
    key_file.chmod(0o600)
    await host.enable("google_services", tenant="initech", config={
        "credentials_file": f"file:{key_file}", "root_url": fake.url})
    [listed] = await host.call("list_calendar_events", tenant="initech", calendar_id="primary")
    assert listed.success, listed.error
    assert host.config_of("google_services", tenant="initech")["credentials_file"] == f"file:{key_file}"
    assert_no_secrets(listed.to_json(), json.loads(key_file.read_text()))


async def test_health_names_revoked_credentials(host, fake, tmp_path, monkeypatch, request) -> None:
    """`erp-plugins health` shows HealthReport.error for an unhealthy plugin: it must say what to fix."""
    expired = fake.user_credentials(expires_in=-60)  # the health check must refresh, and the refresh is refused
    monkeypatch.setenv("GOOGLE_TEST_CREDS_2", json.dumps(expired))
    await host.enable("google_services", tenant="globex", config={
        "credentials_file": "env:GOOGLE_TEST_CREDS_2", "root_url": fake.url})
    fake.revoke_all()
    [report] = await host.health("globex")
    assert not report.healthy
    assert "re-authorise" in report.detail
    assert_no_secrets(report.to_json(), expired)
    assert "re-authorise" in report.error


async def test_attachment_named_through_a_symlink_or_relative_path(mode, host, fake, tmp_path, monkeypatch,
                                                                   request) -> None:
    """ERP code may name a file by any path that reaches it; the host resolves it, and so must the worker."""
    real = tmp_path / "real" / "invoice.pdf"
    real.parent.mkdir()
    real.write_bytes(PDF)
    link = tmp_path / "link"
    link.symlink_to(real.parent)
    monkeypatch.chdir(real.parent)
    failed = {}
    for path in (str(link / "invoice.pdf"), "invoice.pdf"):
        result = await call_one(host, "send_email", to="a@example.com", subject="s", body="b", attachments=[path])
        if not result.success:
            failed[path] = result.error
    assert not failed, failed
    assert [m.attachments for m in fake.mails] == [[("invoice.pdf", "application/pdf", PDF)]] * 2


@pytest.fixture
def fake_process() -> Iterator[dict[str, Any]]:
    """The loopback Google server in a process of its own, so its buffers are not the host's memory."""
    proc = subprocess.Popen([sys.executable, "-m", "servers.google_fake"], cwd=ROOT / "tests",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the fake Google server did not start within 30 s"
        yield json.loads(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_sandboxed_upload_memory_is_flat(fake_process, tmp_path, monkeypatch) -> None:
    """Sandboxed, the host serves the file chunk by chunk: its peak memory does not grow with the file's size."""
    from erp_plugins_core._sandbox import sandbox_available

    why = sandbox_available()
    if why is not None:
        pytest.fail(f"the sandbox cannot start here: {why}")
    monkeypatch.delenv("ERP_PLUGINS_UNSAFE_NO_SANDBOX", raising=False)
    monkeypatch.setenv("ERP_PLUGINS_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("ERP_PLUGINS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GOOGLE_TEST_CREDS", json.dumps(fake_process["credentials"]))
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    make_file(small, 2 * CHUNK)
    make_file(big, 24 * CHUNK)
    async with PluginHost(tmp_path / "state.db", health_loop=False) as host:
        await host.enable("google_services", tenant="acme", config={
            "credentials_file": "env:GOOGLE_TEST_CREDS", "root_url": fake_process["url"], "upload_chunk_size": CHUNK})
        peaks = {}
        tracemalloc.start()
        try:
            for path in (small, big):
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                result = await call_one(host, "upload_file", file_path=str(path), folder_id="bench-folder")
                assert result.success, result.error
                peaks[path.name] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    # one read in flight is held a few times over (the read, its msgpack frame, the pipe's write buffer)
    assert peaks["big.bin"] < 6 * CHUNK, peaks  # a 24-chunk file
    assert peaks["big.bin"] < peaks["small.bin"] + CHUNK, peaks  # 12 times the file, not more memory


# --- the CLI's progress bar ---------------------------------------------------------------------------------


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_redrawn_on_a_terminal_only(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    term = _FakeTerminal()
    bar = _Progress(term)
    bar.interval = 0.0
    for done in (0, 4 * MiB, 8 * MiB, 10 * MiB):
        bar("google_services", done, 10 * MiB, "export.csv")
    bar.end()
    lines = term.getvalue().split("\r")[1:]
    assert len(lines) == 4
    assert lines[0].startswith("google_services: [" + "-" * 30 + "]   0.0% 0.0/10.5 MB export.csv")
    assert "[" + "#" * 12 + "-" * 18 + "]  40.0%" in lines[1]
    assert lines[-1] == "google_services: [" + "#" * 30 + "] 100.0% 10.5/10.5 MB export.csv\x1b[K\n"

    throttled = _Progress(_FakeTerminal())
    throttled.interval = 3600.0
    for done in range(0, 11):
        throttled("p", done, 10, "f")
    assert throttled.stream.getvalue().count("\r") == 2  # the first state and the final one

    monkeypatch.setenv("COLUMNS", "40")  # never wider than the terminal: a wrapped line cannot be redrawn
    narrow = _Progress(_FakeTerminal())
    narrow("google_services", 1, 2, "a-long-file-name.csv")
    assert narrow.stream.getvalue() == "\r" + "google_services: [" + "#" * 15 + "-" * 6 + "\x1b[K"

    for quiet in (_Progress(io.StringIO()), _Progress(_FakeTerminal(), enabled=False)):
        quiet("p", 1, 2, "f")
        quiet.end()
        assert quiet.stream.getvalue() == ""


def _run_cli(args: list[str], env: dict[str, str], *, tty: bool) -> tuple[int, str, str]:
    """Run `erp-plugins ARGS`; stderr on a pseudo-terminal when `tty`. (exit code, stdout, stderr)."""
    cmd = [sys.executable, "-c", "from erp_plugins_core._cli import main; main()", *args]
    if not tty:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        err = bytearray()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                err += chunk
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return code, out, err.decode(errors="replace")


def test_cli_upload_shows_a_progress_bar_on_a_terminal(fake, creds, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERP_PLUGINS")}
    env.update(ERP_PLUGINS_STATE=str(tmp_path / "state.db"), ERP_PLUGINS_SECRET_KEY=Fernet.generate_key().decode(),
               ERP_PLUGINS_UNSAFE_NO_SANDBOX="1", GOOGLE_TEST_CREDS=json.dumps(creds), COLUMNS="100")
    code, out, err = _run_cli(["enable", "google_services", "--tenant", "acme",
                               "--config", "credentials_file=env:GOOGLE_TEST_CREDS", "--config", f"root_url={fake.url}",
                               "--config", f"upload_chunk_size={256 * KiB}"], env, tty=False)
    assert code == 0, (out, err)
    export = tmp_path / "export.csv"
    data = make_file(export, 3 * MiB + 5)
    upload = ["call", "upload_file", "--tenant", "acme", "--arg", f"file_path={export}",
              "--arg", "folder_id=folder-exports"]

    code, out, err = _run_cli(upload, env, tty=True)
    assert code == 0, (out, err)
    assert out.startswith("google_services: ok")
    file_id = out.strip().rsplit(": ", 1)[1]
    assert fake.files[file_id]["data"] == data
    draws = [d for d in err.split("\r") if d.startswith("google_services: [")]
    assert len(draws) >= 2, err  # drawn at 0 %, redrawn at least at 100 %
    assert draws[0].startswith("google_services: [" + "-" * 30 + "]   0.0% 0.0/3.1 MB export.csv")
    assert draws[-1].startswith("google_services: [" + "#" * 30 + "] 100.0% 3.1/3.1 MB export.csv\x1b[K")
    assert_no_secrets(err + out, creds)

    for args, tty in ((upload, False), ([*upload, "--no-progress"], True), ([*upload, "--json"], False)):
        code, out, err = _run_cli(args, env, tty=tty)
        assert code == 0, (args, out, err)
        assert "[#" not in err and "[-" not in err and "\r" not in err.replace("\r\n", "\n"), (args, err)
    assert json.loads(out)[0]["success"] is True


async def test_credentials_file_as_a_plain_path(mode, host, fake, tmp_path) -> None:
    """`credentials_file` is `format: file-path`: a plain host path works in process (the plugin reads it) and
    sandboxed (the host reads it at start; the worker has no file system); the state keeps the path encrypted."""
    key_file = tmp_path / "creds.json"
    key_file.write_text(json.dumps(fake.user_credentials(expires_in=3600)))
    key_file.chmod(0o600)  # readable by the host only, not by a sandboxed worker's uid
    await host.enable("google_services", tenant="initech", config={
        "credentials_file": str(key_file), "root_url": fake.url})
    [listed] = await host.call("list_calendar_events", tenant="initech", calendar_id="primary")
    assert listed.success, listed.error
    assert host.config_of("google_services", tenant="initech")["credentials_file"] == "***"
    assert_no_secrets(listed.to_json(), json.loads(key_file.read_text()))


async def test_an_unreadable_credentials_path_names_the_path(mode, host, fake, tmp_path) -> None:
    missing = tmp_path / "nowhere" / "creds.json"
    with pytest.raises(PluginError) as info:
        await host.enable("google_services", tenant="initech", config={
            "credentials_file": str(missing), "root_url": fake.url})
    if mode == "sandboxed":  # the host read it: the message names the file and says who tried
        assert str(missing) in str(info.value) and "the host tried to read it" in str(info.value)
    else:  # the plugin read it; the path of a sensitive key is redacted from the plugin's own error
        assert "cannot read credentials_file (No such file or directory)" in str(info.value)


async def test_a_url_or_relative_path_is_refused(host, fake) -> None:
    for value, why in (("https://example.com/creds.json", "is a URL, not a file path"),
                       ("creds.json", "is not an absolute path")):
        with pytest.raises(ConfigError, match=why):
            await host.enable("google_services", tenant="initech", config={"credentials_file": value,
                                                                            "root_url": fake.url})
