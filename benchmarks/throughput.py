"""Benchmark 1, batch throughput: 200 prompts, 2 s tasks, 32 in flight.

Three ways to make the same images against one emulator (its own process; fixed 2 s latency,
concurrency cap 32):

- **dagster**: a real Dagster run of the image asset from ``build_image_assets``: one single-run
  backfill over the 200 partitions (``dg.materialize`` in process, on a temporary sqlite instance),
  resource concurrency 32. Wall time from run start (the run's ``RUN_START`` event, as the issue
  defines it) to the last image stored (the last ``ASSET_MATERIALIZATION`` event), against the
  ideal ``ceil(200/32) x 2 s = 14 s``; a second row adds Dagster's run setup (from the
  ``materialize`` call).
- **engine**: the bare :class:`~zimage_dagster.engine.batch.BatchGenerator`, same settings, no Dagster:
  what Dagster adds is the difference.
- **naive** (the baseline): a hand-written asset (``benchmarks/naive_asset.py``): one Dagster run
  per partition, each in its own process (``dagster asset materialize --partition``), a synchronous
  create and a status request every second; 20 prompts, scaled per image.

The emulator announces ``estimated_time`` = the task latency here (2 s), as the real API announces
10 s for its 6-10 s tasks (a 2 s task announced as 10 s is first polled after 6 s: see the polling
benchmark). Images are the emulator's default, 1024x1024 PNG; a supplementary row runs the engine
on JPEG results, cheaper for both the emulator and the client.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg

from benchmarks._common import ROOT, BenchResult, Stopwatch, emulator, prompt_rows
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorProcess
from zimage_dagster.engine.batch import BatchGenerator
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.outcome import ImageSuccess
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import load_prompts
from zimage_dagster.resource import ZImageResource

NAME = "throughput"
TITLE = "1. Batch throughput (single-run backfill vs one run per partition)"

LATENCY_S = 2.0
CONCURRENCY = 32
TARGET_VS_IDEAL = 1.15
TARGET_SPEEDUP = 10.0
#: Dagster's console logger at WARNING: the benchmark prints its own table.
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def ideal_s(n: int, concurrency: int = CONCURRENCY, latency: float = LATENCY_S) -> float:
    return math.ceil(n / concurrency) * latency


def resource_for(emu: EmulatorProcess) -> ZImageResource:
    return ZImageResource(api_key=emu.api_key, base_url=emu.url, concurrency=CONCURRENCY)


def run_dagster(emu: EmulatorProcess, n: int, workdir: str) -> dict[str, Any]:
    """A single-run backfill of ``n`` partitions of the image asset; returns timings and stats."""
    rows = prompt_rows(n, prefix="d")
    defs = build_image_assets("bench_images", rows, storage=os.path.join(workdir, "images"))
    (asset,) = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    keys = [r["key"] for r in rows]
    home = os.path.join(workdir, "dagster_home")
    os.makedirs(home, exist_ok=True)
    instance = dg.DagsterInstance.local_temp(tempdir=home)
    start = time.time()
    with Stopwatch() as sw:
        result = dg.materialize(
            [asset],
            instance=instance,
            resources={"zimage": resource_for(emu)},
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
            raise_on_error=False,
            run_config=QUIET,
        )
    records = instance.all_logs(result.run_id)
    stamps = [
        r.timestamp
        for r in records
        if r.dagster_event is not None
        and r.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
    ]
    run_start = min(
        (
            r.timestamp
            for r in records
            if r.dagster_event is not None
            and r.dagster_event.event_type == dg.DagsterEventType.RUN_START
        ),
        default=start,
    )
    instance.dispose()
    return {
        "images": len(stamps),
        "success": result.success,
        "to_last_image_s": max(stamps) - start if stamps else math.nan,
        "run_start_to_last_image_s": max(stamps) - run_start if stamps else math.nan,
        "materialize_call_s": sw.wall_s,
        "cpu_s": sw.cpu_s,
    }


def run_engine(
    emu: EmulatorProcess, n: int, workdir: str, prefix: str = "e", asset: str = "bench_engine"
) -> dict[str, Any]:
    """The bare engine over ``n`` jobs; returns timings."""
    dataset = load_prompts(prompt_rows(n, prefix=prefix))
    jobs = [ImageJob.from_row(row, seed=i + 1) for i, row in enumerate(dataset.rows)]
    store = ImageStore(os.path.join(workdir, "images"))
    ledger = TaskLedger(store)
    stored: list[float] = []

    def on_success(_: ImageSuccess) -> None:
        stored.append(time.perf_counter())

    async def go() -> int:
        async with resource_for(emu).async_client() as client:
            engine = BatchGenerator(
                client,
                store,
                ledger,
                asset,
                concurrency=CONCURRENCY,
                on_success=on_success,
                progress_interval=0,
            )
            report = await engine.run(jobs)
            return len(report.failures)

    start = time.perf_counter()
    with Stopwatch() as sw:
        failures = asyncio.run(go())
    return {
        "images": len(stored),
        "failures": failures,
        "to_last_image_s": max(stored) - start if stored else math.nan,
        "run_s": sw.wall_s,
        "cpu_s": sw.cpu_s,
    }


def run_naive(emu: EmulatorProcess, n: int, workdir: str, parallel: int) -> dict[str, Any]:
    """``n`` one-partition runs, each a ``dagster asset materialize`` process, ``parallel`` at once."""
    home = os.path.join(workdir, "naive_home")
    os.makedirs(home, exist_ok=True)
    # Create the instance's databases once: concurrent first runs would race on the migrations.
    dg.DagsterInstance.local_temp(tempdir=home).dispose()
    env = {
        **os.environ,
        "DAGSTER_HOME": home,
        "ZIMAGE_BENCH_URL": emu.url,
        "ZIMAGE_BENCH_KEY": emu.api_key,
        "ZIMAGE_BENCH_OUT": os.path.join(workdir, "naive_images"),
        "ZIMAGE_BENCH_N": str(n),
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    dagster_cli = os.path.join(os.path.dirname(sys.executable), "dagster")

    def one(i: int) -> float:
        begin = time.perf_counter()
        command = [dagster_cli, "asset", "materialize", "-m", "benchmarks.naive_asset"]
        command += ["--select", "naive_image", "--partition", f"n{i:04d}"]
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"naive run {i} failed:\n{proc.stderr[-2000:]}")
        return time.perf_counter() - begin

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        per_run = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    stored = len(os.listdir(env["ZIMAGE_BENCH_OUT"]))
    return {
        "images": stored,
        "wall_s": wall,
        "per_run_s_mean": sum(per_run) / len(per_run),
        "parallel_runs": parallel,
    }


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 64 if quick else 200
    n_naive = 4 if quick else 20
    parallel = 2 * (os.cpu_count() or 1)
    ideal = ideal_s(n)
    res = BenchResult(NAME, TITLE)
    with (
        tempfile.TemporaryDirectory(prefix="zimage-bench-") as tmp,
        emulator(
            latency_s=LATENCY_S, estimated_time=int(LATENCY_S), concurrency_cap=CONCURRENCY
        ) as emu,
    ):
        # Warm-up (imports, first connections), not measured.
        run_engine(emu, 2, os.path.join(tmp, "warm"), prefix="w")
        emu.reset()  # back to the configuration it started with, no tasks, no stats
        dag = run_dagster(emu, n, os.path.join(tmp, "dagster"))
        dag_stats = emu.stats()
        emu.reset()
        eng = run_engine(emu, n, os.path.join(tmp, "engine"))
        eng_stats = emu.stats()
        naive = run_naive(emu, n_naive, os.path.join(tmp, "naive"), parallel)
        jpeg: dict[str, Any] | None = None
        if not quick:
            emu.configure(image_format="jpeg")
            jpeg = run_engine(emu, n, os.path.join(tmp, "engine_jpeg"), prefix="j", asset="ej")

    res.add(
        f"Dagster run, {n} images: run start (RUN_START) to last image stored",
        dag["run_start_to_last_image_s"],
        "s",
        ideal,
        f"ideal ceil({n}/{CONCURRENCY}) x {LATENCY_S:g} s",
        f"<= {TARGET_VS_IDEAL} x ideal",
        dag["run_start_to_last_image_s"] <= TARGET_VS_IDEAL * ideal and dag["images"] == n,
    )
    res.add(
        f"Dagster run, {n} images: materialize() call to last image stored (incl. run setup)",
        dag["to_last_image_s"],
        "s",
        ideal,
        "ideal",
    )
    res.add(
        f"Bare engine (BatchGenerator), {n} images: to last image stored",
        eng["to_last_image_s"],
        "s",
        ideal,
        "ideal",
        f"<= {TARGET_VS_IDEAL} x ideal",
        eng["to_last_image_s"] <= TARGET_VS_IDEAL * ideal and eng["images"] == n,
    )
    res.add(
        "Dagster's share: Dagster run / bare engine",
        dag["to_last_image_s"],
        "s",
        eng["to_last_image_s"],
        "bare engine (same run)",
    )
    naive_per = naive["wall_s"] / naive["images"]
    ours_per = dag["to_last_image_s"] / n
    res.add(
        "Per image: naive one-run-per-partition / ours (speed-up)",
        naive_per,
        "s/image",
        ours_per,
        "ours (Dagster run) per image",
        f">= {TARGET_SPEEDUP:g}x",
        naive_per / ours_per >= TARGET_SPEEDUP,
    )
    if jpeg is not None:
        res.add(
            f"Bare engine, {n} images, JPEG results (cheaper to render and to thumbnail)",
            jpeg["to_last_image_s"],
            "s",
            ideal,
            "ideal",
        )
    res.notes += [
        f"Dagster run: {dag['images']}/{n} images, run start (RUN_START event) to last image "
        f"{dag['run_start_to_last_image_s']:.2f} s; whole materialize call (incl. asset checks "
        f"re-reading every image, teardown) {dag['materialize_call_s']:.2f} s; process CPU "
        f"{dag['cpu_s']:.1f} s ({dag['cpu_s'] / max(n, 1) * 1000:.0f} ms/image).",
        f"Bare engine: {eng['images']}/{n} images, CPU {eng['cpu_s']:.1f} s "
        f"({eng['cpu_s'] / max(n, 1) * 1000:.0f} ms/image).",
        f"Emulator during the Dagster run: peak {dag_stats['peak_concurrent_tasks']} concurrent "
        f"tasks, {dag_stats['requests'].get('task', {})} status answers, "
        f"{dag_stats['requests'].get('create', {})} create answers, requests total "
        f"{dag_stats['requests_total']}; during the engine run: peak "
        f"{eng_stats['peak_concurrent_tasks']}, requests {eng_stats['requests_total']}.",
        f"Naive baseline: {naive['images']} images by {n_naive} `dagster asset materialize` "
        f"processes, {parallel} at a time (2 x cores; they are CPU-bound on start-up), "
        f"{naive['wall_s']:.1f} s in all, {naive['per_run_s_mean']:.1f} s per run on average.",
    ]
    if jpeg is not None:
        res.notes.append(
            f"Same engine run with the emulator serving JPEG (render ~26 ms instead of ~55 ms for "
            f"PNG; the thumbnail decodes JPEG in draft mode): {jpeg['to_last_image_s']:.1f} s, "
            f"CPU {jpeg['cpu_s'] / max(n, 1) * 1000:.0f} ms/image. The gap to PNG is CPU on this "
            "2-core machine, shared by the emulator's renders and the client."
        )
    res.details = {"dagster": dag, "engine": eng, "naive": naive, "engine_jpeg": jpeg}
    res.details["emulator_stats_dagster"] = dag_stats
    if context is not None:
        context["throughput"] = {
            "n": n,
            "wall_s": dag["to_last_image_s"],
            "requests_total": dag_stats["requests_total"],
            "requests": dag_stats["requests"],
        }
    return res
