"""Synthetic installed plugin distributions for the benchmarks, and the timing helpers they share.

`make_site(root, n)` writes `n` distributions the way pip installs wheels: a package with `plugin.py` and a
realistic `plugin.yaml`, and a `.dist-info` with METADATA, entry_points.txt (group `erp_plugins`) and a RECORD
whose hashes are right, so discovery, validation and the host's RECORD check see what a real install gives.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = """\
name: {name}
version: "{version}"
description: >-
  Synthetic benchmark plugin {index}: answers prompts and computes embeddings through a made-up service,
  with a manifest shaped like the first-party providers' ones.
author: ERP benchmark
license: MIT
plugin_type: ai_provider
api_version: "1.0"
dependencies:
  - pyyaml>=5
permissions:
  - ai.generate
  - ai.embeddings
config_schema:
  type: object
  additionalProperties: false
  properties:
    api_key:
      type: string
      minLength: 1
      sensitive: true
      description: API key of the made-up service
    model:
      type: string
      minLength: 1
      default: bench-model-{index}
      description: model name
    temperature:
      type: number
      minimum: 0
      maximum: 2
      default: 0.7
      description: sampling temperature
    max_tokens:
      type: integer
      minimum: 1
      description: upper bound on tokens per answer
    timeout:
      type: number
      exclusiveMinimum: 0
      default: 30
      description: seconds one request may take
hooks:
  - name: ai_request
    method: generate_response
    description: complete answer
  - name: ai_embedding
    method: generate_embeddings
    description: one vector per text
health_check:
  interval: 60
  timeout: 10
resources:
  memory_limit: 256MB
  cpu_limit: 0.5
  network_access: true
  file_system_access: false
  timeout: 30
security:
  sandbox: {sandbox}
  network_isolation: false
  file_permissions: none
"""

PLUGIN_CODE = '''\
"""Synthetic benchmark plugin: answers with the prompt itself, so the benchmark measures dispatch only."""

from erp_plugins_core import PluginInterface, hookimpl


class Plugin(PluginInterface):
    @hookimpl(specname="ai_request")
    {async_}def generate_response(self, prompt, context):
        return prompt

    @hookimpl(specname="ai_embedding")
    {async_}def generate_embeddings(self, texts):
        return [[0.0] for _ in texts]
'''


def _record_line(root: Path, path: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.relative_to(root).as_posix()},sha256={digest},{len(data)}"


def install_plugin(root: Path, name: str, *, index: int = 0, version: str = "1.0.0", sandbox: bool = True,
                   is_async: bool = False) -> str:
    """Install one plugin distribution `erp-bench-<name>` (package `erp_bench_<name>`) into `root`.

    The entry point `name = erp_bench_<name>.plugin:Plugin`; returns the distribution name.
    """
    dist = f"erp-bench-{name.replace('_', '-')}"
    pkg = f"erp_bench_{name}"
    pdir = root / pkg
    pdir.mkdir(parents=True)
    files: list[Path] = []
    manifest = MANIFEST.format(name=name, version=version, index=index, sandbox=str(sandbox).lower())
    code = PLUGIN_CODE.format(async_="async " if is_async else "")
    for fname, text in (("__init__.py", ""), ("plugin.py", code), ("plugin.yaml", manifest)):
        (pdir / fname).write_text(text)
        files.append(pdir / fname)
    info = root / f"{pkg}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\nSummary: synthetic benchmark plugin\n"
        "Requires-Dist: erp-plugins-core\nRequires-Dist: pyyaml>=5\n"
    )
    (info / "entry_points.txt").write_text(f"[erp_plugins]\n{name} = {pkg}.plugin:Plugin\n")
    (info / "top_level.txt").write_text(pkg + "\n")
    (info / "INSTALLER").write_text("pip\n")
    lines = [_record_line(root, f) for f in files + [info / n for n in ("METADATA", "entry_points.txt",
                                                                          "top_level.txt", "INSTALLER")]]
    lines.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n")
    return dist


def make_site(root: Path, n: int, *, prefix: str = "bench", sandbox: bool = True, is_async: bool = False) -> list[str]:
    """Install `n` plugins named `<prefix>_000`... into `root`; returns their plugin names."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}_{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        install_plugin(root, name, index=i, sandbox=sandbox, is_async=is_async)
    importlib.invalidate_caches()
    return names


# --- timing ---------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes, with the garbage collector off as `timeit` does."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


def alternate(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run every side once per round, in rotating order (so neither always goes first); median seconds each.

    Each side is a callable that performs one measurement and returns its time in seconds.
    """
    names = list(sides)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            samples[n].append(sides[n]())
    return {n: statistics.median(v) for n, v in samples.items()}


def fmt_time(seconds: float) -> str:
    """A duration with a readable unit."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} µs"


def report(title: str, rows: list[dict[str, Any]], as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """Print the rows (name, ours, reference, ratio, target, met) as a table, or as one JSON document."""
    if as_json:
        print(json.dumps({"benchmark": title, "python": sys.version.split()[0], "rows": rows, **(extra or {})},
                         indent=2))
        return
    print(title)
    header = f"{'measurement':<46} {'ours':>11} {'reference':>11} {'ratio':>7} {'target':>7}  met"
    print(header)
    print("-" * len(header))
    for row in rows:
        target = f"≤{row['target']:.2f}×" if row.get("target") is not None else "-"
        met = "-" if row.get("met") is None else ("yes" if row["met"] else "NO")
        print(f"{row['name']:<46} {fmt_time(row['ours_s']):>11} {fmt_time(row['reference_s']):>11} "
              f"{row['ratio']:>6.2f}× {target:>7}  {met}")
        if row.get("reference"):
            print(f"    reference: {row['reference']}")
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")


def row(name: str, ours: float, ref: float, target: float | None, reference: str) -> dict[str, Any]:
    """One result row; `met` is None when there is no target."""
    ratio = ours / ref if ref > 0 else float("inf")
    return {"name": name, "ours_s": ours, "reference_s": ref, "ratio": round(ratio, 3), "target": target,
            "met": None if target is None else ratio <= target, "reference": reference}
