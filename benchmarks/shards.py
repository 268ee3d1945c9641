"""Benchmark 14, sharded mode (``partitioning="shards"``) side by side with the per-prompt mode.

Each run is a fresh subprocess (``python -m benchmarks.shards MODE N URL KEY ROOT``) that builds the
image asset from ``N`` prompts and materializes all of it in one run (a single-run backfill over
every partition, temporary sqlite instance, 1024x1024 WebP). The emulator (its own process) runs in
load mode, under two conditions:

- **CPU-bound** (as in benchmark 11): 0.2 s tasks announced as 1 s, concurrency 32. Tasks this short
  ask for 160 images/s, more than 2 cores can handle (about 16 ms of run CPU per image plus the
  emulator's): the wall measures the CPU, not the provider;
- **provider-bound** (the provider modelled): task times drawn uniformly in 1.5-3.5 s (mean
  2.5 s), concurrency 96: about 38 images/s, which 2 cores keep up with, so the wall is set by the
  provider: its physical limit is ``N x 2.5 s / 96``.

- **per-image CPU**: the run process's CPU (all threads) over the ``materialize`` call, divided
  by the images stored, run creation included: the client, the engine, the events or manifests;
- **run creation**: the ``materialize`` call to ``RUN_START``;
- **peak RSS**: ``VmHWM`` of the run's process;
- **wall**: ``RUN_START`` to the last materialization, against the physical limit
  ``N x 0.2 s / 32``;
- an extrapolation to 1,000,000 images: ``CPU-hours = 10^6 x per-image CPU / 3600 s``, and
  ``wall = max(10^6 x 0.2 s / concurrency, 10^6 x per-image CPU / cores)`` for one run process.

    python -m benchmarks.run shards            # 1,000 per-prompt, 1,000 and 20,000 sharded
    python -m benchmarks.run shards --quick    # 300 per-prompt, 300 and 2,000 sharded
    python -m benchmarks.shards shards 1000 URL KEY ROOT --profile   # cProfile of one run
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

from benchmarks._common import (
    QUIET,
    BenchResult,
    Stopwatch,
    emulator,
    max_rss_mib,
    process_cpu_s,
    prompt_rows,
    run_child,
    temp_instance,
)

NAME = "shards"
TITLE = "14. Sharded mode against the per-prompt mode (per-image CPU, wall, memory)"
CONCURRENCY = 32
LATENCY_S = 0.2
SHARD_SIZE = 1000
#: The provider-bound condition: task times drawn in this range (seconds), this many in flight.
PROVIDER_LATENCY_S = (1.5, 3.5)
PROVIDER_CONCURRENCY = 96


def child(
    mode: str, n: int, url: str, key: str, root: str, concurrency: int = CONCURRENCY
) -> dict[str, Any]:
    """Runs in the subprocess: one Dagster run over every partition of ``n`` prompts."""
    import dagster as dg

    from zimage_dagster.assets import build_image_assets
    from zimage_dagster.resource import ZImageResource

    rows = prompt_rows(n, prefix=f"{mode[0]}{n}-")
    options: dict[str, Any] = {"partitioning": "shards", "shard_size": SHARD_SIZE}
    with Stopwatch() as load:
        defs = build_image_assets(
            "bench_images",
            rows,
            storage=os.path.join(root, "images"),
            **(options if mode == "shards" else {}),
        )
        (asset,) = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    assert asset.partitions_def is not None
    keys = asset.partitions_def.get_partition_keys()
    instance = temp_instance(root)
    rss_before = max_rss_mib()
    start = time.time()
    with Stopwatch() as sw:
        result = dg.materialize(
            [asset],
            instance=instance,
            resources={
                "zimage": ZImageResource(api_key=key, base_url=url, concurrency=concurrency)
            },
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
            raise_on_error=False,
            run_config=QUIET,
        )
    peak = max_rss_mib()
    started, stored = dg.DagsterEventType.RUN_START, dg.DagsterEventType.ASSET_MATERIALIZATION
    stamps: dict[Any, list[float]] = {started: [], stored: []}
    for record in instance.all_logs(result.run_id, of_type={started, stored}):
        if record.dagster_event is not None:
            stamps[record.dagster_event.event_type].append(record.timestamp)
    instance.dispose()
    images = len(stamps[stored])
    if mode == "shards":
        from zimage_dagster.engine.manifest import read_manifest
        from zimage_dagster.engine.store import ImageStore

        store = ImageStore(os.path.join(root, "images"))
        tables = [read_manifest(store, "bench_images", k) for k in keys]
        images = sum(
            t.column("status").to_pylist().count("stored") for t in tables if t is not None
        )
    run_start = min(stamps[started], default=start)
    return {
        "mode": mode,
        "n": n,
        "partitions": len(keys),
        "images": images,
        "success": result.success,
        "definitions_s": load.wall_s,
        "run_creation_s": run_start - start,
        "run_start_to_last_image_s": max(stamps[stored], default=run_start) - run_start,
        "materialize_wall_s": sw.wall_s,
        "cpu_s": sw.cpu_s,
        "rss_before_run_mib": rss_before,
        "max_rss_mib": peak,
    }


def _one(emu: Any, tmp: str, mode: str, n: int, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    load = os.getloadavg()[0]
    emu.reset()
    emu_before = process_cpu_s(emu.pid) or 0.0
    out = run_child(
        "benchmarks.shards",
        mode,
        str(n),
        emu.url,
        emu.api_key,
        os.path.join(tmp, f"{mode}{n}c{concurrency}"),
        str(concurrency),
        timeout=7200,
    )
    out["concurrency"] = concurrency
    out["emulator_cpu_s"] = (process_cpu_s(emu.pid) or 0.0) - emu_before
    out["tasks_created"] = emu.stats()["tasks_created"]
    out["load_average_at_start"] = load
    out["load_average_at_end"] = os.getloadavg()[0]
    out["per_image_cpu_ms"] = out["cpu_s"] / max(out["images"], 1) * 1000
    out["load_average_1m_5m_15m_at_end"] = list(os.getloadavg())
    return out


def provider_bound(small: int, large: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sharded runs of ``small`` and ``large`` images in the provider-bound condition."""
    with (
        emulator(latency_range_s=list(PROVIDER_LATENCY_S), estimated_time=3, load_mode=True) as emu,
        tempfile.TemporaryDirectory(prefix="zimage-bench-shards-p-") as tmp,
    ):
        return (
            _one(emu, tmp, "shards", small, PROVIDER_CONCURRENCY),
            _one(emu, tmp, "shards", large, PROVIDER_CONCURRENCY),
        )


def add_provider_bound(res: BenchResult, small: dict[str, Any], large: dict[str, Any]) -> None:
    """The provider-bound figures: wall against the provider's limit, CPU per image, RSS."""
    mean = sum(PROVIDER_LATENCY_S) / 2
    n = large["n"]
    physical = n * mean / PROVIDER_CONCURRENCY
    res.add(
        f"Provider-bound: sharded {n:,} images, RUN_START to last shard (target <= 1.10x)",
        large["run_start_to_last_image_s"],
        "s",
        physical,
        f"physical limit ({n:,} x {mean:g} s mean / {PROVIDER_CONCURRENCY})",
        met=large["run_start_to_last_image_s"] <= 1.10 * physical,
    )
    res.add(
        f"Provider-bound: per-image CPU, sharded {n:,} images",
        large["per_image_cpu_ms"],
        "ms",
    )
    res.add(
        f"Provider-bound: peak RSS, sharded {n:,} images (target <= 1.3x of {small['n']:,})",
        large["max_rss_mib"],
        "MiB",
        small["max_rss_mib"],
        f"sharded, {small['n']:,} images",
        met=large["max_rss_mib"] <= 1.3 * small["max_rss_mib"],
    )


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    small, large = (300, 2000) if quick else (1000, 20000)
    res = BenchResult(NAME, TITLE)
    with (
        emulator(latency_s=LATENCY_S, estimated_time=1, load_mode=True) as emu,
        tempfile.TemporaryDirectory(prefix="zimage-bench-shards-") as tmp,
    ):
        assert emu.pid is not None
        per_prompt = _one(emu, tmp, "per_prompt", small)
        sharded_small = _one(emu, tmp, "shards", small)
        sharded_large = _one(emu, tmp, "shards", large)
    provider_small, provider_large = provider_bound(small, large)
    runs = [per_prompt, sharded_small, sharded_large, provider_small, provider_large]
    for item in runs:
        if item["images"] != item["n"] or item["tasks_created"] != item["n"]:
            res.notes.append(
                f"{item['mode']} {item['n']}: {item['images']} images, "
                f"{item['tasks_created']} tasks"
            )
    res.add(
        f"Per-image CPU, sharded, {large:,} images (target <= 30 ms)",
        sharded_large["per_image_cpu_ms"],
        "ms",
        per_prompt["per_image_cpu_ms"],
        f"per-prompt mode, {small:,} images",
        met=sharded_large["per_image_cpu_ms"] <= 30,
    )
    physical = large * LATENCY_S / CONCURRENCY
    res.add(
        f"CPU-bound: sharded {large:,} images, RUN_START to last shard (target <= 1.10x)",
        sharded_large["run_start_to_last_image_s"],
        "s",
        physical,
        f"physical limit ({large} x {LATENCY_S} s / {CONCURRENCY})",
        met=sharded_large["run_start_to_last_image_s"] <= 1.10 * physical,
    )
    cores = os.cpu_count() or 1
    cpu_bound = (
        large * (sharded_large["per_image_cpu_ms"] / 1000 + sharded_large["emulator_cpu_s"] / large)
    ) / cores
    res.add(
        f"CPU-bound: sharded {large:,} images, RUN_START to last shard, against the CPU",
        sharded_large["run_start_to_last_image_s"],
        "s",
        max(physical, cpu_bound),
        f"max(physical, (run + emulator CPU) / {cores} cores)",
    )
    res.add(
        f"CPU-bound: peak RSS, sharded {large:,} images (target <= 1.3x of {small:,})",
        sharded_large["max_rss_mib"],
        "MiB",
        sharded_small["max_rss_mib"],
        f"sharded, {small:,} images",
        met=sharded_large["max_rss_mib"] <= 1.3 * sharded_small["max_rss_mib"],
    )
    res.add(
        f"Run creation, {small:,} prompts: shards ({sharded_small['partitions']} partition(s))",
        sharded_small["run_creation_s"],
        "s",
        per_prompt["run_creation_s"],
        f"per-prompt mode ({small:,} partitions)",
    )
    add_provider_bound(res, provider_small, provider_large)
    per_image_s = sharded_large["per_image_cpu_ms"] / 1000
    cpu_hours = 1e6 * per_image_s / 3600
    wall_h = max(1e6 * LATENCY_S / CONCURRENCY, 1e6 * per_image_s / cores) / 3600
    res.add("1,000,000 images, sharded: CPU (extrapolated)", cpu_hours, "CPU-h")
    res.notes.append(
        f"Extrapolation to 1,000,000 images: CPU = 10^6 x {per_image_s * 1000:.1f} ms = "
        f"{cpu_hours:.1f} CPU-hours (per-prompt mode: "
        f"{1e6 * per_prompt['per_image_cpu_ms'] / 1000 / 3600:.1f}); wall for one run process = "
        f"max(10^6 x {LATENCY_S} s / {CONCURRENCY}, 10^6 x {per_image_s * 1000:.1f} ms / "
        f"{cores} cores) = {wall_h:.1f} h at this emulator latency; in practice the provider's "
        "concurrency and task time set it: 10^6 x task time / concurrency."
    )
    for item in runs:
        res.notes.append(
            f"{item['mode']} {item['n']:,} at concurrency {item['concurrency']} "
            f"({item['partitions']} partitions; load average "
            f"{item['load_average_at_start']:.2f} at start, {item['load_average_at_end']:.2f} at "
            f"end): definitions {item['definitions_s']:.1f} s, run creation "
            f"{item['run_creation_s']:.1f} s, run {item['run_start_to_last_image_s']:.1f} s from "
            f"RUN_START, CPU {item['cpu_s']:.0f} s ({item['per_image_cpu_ms']:.1f} ms per image), "
            f"emulator {item['emulator_cpu_s']:.0f} s, peak RSS {item['max_rss_mib']:.0f} MiB "
            f"({item['rss_before_run_mib']:.0f} before the run)."
        )
    res.details = {f"{r['mode']}_{r['n']}_c{r['concurrency']}": r for r in runs}
    if context is not None:
        context[NAME] = res.details
    return res


if __name__ == "__main__":
    mode_arg, n_arg, url_arg, key_arg, root_arg = sys.argv[1:6]
    conc = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6].isdigit() else CONCURRENCY
    if "--profile" in sys.argv:
        import cProfile
        import pstats
        import threading

        # Every thread (the engine's stores and ledger writes run in worker threads).
        threads: list[cProfile.Profile] = []

        def start_thread_profile(*_: Any) -> None:
            profile = cProfile.Profile()
            threads.append(profile)
            profile.enable()

        threading.setprofile(start_thread_profile)
        profiler = cProfile.Profile()
        out = profiler.runcall(child, mode_arg, int(n_arg), url_arg, key_arg, root_arg, conc)
        threading.setprofile(None)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        for profile in threads:
            profile.disable()
            stats.add(profile)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(90)
        stats.print_callers("compile|getpeername")
        print(json.dumps(out))
    else:
        print(json.dumps(child(mode_arg, int(n_arg), url_arg, key_arg, root_arg, conc)))
