"""Clients other than Python's, and files: a Node.js client (built-in fetch) calls a hook and reads a stream;
files for hook arguments that name them are uploaded as multipart/form-data to a server with --upload-dir."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from serverkit import Fleet, shared_site, start_fleet

pytestmark = pytest.mark.timeout(300)

NODE_CLIENT = r"""
const [url, token] = process.argv.slice(2);
const headers = {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"};
const call = await fetch(`${url}/v1/tenants/acme/hooks/ai_request`, {method: "POST", headers,
  body: JSON.stringify({prompt: "from node"})});
const results = await call.json();
const bad = await fetch(`${url}/v1/tenants/acme/hooks/ai_request`, {method: "POST", headers, body: "{oops"});
const problem = {status: bad.status, type: bad.headers.get("content-type"), body: await bad.json()};
const stream = await fetch(`${url}/v1/tenants/acme/hooks/ai_stream/stream`, {method: "POST", headers,
  body: JSON.stringify({prompt: "red green blue"})});
const reader = stream.body.getReader();
const decoder = new TextDecoder();
let text = "";
for (;;) { const {done, value} = await reader.read(); if (done) break; text += decoder.decode(value, {stream: true}); }
const events = text.trim().split("\n\n").map(block => {
  const pairs = block.split("\n").map(l => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 2)]);
  const lines = Object.fromEntries(pairs);
  return {event: lines.event, data: JSON.parse(lines.data)};
});
console.log(JSON.stringify({results, problem, contentType: stream.headers.get("content-type"), events}));
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("clients")
    tmp.chmod(0o755)
    f = start_fleet(tmp, shared_site(), "--upload-dir", str(tmp / "uploads"))
    f.uploads = tmp / "uploads"  # type: ignore[attr-defined]
    yield f
    f.server.stop()


def test_node_client_calls_a_hook_and_reads_a_stream(fleet: Fleet, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed: apt-get install -y nodejs")
        pytest.skip("node is not installed (apt-get install -y nodejs)")
    script = tmp_path / "client.mjs"
    script.write_text(NODE_CLIENT)
    proc = subprocess.run([node, str(script), fleet.url, fleet.token("acme_call")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {r["plugin"]: r["result"] for r in out["results"]} == {
        "web_tool": "Hi from acme from node (fast)", "boxed_stream": "boxed:from node"}
    assert out["problem"]["status"] == 400 and out["problem"]["type"].startswith("application/problem+json")
    assert "not valid JSON" in out["problem"]["body"]["detail"]
    assert out["contentType"].startswith("text/event-stream")
    assert out["events"] == [
        {"event": "chunk", "data": {"plugin": "boxed_stream", "text": "red "}},
        {"event": "chunk", "data": {"plugin": "boxed_stream", "text": "green "}},
        {"event": "chunk", "data": {"plugin": "boxed_stream", "text": "blue "}},
        {"event": "end", "data": {"plugin": "boxed_stream", "chunks": 3}},
    ]


def test_files_uploaded_for_a_call_reach_the_plugin_and_are_removed(fleet: Fleet, tmp_path: Path) -> None:
    data = os.urandom(300_000 // 4)
    other = b"second file"
    with httpx.Client(base_url=fleet.url, headers=fleet.h("acme_call"), timeout=60) as c:
        r = c.post("/v1/tenants/acme/hooks/send_email",
                   data={"args": json.dumps({"to": "ann@example.com", "subject": "s", "body": "b"})},
                   files=[("attachments", ("a.bin", data)), ("attachments", ("../../etc/b.txt", other))])
    assert r.status_code == 200, r.text
    [result] = [x for x in r.json() if x["plugin"] == "web_tool"]
    assert result["success"], result
    assert result["result"] == ("sent to ann@example.com: " + hashlib.sha256(data).hexdigest() + ","
                                + hashlib.sha256(other).hexdigest())
    assert list(fleet.uploads.iterdir()) == []  # type: ignore[attr-defined]


def test_paths_must_be_inside_the_upload_folder(fleet: Fleet, tmp_path: Path) -> None:
    inside = fleet.uploads / "kept.txt"  # type: ignore[attr-defined]
    inside.write_bytes(b"kept")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    link = fleet.uploads / "link.txt"  # type: ignore[attr-defined]
    link.symlink_to(outside)
    try:
        with httpx.Client(base_url=fleet.url, headers=fleet.h("acme_call"), timeout=60) as c:
            ok = c.post("/v1/tenants/acme/hooks/send_email", json={"to": "a@b", "subject": "s", "body": "b",
                                                                   "attachments": [str(inside)]})
            assert ok.status_code == 200 and hashlib.sha256(b"kept").hexdigest() in ok.text
            for path in (str(outside), str(link), str(fleet.uploads / ".." / "outside.txt")):  # type: ignore[attr-defined]
                r = c.post("/v1/tenants/acme/hooks/send_email", json={"to": "a@b", "subject": "s", "body": "b",
                                                                      "attachments": [path]})
                assert r.status_code == 422 and "not a file inside the upload folder" in r.json()["detail"]
            r = c.post("/v1/tenants/acme/hooks/send_email", data={"args": "{}"},
                       files=[("file_path", ("x", b"x"))])
            assert r.status_code == 422 and "takes no file in field 'file_path'" in r.json()["detail"]
            r = c.post("/v1/tenants/acme/hooks/send_email", data={"args": "[1]"}, files=[("attachments", ("x", b"x"))])
            assert r.status_code == 422 and "must be a JSON object" in r.json()["detail"]
    finally:
        inside.unlink()
        link.unlink()
