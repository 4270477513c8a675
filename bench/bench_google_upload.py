"""Benchmark: a 100 MB Drive upload through google_services vs the client used directly.

Both upload the same file in 8 MiB resumable chunks to the loopback fake running in another process.
Reports wall time (target: plugin <= 1.05x direct) and peak Python memory during the upload (target: flat,
about one chunk, independent of file size). Run: python erp_plugin_google/tests/bench_google_upload.py [MB]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback fake servers
sys.path.insert(0, str(ROOT / "erp_plugin_google" / "tests"))  # google_testkit

import google_auth_httplib2  # noqa: E402
from google.oauth2.credentials import Credentials  # noqa: E402
from google_testkit import Bridge, allow_files  # noqa: E402
from googleapiclient import discovery  # noqa: E402
from googleapiclient.http import MediaIoBaseUpload, build_http  # noqa: E402

from erp_plugin_google._client import discovery_document  # noqa: E402
from erp_plugin_google.plugin import GoogleServicesPlugin  # noqa: E402
from erp_plugins_core._context import PluginContext  # noqa: E402
from erp_plugins_core._redact import Redactor  # noqa: E402

CHUNK = 8 * 1024 * 1024


def direct(url: str, creds: dict, path: str) -> str:
    credentials = Credentials(token=creds["token"])
    http = google_auth_httplib2.AuthorizedHttp(credentials, http=build_http())
    drive = discovery.build_from_document(discovery_document("drive", "v3", url), http=http)
    with open(path, "rb") as fh:
        media = MediaIoBaseUpload(fh, "application/octet-stream", chunksize=CHUNK, resumable=True)
        request = drive.files().create(body={"name": "direct.bin", "parents": ["bench-folder"]},
                                       media_body=media, fields="id")
        response = None
        while response is None:
            _, response = request.next_chunk()
    return response["id"]


async def plugin_upload(url: str, creds: dict, path: str) -> str:
    config = {"credentials_file": json.dumps(creds), "root_url": url, "upload_chunk_size": CHUNK}
    context = PluginContext(tenant_id="t", plugin="google_services", config=config,
                            granted=frozenset({"files.upload", "files.read"}), bridge=Bridge(), redactor=Redactor())
    plugin = GoogleServicesPlugin()
    await plugin.initialize(config, context)
    allow_files(path)
    try:
        return await plugin.upload_file(file_path=path, folder_id="bench-folder")
    finally:
        await plugin.cleanup()


def measure(fn, *args):
    tracemalloc.start()
    started = time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    server = subprocess.Popen([sys.executable, str(ROOT / "tests/servers/google_fake.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(server.stdout.readline())
        with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as fh:
            for _ in range(size_mb):
                fh.write(os.urandom(1024 * 1024))
            path = fh.name
        rows = []
        for rnd in range(3):
            d = measure(direct, info["url"], info["credentials"], path)
            p = measure(lambda: asyncio.run(plugin_upload(info["url"], info["credentials"], path)))
            rows.append((d, p))
            print(f"round {rnd}: direct {d[0]:.3f}s peak {d[1] / 2**20:.1f} MiB | "
                  f"plugin {p[0]:.3f}s peak {p[1] / 2**20:.1f} MiB | ratio {p[0] / d[0]:.3f}")
        best_d = min(r[0][0] for r in rows)
        best_p = min(r[1][0] for r in rows)
        print(f"{size_mb} MB upload, best of 3: direct {best_d:.3f}s, plugin {best_p:.3f}s, "
              f"ratio {best_p / best_d:.3f}")
        os.unlink(path)
    finally:
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
