"""Benchmark 4, overhead: the CPU the plugin spends per image beyond the provider's wait.

The emulator runs in its own process, so this process's CPU time (all threads, ``process_time``)
is the client's and the plugin's own work. For the same number of images (1024x1024 WebP, the
emulator's default and the provider's format; 0.5 s tasks, announced as 10 s), one after another
on one emulator:

- **raw httpx** (the baseline): create, poll, download the bytes with plain ``httpx.AsyncClient``,
  nothing checked, nothing stored: the irreducible HTTP cost;
- **client**: ``AsyncZImageClient.generate_many`` (validation, retries, adaptive polling, streamed
  capped download, full decode check, sha256);
- **engine**: ``BatchGenerator`` (+ ledger, thumbnail, metadata, storage with fsync);
- **dagster**: a real Dagster run of the image asset (+ events, sqlite event log, asset checks
  re-reading every image).

Then the Dagster run is profiled (cProfile in every thread, per-thread CPU clock) to list the top
costs as a share of the plugin's CPU. The profiler slows code down; its shares are read as
shares, the per-image figures come from the unprofiled runs.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import threading
import time
from types import FrameType
from typing import Any

import dagster as dg
import httpx

from benchmarks._common import BenchResult, Stopwatch, emulator, prompt_rows
from benchmarks.throughput import QUIET
from zimage_dagster.api import GenerationRequest
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorProcess
from zimage_dagster.engine.batch import BatchGenerator
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.settings import GenerationPolicy
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import load_prompts
from zimage_dagster.resource import ZImageResource

NAME = "overhead"
TITLE = "4. Overhead (plugin CPU per image, beyond the provider's wait)"
CONCURRENCY = 32


def _resource(emu: EmulatorProcess) -> ZImageResource:
    return ZImageResource(api_key=emu.api_key, base_url=emu.url, concurrency=CONCURRENCY)


async def _raw(emu: EmulatorProcess, rows: list[dict[str, Any]]) -> int:
    limit = asyncio.Semaphore(CONCURRENCY)
    headers = {"Authorization": f"Bearer {emu.api_key}"}
    async with httpx.AsyncClient(base_url=emu.url, headers=headers, timeout=30.0) as client:

        async def one(i: int, row: dict[str, Any]) -> int:
            async with limit:
                task = (
                    await client.post(
                        "/v1/images/generations",
                        json={"model": "z-image-turbo", "prompt": row["prompt"], "seed": i + 1},
                    )
                ).json()
                await asyncio.sleep(0.5)
                while task["status"] not in ("completed", "failed"):
                    task = (await client.get(f"/v1/tasks/{task['id']}")).json()
                    if task["status"] not in ("completed", "failed"):
                        await asyncio.sleep(0.25)
                image = await client.get(task["results"][0], headers={"Authorization": ""})
                return len(image.content)

        sizes = await asyncio.gather(*(one(i, r) for i, r in enumerate(rows)))
    return len(sizes)


async def _client(emu: EmulatorProcess, rows: list[dict[str, Any]]) -> int:
    requests = [GenerationRequest(prompt=r["prompt"], seed=i + 1) for i, r in enumerate(rows)]
    async with _resource(emu).async_client() as client:
        ok = 0
        async for item in client.generate_many(requests, concurrency=CONCURRENCY):
            ok += item.ok
    return ok


async def _engine(emu: EmulatorProcess, rows: list[dict[str, Any]], root: str) -> int:
    dataset = load_prompts(rows)
    jobs = [ImageJob.from_row(row, seed=i + 1) for i, row in enumerate(dataset.rows)]
    store = ImageStore(root)
    async with _resource(emu).async_client() as client:
        engine = BatchGenerator(
            client, store, TaskLedger(store), "overhead", GenerationPolicy(concurrency=CONCURRENCY)
        )
        engine.progress_interval = 0
        report = await engine.run(jobs)
    return len(report.successes)


def _dagster(emu: EmulatorProcess, rows: list[dict[str, Any]], root: str) -> int:
    defs = build_image_assets("overhead_images", rows, storage=os.path.join(root, "images"))
    (asset,) = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    home = os.path.join(root, "dagster_home")
    os.makedirs(home, exist_ok=True)
    instance = dg.DagsterInstance.local_temp(tempdir=home)
    result = dg.materialize(
        [asset],
        instance=instance,
        resources={"zimage": _resource(emu)},
        tags={
            "dagster/asset_partition_range_start": rows[0]["key"],
            "dagster/asset_partition_range_end": rows[-1]["key"],
        },
        raise_on_error=False,
        run_config=QUIET,
    )
    images = len(result.get_asset_materialization_events())
    instance.dispose()
    return images


class ThreadProfiles:
    """cProfile in this thread and in every thread started inside the block, each timed by its own
    CPU clock (``time.thread_time``), merged into one ``pstats.Stats`` at the end."""

    def __enter__(self) -> ThreadProfiles:
        self.profiles: list[cProfile.Profile] = []

        def boot(frame: FrameType, event: str, arg: Any) -> None:
            profile = cProfile.Profile(time.thread_time)
            self.profiles.append(profile)
            profile.enable()  # replaces this hook in the new thread

        main = cProfile.Profile(time.thread_time)
        self.profiles.append(main)
        threading.setprofile(boot)
        main.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profiles[0].disable()
        threading.setprofile(None)
        sys.setprofile(None)

    def stats(self) -> pstats.Stats:
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            profile.create_stats()
            if getattr(profile, "stats", None):
                stats.add(profile)
        return stats


#: Named steps of the plugin, found in the profile by (file suffix, function name).
STEPS: dict[str, tuple[str, str]] = {
    "download + decode check + sha256": ("api/_async.py", "download"),
    "decode check (full decode)": ("api/images.py", "decode_image"),
    "wait (status requests, poll schedule)": ("api/_async.py", "wait"),
    "create": ("api/_async.py", "create_task"),
    "store (provenance, file, ledger, thumbnail)": ("zimage_dagster/batch.py", "_store"),
    "thumbnail": ("zimage_dagster/metadata.py", "make_thumbnail"),
    "image file + provenance write": ("zimage_dagster/storage.py", "save"),
    "ledger: record_submitted": ("zimage_dagster/ledger.py", "record_submitted"),
    "ledger: update": ("zimage_dagster/ledger.py", "update"),
    "metadata for Dagster": ("zimage_dagster/metadata.py", "image_metadata"),
    "Dagster: log the materialization event": ("zimage_dagster/assets.py", "on_success"),
    "asset checks (re-read, hash, decode)": ("zimage_dagster/assets.py", "_check_results"),
}


def _label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    if filename == "~":
        return name
    return f"{filename}:{line} {name}"


def profile_tables(stats: pstats.Stats, top: int = 10) -> tuple[str, list[dict[str, Any]], float]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())  # tottime over every function and thread
    ours = [
        (func, entry)
        for func, entry in raw.items()
        if "zimage_dagster/" in func[0] and "/emulator/" not in func[0]
    ]
    by_cum = sorted(ours, key=lambda item: item[1][3], reverse=True)[:top]
    by_self = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    rows = []
    lines = [
        f"Top {top} plugin functions by cumulative CPU (share of all CPU of the profiled "
        f"Dagster run, {total:.2f} s under the profiler):",
        "",
        "| # | function | calls | cumulative CPU | share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, (func, (_, ncalls, _tt, ct, _)) in enumerate(by_cum, 1):
        lines.append(f"| {i} | `{_label(func)}` | {ncalls} | {ct:.2f} s | {ct / total:.1%} |")
        rows.append({"function": _label(func), "calls": ncalls, "cum_s": ct, "share": ct / total})
    lines += [
        "",
        "The plugin's steps (cumulative CPU, all threads; a step's figure includes the steps it "
        "calls):",
        "",
        "| step | function | calls | cumulative CPU | share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for step, (suffix, name) in STEPS.items():
        found = [
            (func, entry)
            for func, entry in raw.items()
            if func[0].endswith(suffix) and func[2] == name
        ]
        calls = sum(entry[1] for _, entry in found)
        cum = sum(entry[3] for _, entry in found)
        lines.append(f"| {step} | `{suffix}:{name}` | {calls} | {cum:.2f} s | {cum / total:.1%} |")
    lines += [
        "",
        f"Top {top} functions of any code by self CPU (where the time is actually spent):",
        "",
        "| # | function | calls | self CPU | share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, (func, (_, ncalls, tt, _ct, _)) in enumerate(by_self, 1):
        lines.append(f"| {i} | `{_label(func)}` | {ncalls} | {tt:.2f} s | {tt / total:.1%} |")
    return "\n".join(lines), rows, total


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 30 if quick else 100
    res = BenchResult(NAME, TITLE)
    cpu: dict[str, float] = {}
    counts: dict[str, int] = {}
    with (
        tempfile.TemporaryDirectory(prefix="zimage-bench-oh-") as tmp,
        emulator(latency_s=0.5) as emu,  # announced 10 s, as the provider does
    ):
        asyncio.run(_client(emu, prompt_rows(4, prefix="warm")))  # imports, connections
        _dagster(emu, prompt_rows(2, prefix="warmd"), os.path.join(tmp, "warm"))
        with Stopwatch() as sw:
            counts["raw httpx"] = asyncio.run(_raw(emu, prompt_rows(n, prefix="r")))
        cpu["raw httpx"] = sw.cpu_s
        with Stopwatch() as sw:
            counts["client"] = asyncio.run(_client(emu, prompt_rows(n, prefix="c")))
        cpu["client"] = sw.cpu_s
        with Stopwatch() as sw:
            counts["engine"] = asyncio.run(
                _engine(emu, prompt_rows(n, prefix="e"), os.path.join(tmp, "engine"))
            )
        cpu["engine"] = sw.cpu_s
        with Stopwatch() as sw:
            counts["dagster"] = _dagster(emu, prompt_rows(n, prefix="d"), os.path.join(tmp, "d"))
        cpu["dagster"] = sw.cpu_s
        with ThreadProfiles() as profiles:
            _dagster(emu, prompt_rows(n, prefix="p"), os.path.join(tmp, "profiled"))
        table, top_rows, profiled_total = profile_tables(profiles.stats())

    per = {k: cpu[k] / max(counts[k], 1) * 1000 for k in cpu}
    base = per["raw httpx"]
    labels = {
        "client": "AsyncZImageClient (validate, poll, capped download, decode check, sha256)",
        "engine": "BatchGenerator (+ ledger, thumbnail, metadata, storage)",
        "dagster": "Dagster run of the image asset (+ events, checks)",
    }
    for key, label in labels.items():
        res.add(f"CPU per image: {label}", per[key], "ms", base, "raw httpx, nothing checked")
    res.notes.append(
        "CPU per image (ms): "
        + ", ".join(f"{k} {per[k]:.1f} ({counts[k]}/{n} images)" for k in per)
        + f". Layers: client - raw = {per['client'] - base:.1f} ms, engine - client = "
        f"{per['engine'] - per['client']:.1f} ms, Dagster - engine = "
        f"{per['dagster'] - per['engine']:.1f} ms."
    )
    res.sections.append(table)
    res.details = {"cpu_ms_per_image": per, "images": counts, "top_cumulative": top_rows}
    res.details["profiled_cpu_s"] = profiled_total
    return res
