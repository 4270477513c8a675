"""upload_file over the real client against the loopback Drive: resumable chunks, progress, resume, memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
from google_testkit import allow_files

from erp_plugins_core._errors import ModelNotFoundError

MiB = 1024 * 1024


def make_file(path, size: int) -> bytes:
    """A file of `size` bytes, each 4 KiB block stamped with its offset (so misplaced chunks cannot go unnoticed)."""
    data = bytearray(hashlib.sha256(path.name.encode()).digest() * (size // 32 + 1))[:size]
    for offset in range(0, size, 4096):
        stamp = offset.to_bytes(8, "big")[: max(0, min(8, size - offset))]
        data[offset:offset + len(stamp)] = stamp
    path.write_bytes(bytes(data))
    return bytes(data)


def assert_progress(calls, total, name):
    done = [d for d, _, _ in calls]
    assert done == sorted(done), "progress went backwards"
    assert calls[0] == (0, total, name) and calls[-1] == (total, total, name)
    assert all(t == total and n == name for _, t, n in calls)


async def test_multi_chunk_upload_into_folder(make_plugin, fake, tmp_path):
    fake.folders.add("folder-exports")
    plugin, bridge = await make_plugin(upload_chunk_size=MiB)
    path = tmp_path / "export-2025.csv"
    data = make_file(path, 20 * MiB + 12345)
    allow_files(path)

    file_id = await plugin.upload_file(file_path=str(path), folder_id="folder-exports")

    stored = fake.files[file_id]
    assert stored["data"] == data
    assert stored["name"] == "export-2025.csv" and stored["mimeType"] == "text/csv"
    assert stored["parents"] == ["folder-exports"]
    [upload] = fake.uploads.values()
    assert upload.declared_length == len(data) and upload.declared_type == "text/csv"
    assert len(upload.chunks) == 21
    assert [c[0] for c in upload.chunks] == [i * MiB for i in range(21)]
    assert fake.requests_to("drive.create")[0].query["uploadType"] == "resumable"
    assert_progress(bridge.progress_calls, len(data), "export-2025.csv")
    assert len(bridge.progress_calls) == 21 + 1  # 0, then one per chunk (the last one reports the total)
    # streamed: never more than one chunk read at once, every byte read once
    assert max(bridge.reads) <= MiB
    assert sum(bridge.reads) < len(data) + 2 * MiB


async def test_upload_resumes_where_the_server_says_it_stopped(make_plugin, fake, tmp_path):
    plugin, bridge = await make_plugin(upload_chunk_size=MiB)
    path = tmp_path / "backup.tar"
    data = make_file(path, 5 * MiB + 123)
    allow_files(path)
    # the third chunk's connection breaks after 512 KiB; the server kept those bytes
    fake.fail("drive.chunk", "drop", skip=2, keep=512 * 1024)

    file_id = await plugin.upload_file(file_path=str(path), folder_id=None)

    assert fake.files[file_id]["data"] == data
    [upload] = fake.uploads.values()
    assert upload.status_queries == 1  # the client asked where the upload stood ...
    assert upload.resumed_at == [2 * MiB + 512 * 1024]  # ... and went on from there, not from the chunk start
    assert_progress(bridge.progress_calls, len(data), "backup.tar")


async def test_upload_continues_after_a_shorter_range(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin(upload_chunk_size=MiB)
    path = tmp_path / "report.pdf"
    data = make_file(path, 3 * MiB)
    allow_files(path)
    # the server takes the second chunk but persists only 256 KiB of it: 308 with Range: bytes=0-1310719
    fake.fail("drive.chunk", "partial", skip=1, keep=256 * 1024)

    file_id = await plugin.upload_file(file_path=str(path), folder_id=None)

    assert fake.files[file_id]["data"] == data
    assert fake.files[file_id]["mimeType"] == "application/pdf"
    starts = [c[0] for c in next(iter(fake.uploads.values())).chunks]
    assert starts[:3] == [0, MiB, MiB + 256 * 1024]


async def test_chunk_failing_once_with_500_is_resent_intact(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin(upload_chunk_size=MiB)
    path = tmp_path / "data.bin"
    data = make_file(path, 2 * MiB + 1)
    allow_files(path)
    fake.fail("drive.chunk", 500, skip=1)

    file_id = await plugin.upload_file(file_path=str(path), folder_id=None)

    assert fake.files[file_id]["data"] == data
    assert fake.files[file_id]["mimeType"] == "application/octet-stream"
    assert len(fake.requests_to("drive.chunk")) == 4  # 3 chunks + 1 retry by the client's num_retries


async def test_empty_file(make_plugin, fake, tmp_path):
    plugin, bridge = await make_plugin()
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    allow_files(path)
    file_id = await plugin.upload_file(file_path=str(path), folder_id=None)
    assert fake.files[file_id]["data"] == b""
    assert bridge.progress_calls[-1] == (0, 0, "empty.txt")


async def test_missing_folder_is_named(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin()
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc")
    allow_files(path)
    with pytest.raises(ModelNotFoundError, match="Drive folder 'no-such-folder' does not exist"):
        await plugin.upload_file(file_path=str(path), folder_id="no-such-folder")
    assert fake.files == {}


async def test_upload_does_not_block_the_event_loop(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin(upload_chunk_size=MiB)
    path = tmp_path / "big.bin"
    make_file(path, 24 * MiB)
    allow_files(path)
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await plugin.upload_file(file_path=str(path), folder_id=None)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    # a blocking upload would let the ticker run once before and once after it; no timing threshold (the
    # machine may be loaded), only the count of ticks that interleaved with the 24 chunks
    assert len(ticks) >= 10, f"the loop ticked only {len(ticks)} times in {elapsed:.2f}s"


async def test_upload_reads_only_the_file_of_the_call(make_plugin, fake, tmp_path):
    from erp_plugins_core._errors import PermissionDenied

    plugin, _ = await make_plugin()
    other = tmp_path / "other.txt"
    other.write_bytes(b"x")
    allow_files(tmp_path / "allowed.txt")
    with pytest.raises(PermissionDenied):
        await plugin.upload_file(file_path=str(other), folder_id=None)
    assert fake.uploads == {}


def test_make_file_is_deterministic(tmp_path):
    a = make_file(tmp_path / "x", 10000)
    assert len(a) == 10000 and os.path.getsize(tmp_path / "x") == 10000
