"""Benchmark 11, the per-prompt mode's ceiling: one Dagster run over 1,000 and over 10,000
partitions (one partition per prompt), where its fixed costs per partition show.

Each run is a fresh subprocess (``python -m benchmarks.ceiling N URL KEY ROOT``) that builds the
image asset from ``N`` prompts with ``build_image_assets`` and materializes all of them in one run
(``dg.materialize`` over the whole range: a single-run backfill, resource concurrency 32,
temporary sqlite instance, 1024x1024 WebP). The emulator (its own process) runs in load mode (a
pool of stock images per size, so its renders do not bound the run) with 0.2 s tasks announced as
1 s. Reported per run:

- **run creation**: the ``materialize`` call to ``RUN_START`` (Dagster plans the run and writes one
  "materialization planned" event per partition);
- **definitions**: building the asset from the prompts (what a code location does on load);
- **per-image CPU**: the process's CPU (all threads) over the ``materialize`` call, divided by the
  images stored, run creation included; and the emulator's CPU per task;
- **peak RSS**: ``VmHWM`` of the run's process;
- the run from ``RUN_START`` to the last image stored, against the physical limit
  (``N x 0.2 s / 32``).

    python -m benchmarks.run ceiling           # 1,000 and 10,000 partitions (~25 min)
    python -m benchmarks.run ceiling --quick   # 200 and 1,000
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

from benchmarks._common import (
    BenchResult,
    Stopwatch,
    emulator,
    image_asset,
    materialize_rows,
    max_rss_mib,
    process_cpu_s,
    prompt_rows,
    run_child,
    temp_instance,
)

NAME = "ceiling"
TITLE = "11. The per-prompt mode's ceiling (one run over 1,000 and 10,000 partitions)"
CONCURRENCY = 32
LATENCY_S = 0.2


def child(n: int, url: str, key: str, root: str) -> dict[str, Any]:
    """Runs in the subprocess: one Dagster run over ``n`` partitions."""
    import dagster as dg

    import zimage_dagster.assets  # noqa: F401 - imported before the definitions are timed

    rows = prompt_rows(n, prefix=f"c{n}-")
    with Stopwatch() as load:
        asset = image_asset("ceiling_images", rows, root)
    instance = temp_instance(root)
    rss_before = max_rss_mib()
    start = time.time()
    with Stopwatch() as sw:
        result = materialize_rows(asset, instance, rows, url, key, CONCURRENCY)
    peak = max_rss_mib()
    started, stored = dg.DagsterEventType.RUN_START, dg.DagsterEventType.ASSET_MATERIALIZATION
    stamps: dict[Any, list[float]] = {started: [], stored: []}
    for record in instance.all_logs(result.run_id, of_type={started, stored}):
        if record.dagster_event is not None:
            stamps[record.dagster_event.event_type].append(record.timestamp)
    instance.dispose()
    images = len(stamps[stored])
    run_start = min(stamps[started], default=start)
    return {
        "n": n,
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


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    sizes = (200, 1000) if quick else (1000, 10000)
    res = BenchResult(NAME, TITLE)
    runs: dict[int, dict[str, Any]] = {}
    with (
        emulator(latency_s=LATENCY_S, estimated_time=1, load_mode=True) as emu,
        tempfile.TemporaryDirectory(prefix="zimage-bench-ceiling-") as tmp,
    ):
        assert emu.pid is not None
        for n in sizes:
            load = os.getloadavg()[0]
            emu.reset()
            emu_before = process_cpu_s(emu.pid) or 0.0
            runs[n] = run_child(
                "benchmarks.ceiling",
                str(n),
                emu.url,
                emu.api_key,
                os.path.join(tmp, str(n)),
                timeout=7200,
            )
            runs[n]["emulator_cpu_s"] = (process_cpu_s(emu.pid) or 0.0) - emu_before
            runs[n]["tasks_created"] = emu.stats()["tasks_created"]
            runs[n]["load_average_at_start"] = load
    small, large = (runs[n] for n in sizes)
    for item in (small, large):
        if item["images"] != item["n"] or item["tasks_created"] != item["n"]:
            res.notes.append(
                f"{item['n']} partitions: {item['images']} images, {item['tasks_created']} tasks"
            )
    per_image = {n: runs[n]["cpu_s"] / max(runs[n]["images"], 1) * 1000 for n in sizes}
    per_planned = {n: runs[n]["run_creation_s"] / n * 1000 for n in sizes}
    res.add(
        f"Run creation, {sizes[1]:,} partitions (materialize call to RUN_START)",
        large["run_creation_s"],
        "s",
        small["run_creation_s"],
        f"{sizes[0]:,} partitions",
    )
    res.add(
        f"Per-image CPU of the run's process, {sizes[1]:,} partitions",
        per_image[sizes[1]],
        "ms",
        per_image[sizes[0]],
        f"{sizes[0]:,} partitions",
    )
    res.add(
        f"Peak RSS of the run's process, {sizes[1]:,} partitions",
        large["max_rss_mib"],
        "MiB",
        small["max_rss_mib"],
        f"{sizes[0]:,} partitions",
    )
    for n in sizes:
        item = runs[n]
        physical = n * LATENCY_S / CONCURRENCY
        res.add(
            f"{n:,} partitions: run from RUN_START to last image stored",
            item["run_start_to_last_image_s"],
            "s",
            physical,
            f"physical limit ({n} x {LATENCY_S} s / {CONCURRENCY})",
        )
        res.notes.append(
            f"{n:,} partitions (load average {item['load_average_at_start']:.2f} at its start): "
            f"definitions {item['definitions_s']:.1f} s; run creation {item['run_creation_s']:.1f} s "
            f"({per_planned[n]:.1f} ms per partition); run {item['run_start_to_last_image_s']:.1f} s "
            f"from RUN_START; {item['images']} images; CPU {item['cpu_s']:.0f} s in the run's "
            f"process ({per_image[n]:.0f} ms per image), {item['emulator_cpu_s']:.1f} s in the "
            f"emulator ({item['emulator_cpu_s'] / n * 1000:.1f} ms per task, load mode); peak RSS "
            f"{item['max_rss_mib']:.0f} MiB ({item['rss_before_run_mib']:.0f} MiB before the run)."
        )
    res.details = {str(n): runs[n] for n in sizes}
    return res


if __name__ == "__main__":
    n_arg, url_arg, key_arg, root_arg = sys.argv[1:5]
    print(json.dumps(child(int(n_arg), url_arg, key_arg, root_arg)))
