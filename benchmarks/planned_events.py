"""Benchmark 13, Dagster's planned events: one per partition (the default) or one per run
(``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=1``), and what the second loses.

The same run twice, in this process (``dg.materialize`` over every partition, sqlite instance of
its own each time), once per setting: ``N`` prompts of which one in 20 is refused by the
emulator's moderation rule (a fixable task error: that partition fails, the others are stored, the
run ends failed). For each: run creation (the ``materialize`` call to ``RUN_START``), the planned
events written, and the partitions Dagster's own status (the asset status cache the UI reads)
reports as materialized and as failed.

Why the second setting loses the failed partitions (Dagster 1.13, read in its source): the failed
and in-progress partitions are computed from the latest planned event *of each partition* without
a later materialization (``get_latest_asset_partition_materialization_attempts_without_
materializations``, which keeps rows whose ``partition`` is set); a run-wide planned event has no
partition. The other way to mark a partition failed, an ``ASSET_FAILED_TO_MATERIALIZE`` event, is
dropped by storages whose ``can_store_asset_failure_events`` is False: every storage that ships
with open-source Dagster (sqlite, postgres, mysql).

    python -m benchmarks.run planned_events
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import dagster as dg

from benchmarks._common import (
    BenchResult,
    emulator,
    image_asset,
    materialize_rows,
    prompt_rows,
    temp_instance,
)
from benchmarks.throughput import PLANNED_SUBSET_ENV, _env

NAME = "planned_events"
TITLE = "13. Planned events: one per partition (default) or one per run, and the failed status"
REFUSED_WORD = "refused-by-rule"


def _rows(n: int) -> list[dict[str, Any]]:
    rows = prompt_rows(n, prefix="pe")
    for row in rows[::20]:
        row["prompt"] += f" {REFUSED_WORD}"
    return rows


def _one_run(url: str, key: str, n: int, root: str) -> dict[str, Any]:
    from dagster._core.storage.partition_status_cache import (
        get_and_update_asset_status_cache_value,
    )

    rows = _rows(n)
    asset, instance = image_asset("planned_images", rows, root), temp_instance(root)
    start = time.time()
    result = materialize_rows(asset, instance, rows, url, key)
    planned = instance.all_logs(
        result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    )
    run_start = min(
        r.timestamp for r in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_START)
    )
    partitions_def = asset.partitions_def
    status = get_and_update_asset_status_cache_value(instance, asset.key, partitions_def)
    assert status is not None
    assert partitions_def is not None
    failed = sorted(
        status.deserialize_failed_partition_subsets(partitions_def).get_partition_keys()
    )
    materialized = status.deserialize_materialized_partition_subsets(partitions_def)
    run_status = instance.get_run_by_id(result.run_id)
    instance.dispose()
    return {
        "run_creation_s": run_start - start,
        "planned_events": len(planned),
        "run_status": run_status.status.value if run_status else None,
        "materialized": len(materialized),
        "failed": failed,
        "refused": [r["key"] for r in rows if REFUSED_WORD in r["prompt"]],
    }


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 100 if quick else 300
    res = BenchResult(NAME, TITLE)
    load = os.getloadavg()[0]
    failure_rules = [{"pattern": REFUSED_WORD, "code": "content_policy_violation"}]
    with (
        emulator(
            latency_s=0.2, estimated_time=1, load_mode=True, failure_rules=failure_rules
        ) as emu,
        tempfile.TemporaryDirectory(prefix="zimage-bench-planned-") as tmp,
    ):
        per_partition = _one_run(emu.url, emu.api_key, n, os.path.join(tmp, "per_partition"))
        emu.reset()
        with _env(PLANNED_SUBSET_ENV, "1"):
            per_run = _one_run(emu.url, emu.api_key, n, os.path.join(tmp, "per_run"))
    refused = len(per_partition["refused"])
    res.add(
        f"Run creation, {n} partitions, {PLANNED_SUBSET_ENV}=1",
        per_run["run_creation_s"],
        "s",
        per_partition["run_creation_s"],
        "one planned event per partition (default)",
    )
    for label, item in (("per partition (default)", per_partition), ("per run", per_run)):
        res.add(
            f"Failed partitions in Dagster's status, planned events {label}",
            len(item["failed"]),
            "partitions",
            refused,
            "partitions whose task was refused (fixable error)",
            "= refused",
            item["failed"] == item["refused"],
        )
        res.notes.append(
            f"Planned events {label}: {item['planned_events']} planned events, run creation "
            f"{item['run_creation_s']:.2f} s, run {item['run_status']}, {item['materialized']} "
            f"partitions materialized, {len(item['failed'])} failed in Dagster's status "
            f"(refused: {refused})."
        )
    res.notes.append(f"Load average {load:.2f} at the start; {n} partitions, 0.2 s tasks.")
    res.details = {"per_partition": per_partition, "per_run": per_run}
    return res
