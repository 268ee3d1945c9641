"""Benchmark 14, candidates: a ``variants=4`` run of 200 prompts (800 tasks) against the physical
limit of its own tasks.

One Dagster run (a single-run backfill of the image asset built with ``variants=4``, resource
concurrency 32) against the emulator drawing each task's latency uniformly in 1.5-3 s (announcing
10 s, concurrency cap 32, as benchmark 1's fastest regime, where overhead weighs most). Wall
time from the ``materialize`` call to the last partition materialized (a partition is
materialized when its 4th image is stored), against the physical limit: the run's own 800
tasks scheduled greedily over the 32 slots in creation order
(:func:`benchmarks.throughput.physical_limit_s`). Target: within 1.10x. ``--quick``: 64 prompts.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from benchmarks._common import BenchResult, emulator
from benchmarks.throughput import (
    ANNOUNCED_S,
    CONCURRENCY,
    REGIMES,
    TARGET_VS_PHYSICAL,
    physical_limit_s,
    run_dagster,
)

NAME = "candidates"
TITLE = "14. Candidates (variants=4): 200 prompts, 800 tasks, one run"

VARIANTS = 4


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 64 if quick else 200
    regime = REGIMES[0]
    res = BenchResult(NAME, TITLE)
    with (
        tempfile.TemporaryDirectory(prefix="zimage-bench-") as tmp,
        emulator(
            latency_range_s=list(regime), estimated_time=ANNOUNCED_S, concurrency_cap=CONCURRENCY
        ) as emu,
    ):
        run_dagster(emu, 2, os.path.join(tmp, "warm"), prefix="w", variants=VARIANTS)  # warm-up
        emu.reset()
        dag = run_dagster(emu, n, os.path.join(tmp, "run"), variants=VARIANTS)
        tasks, stats = emu.tasks(), emu.stats()
    physical = physical_limit_s(tasks)
    wall = dag["to_last_image_s"]
    created = stats["tasks_created"]
    ok = dag["images"] == n and created == VARIANTS * n
    res.add(
        f"{regime[0]:g}-{regime[1]:g} s tasks, {n} prompts x {VARIANTS} = {created} tasks: "
        "Dagster run (materialize call to last partition materialized)",
        wall,
        "s",
        physical,
        "physical limit (greedy schedule of the run's own latency draws over 32 slots)",
        f"<= {TARGET_VS_PHYSICAL} x physical",
        ok and wall <= TARGET_VS_PHYSICAL * physical,
    )
    res.details = {"dagster": dag, "physical_s": physical, "tasks_created": created}
    res.notes.append(
        f"{dag['images']} partitions materialized, {created} tasks created "
        f"(expected {n} and {VARIANTS * n})."
    )
    return res
