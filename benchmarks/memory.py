"""Benchmark 3, memory: peak RSS of a run producing 1000 images against one producing 10.

Each run is a fresh subprocess (``python -m benchmarks.memory N URL KEY ROOT``) that materializes
N partitions of an image asset (1024x1024; JPEG, to keep ``make bench`` within its time: PNG
costs the emulator twice the render time and the client a full decode per thumbnail, while the
decoded image, the memory that matters, is the same 3 MiB) in one Dagster run (``dg.materialize``, single-run
backfill, resource concurrency 32, temporary sqlite instance) and reports its peak RSS
(``VmHWM``; ``ru_maxrss`` would include the parent's RSS at fork time on Linux). The
emulator (its own process) answers quickly (0.05 s tasks, 1 s estimate). Downloads are read under a
byte cap and stored at once, and no decoded pixels outlive the decode (the thumbnail is made in its
thread): what is held at once is bounded by the concurrency (partitions in flight, twice that
waiting to be stored), not by the number of images, so the ratio should stay near 1. A ratio that
grows means something is kept per image, or a bound was lost (d0559ac: decoded pixels waiting for
a store thread, 1.43).
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
    emulator,
    image_asset,
    materialize_rows,
    max_rss_mib,
    prompt_rows,
    run_child,
    temp_instance,
)

NAME = "memory"
TITLE = "3. Memory (peak RSS, 1000 images vs 10)"
TARGET_RATIO = 1.3
SIZE = "1024x1024"


def child(n: int, url: str, key: str, root: str) -> dict[str, Any]:
    """Runs in the subprocess: one Dagster run over ``n`` partitions."""

    rows = prompt_rows(n, prefix=f"m{n}-", size=SIZE)
    asset, instance = image_asset("memory_images", rows, root), temp_instance(root)
    rss_before = max_rss_mib()
    start = time.perf_counter()
    result = materialize_rows(asset, instance, rows, url, key)
    wall = time.perf_counter() - start
    images = len(result.get_asset_materialization_events())
    return {
        "n": n,
        "images": images,
        "success": result.success,
        "wall_s": wall,
        "rss_before_run_mib": rss_before,
        "max_rss_mib": max_rss_mib(),
    }


def _spawn(n: int, url: str, key: str, root: str) -> dict[str, Any]:
    return run_child("benchmarks.memory", str(n), url, key, root)


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    small, large = 10, (200 if quick else 1000)
    res = BenchResult(NAME, TITLE)
    with (
        emulator(latency_s=0.05, estimated_time=1, image_format="jpeg") as emu,
        tempfile.TemporaryDirectory(prefix="zimage-bench-mem-") as tmp,
    ):
        base = _spawn(small, emu.url, emu.api_key, os.path.join(tmp, "small"))
        big = _spawn(large, emu.url, emu.api_key, os.path.join(tmp, "large"))
    for item in (base, big):
        if item["images"] != item["n"]:
            res.notes.append(f"only {item['images']} of {item['n']} images were materialized")
    ratio = big["max_rss_mib"] / base["max_rss_mib"]
    res.add(
        f"Peak RSS, one run of {large} images",
        big["max_rss_mib"],
        "MiB",
        base["max_rss_mib"],
        f"{small} images",
        f"<= {TARGET_RATIO}",
        ratio <= TARGET_RATIO and big["images"] == large,
    )
    growth = big["max_rss_mib"] - big["rss_before_run_mib"]
    base_growth = base["max_rss_mib"] - base["rss_before_run_mib"]
    res.notes.append(
        f"RSS before the run (imports, definitions): {base['rss_before_run_mib']:.0f} / "
        f"{big['rss_before_run_mib']:.0f} MiB; growth during the run: {base_growth:.0f} MiB for "
        f"{small} images, {growth:.0f} MiB for {large} "
        f"({(growth - base_growth) / max(large - small, 1) * 1024:.0f} KiB per extra image)."
    )
    res.notes.append(
        f"Run times: {base['wall_s']:.1f} s for {small}, {big['wall_s']:.1f} s for {large} "
        f"({large / big['wall_s']:.1f} images/s, 1024x1024 JPEG)."
    )
    res.details = {"small": base, "large": big}
    return res


if __name__ == "__main__":
    n_arg, url_arg, key_arg, root_arg = sys.argv[1:5]
    print(json.dumps(child(int(n_arg), url_arg, key_arg, root_arg)))
