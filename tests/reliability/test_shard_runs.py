"""Sharded mode under a kill and under two runs at once: the per-row guarantees of the engine
(ledger first, claims) hold inside shards. Runs are real processes (``_child_run``) against the
emulator in its own process, counting its tasks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.dagster._support import image_asset
from tests.reliability._support import (
    ASSET,
    check_resumed,
    dataset,
    file_marks,
    kill_when,
    resource,
    snapshot,
    start_child,
    wait_for,
    write_dagster_home,
)
from tests.reliability.conftest import S3
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator.server import EmulatorProcess
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.manifest import read_manifest
from zimage_dagster.engine.store import ImageStore

pytestmark = pytest.mark.heavy

SHARDS = ["shard-00000", "shard-00001", "shard-00002"]
OPTIONS = {"partitioning": "shards", "shard_size": 20}


def _spec(
    emulator: EmulatorProcess, rows: list[dict[str, Any]], storage: str, **more: Any
) -> dict[str, Any]:
    return {
        "rows": rows,
        "storage": storage,
        "key": emulator.api_key,
        "url": emulator.url,
        "start": SHARDS[0],
        "end": SHARDS[-1],
        "resource": {"concurrency": 6, "max_poll_interval": 0.5},
        "options": OPTIONS,
        **more,
    }


def _manifest_keys(store: ImageStore) -> dict[str, str]:
    """``key -> status`` over the three shards' manifests."""
    out: dict[str, str] = {}
    for shard in SHARDS:
        table = read_manifest(store, ASSET, shard)
        assert table is not None, shard
        out.update(
            zip(table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True)
        )
    return out


def test_a_killed_shard_run_resumes_without_paying_twice(
    emulator_proc: EmulatorProcess, tmp_path: Path
) -> None:
    n = 60
    rows = dataset(n)
    keys = [r["key"] for r in rows]
    keys_by_prompt = {r["prompt"]: r["key"] for r in rows}
    emulator_proc.configure(latency_range_s=[0.4, 1.2], estimated_time=1, random_seed=3)
    storage = str(tmp_path / "images")
    home = write_dagster_home(tmp_path / "home")
    store = ImageStore(storage)
    ledger = TaskLedger(store)

    def collected() -> int:
        return sum(e.status == LedgerStatus.COLLECTED for e in ledger.iter_entries(ASSET))

    proc = start_child(_spec(emulator_proc, rows, storage), home)
    kill_when(
        proc,
        lambda: collected() >= 15 and emulator_proc.stats()["tasks_created"] > collected() + 3,
        timeout=120,
        what="a third of the images to be stored, with tasks in flight",
    )
    snap = snapshot(emulator_proc, store, keys)
    assert snap.open > 0, "the kill found no task in flight: nothing to resume"

    asset = image_asset(
        build_image_assets(ASSET, rows, storage=storage, retry_policy=None, **OPTIONS)
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            [asset],
            instance=instance,
            resources={"zimage": resource(emulator_proc, concurrency=6)},
            tags={
                "dagster/asset_partition_range_start": SHARDS[0],
                "dagster/asset_partition_range_end": SHARDS[-1],
            },
            raise_on_error=False,
        )
        assert result.success
    tasks = emulator_proc.tasks()
    entries = {e.partition_key: e for e in ledger.iter_entries(ASSET)}
    # Stored images untouched, live tasks re-attached, new tasks only for rows without one.
    check_resumed(
        snap,
        {t["id"] for t in tasks},
        entries,
        file_marks(store, keys),
        keys_by_prompt,
        {t["id"]: t for t in tasks},
    )
    # One task per row, plus only those created in the instant between a create's answer and
    # its ledger write that the kill interrupted.
    assert emulator_proc.stats()["tasks_created"] == n + len(snap.window_orphans)
    statuses = _manifest_keys(store)
    assert sorted(statuses) == sorted(keys)
    assert set(statuses.values()) <= {"stored", "reused"}
    # Rows the killed run had stored are reused by the resumed run.
    assert all(statuses[k] == "reused" for k in snap.files)


def test_two_runs_over_the_same_shards_on_s3_create_one_task_per_row(
    emulator_proc: EmulatorProcess, s3: S3, tmp_path: Path
) -> None:
    n = 30
    rows = dataset(n)
    emulator_proc.configure(latency_range_s=[0.3, 0.8], estimated_time=1, random_seed=5)
    storage = f"s3://{s3.make_bucket()}/images"
    spec = _spec(
        emulator_proc,
        rows,
        storage,
        storage_options=s3.storage_options,
        options={"partitioning": "shards", "shard_size": 10},
    )
    # Two machines: each its own Dagster instance, one S3 bucket.
    procs = [start_child(spec, write_dagster_home(tmp_path / f"home{i}")) for i in range(2)]
    started = time.monotonic()
    wait_for(lambda: all(p.poll() is not None for p in procs), 300, "both runs to end")
    assert [p.returncode for p in procs] == [0, 0], time.monotonic() - started
    assert emulator_proc.stats()["tasks_created"] == n
    store = ImageStore(storage, s3.storage_options)
    statuses = _manifest_keys(store)
    assert sorted(statuses) == sorted(r["key"] for r in rows)
    assert set(statuses.values()) <= {"stored", "reused"}
