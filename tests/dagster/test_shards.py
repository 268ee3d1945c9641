"""Sharded mode (``partitioning="shards"``), in real runs against the emulator, counting its tasks.

The emulator's load mode (stock images per size) keeps 600-image runs short; the engine's path is
the per-prompt mode's (claims, ledger, decide) so what is asserted here is what sharding adds:
the manifests, the shards' materializations and their metadata, the stable row-to-shard rule.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from dagster._core.launcher import LaunchRunContext
from dagster._core.launcher.sync_in_memory_run_launcher import SyncInMemoryRunLauncher

from tests.dagster._support import image_asset, make_fast, materializations, resource_for, rows
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.manifest import ShardManifest, manifest_schema, read_manifest
from zimage_dagster.engine.shards import group_by_shard, shard_count
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.io_manager import ImageStoreIOManager
from zimage_dagster.spec import ImageAssetSpec

SHARDS = ["shard-00000", "shard-00001", "shard-00002"]


def _fast(emulator: EmulatorServer) -> None:
    make_fast(emulator, load_mode=True, latency_s=0.05)


def _run(
    asset: dg.AssetsDefinition,
    instance: dg.DagsterInstance,
    emulator: EmulatorServer,
    shards: list[str],
    **resource: Any,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset],
        instance=instance,
        resources={"zimage": resource_for(emulator, concurrency=24, **resource)},
        tags={
            "dagster/asset_partition_range_start": shards[0],
            "dagster/asset_partition_range_end": shards[-1],
        },
        raise_on_error=False,
    )


@pytest.mark.heavy
def test_three_shards_of_200_manifests_match_the_files_and_one_event_per_shard(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    _fast(emulator)
    dataset = rows(600)
    asset = image_asset(
        build_image_assets("bulk", dataset, storage=tmp_path, partitioning="shards", shard_size=200)
    )
    assert asset.partitions_def is not None
    assert asset.partitions_def.get_partition_keys() == SHARDS
    store = ImageStore(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(asset, instance, emulator, SHARDS)
        assert result.success
        assert emulator.stats()["tasks_created"] == 600
        mats = materializations(instance, "bulk")
        assert sorted(mats) == SHARDS  # one event per shard, none per image
        assert all(len(m) == 1 for m in mats.values())

        groups = group_by_shard([r["key"] for r in dataset], 3)
        total = 0
        for shard in SHARDS:
            table = read_manifest(store, "bulk", shard)
            assert table is not None
            assert table.schema == manifest_schema()
            assert sorted(table.column("key").to_pylist()) == sorted(groups[shard])
            assert set(table.column("status").to_pylist()) == {"stored"}
            for row in table.to_pylist():
                data = Path(row["path"]).read_bytes()
                assert hashlib.sha256(data).hexdigest() == row["sha256"]
                assert row["task_id"]
                assert row["width"] == row["height"] == 376
            meta = mats[shard][0]
            assert meta["rows"].value == meta["stored"].value == table.num_rows
            assert meta["failed"].value == meta["reused"].value == meta["pending"].value == 0
            assert meta["credits"].value == pytest.approx(0.026 * table.num_rows)
            assert Path(meta["contact_sheet"].value).is_file()
            total += table.num_rows
        assert total == 600

        # The whole output as one dataset, with pyarrow alone.
        whole = pads.dataset(str(tmp_path / "_manifests" / "bulk"), format="parquet").to_table()
        assert whole.num_rows == 600

        # A shard again: every image reused, no task, its manifest says so.
        again = _run(asset, instance, emulator, ["shard-00001"])
        assert again.success
        assert emulator.stats()["tasks_created"] == 600
        table = read_manifest(store, "bulk", "shard-00001")
        assert table is not None
        assert set(table.column("status").to_pylist()) == {"reused"}


def test_a_failed_image_is_in_the_manifest_and_the_table_and_the_shard_still_materializes(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    _fast(emulator)
    dataset = [*rows(19), {"key": "bad", "prompt": "a forbidden fox", "size": "376x376"}]
    asset = image_asset(
        build_image_assets("bulk", dataset, storage=tmp_path, partitioning="shards", shard_size=20)
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(asset, instance, emulator, ["shard-00000"])
        assert result.success
        meta = materializations(instance, "bulk")["shard-00000"][-1]
        assert (meta["stored"].value, meta["failed"].value) == (19, 1)
        records = meta["failed_keys"].value.records
        assert [r.data["key"] for r in records] == ["bad"]
        assert records[0].data["code"] == "content_policy_violation"
        table = read_manifest(ImageStore(tmp_path), "bulk", "shard-00000")
        assert table is not None
        (bad,) = [r for r in table.to_pylist() if r["key"] == "bad"]
        assert bad["status"] == "failed"
        assert bad["error_code"] == "content_policy_violation"
        assert bad["error_message"]
        assert bad["path"] is None
        assert emulator.stats()["tasks_created"] == 20


def test_a_run_that_stored_nothing_fails_its_step_after_materializing_its_shard(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    _fast(emulator)
    dataset = [{"key": "bad", "prompt": "a forbidden fox", "size": "376x376"}]
    asset = image_asset(
        build_image_assets(
            "bulk", dataset, storage=tmp_path, partitioning="shards", retry_policy=None
        )
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(asset, instance, emulator, ["shard-00000"])
        assert not result.success
        meta = materializations(instance, "bulk")["shard-00000"][-1]
        assert meta["failed"].value == 1
        failures = [
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        error = failures[-1].step_failure_data.error
        assert error is not None
        assert "every one of the 1 row(s) failed" in error.message
        assert "content_policy_violation" in error.message


def test_adding_50_rows_moves_no_existing_row(tmp_path: Path) -> None:
    before = rows(600)
    after = [*before, *rows(50, prefix="new")]
    for pinned in (None, 3):
        # With the count derived (shard_size 250: 600 and 650 rows are both 3 shards) or pinned.
        size = 250 if pinned is None else 200
        old = shard_count(len(before), size, pinned)
        new = shard_count(len(after), size, pinned)
        assert old == new == 3
        moved = {
            key: shard
            for shard, keys in group_by_shard([r["key"] for r in after], new).items()
            for key in keys
        }
        for shard, keys in group_by_shard([r["key"] for r in before], old).items():
            assert all(moved[k] == shard for k in keys)
    # The derived count grows past a boundary: rows move only into the new shard.
    grown = group_by_shard([r["key"] for r in after], 4)
    for shard, keys in group_by_shard([r["key"] for r in before], 3).items():
        assert all(k in grown[shard] or k in grown["shard-00003"] for k in keys)
    # And the asset's partitions follow the same rule, from a file that grows.
    csv = tmp_path / "p.csv"
    for dataset in (before, after):
        csv.write_text("key,prompt\n" + "".join(f"{r['key']},{r['prompt']}\n" for r in dataset))
        asset = image_asset(
            build_image_assets("bulk", str(csv), partitioning="shards", shard_count=3)
        )
        assert asset.partitions_def is not None
        assert asset.partitions_def.get_partition_keys() == SHARDS


def test_downstream_loads_a_shard_as_its_manifest_with_lazy_images(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    _fast(emulator)
    images = image_asset(
        build_image_assets("bulk", rows(12), storage=tmp_path, partitioning="shards", shard_size=6)
    )
    seen: dict[str, Any] = {}

    @dg.asset(partitions_def=images.partitions_def, deps=[])
    def summary(bulk: ShardManifest) -> None:
        seen["rows"] = bulk.table.num_rows
        key = bulk.keys()[0]
        seen["bytes"] = bulk.image_bytes(key)
        seen["size"] = bulk.open_image(key).size

    @dg.asset(partitions_def=images.partitions_def)
    def as_table(bulk: pa.Table) -> None:
        seen["table"] = bulk.num_rows

    with dg.DagsterInstance.ephemeral() as instance:
        assert _run(images, instance, emulator, ["shard-00000", "shard-00001"]).success
        result = dg.materialize(
            [images.to_source_asset(), summary, as_table],
            instance=instance,
            partition_key="shard-00001",
            resources={"io_manager": ImageStoreIOManager(root=str(tmp_path))},
        )
        assert result.success
        table = read_manifest(ImageStore(tmp_path), "bulk", "shard-00001")
        assert table is not None
        assert seen["rows"] == seen["table"] == table.num_rows
        assert seen["size"] == (376, 376)
        assert hashlib.sha256(seen["bytes"]).hexdigest() in table.column("sha256").to_pylist()


def test_refused_combinations_say_why() -> None:
    with pytest.raises(ValueError, match="mode: blocking with partitioning: shards"):
        ImageAssetSpec(asset_name="b", prompts=["x"], partitioning="shards", mode="deferred")
    with pytest.raises(ValueError, match="need partitioning: shards"):
        ImageAssetSpec(asset_name="b", prompts=["x"], shard_size=10)
    with pytest.raises(ValueError, match="picks"):
        ImageAssetSpec(asset_name="b", prompts=["x"], partitioning="shards", picks=True)
    with pytest.raises(ValueError, match="variants and regenerate_rejected"):
        ImageAssetSpec(asset_name="b", prompts=["x"], partitioning="shards", variants=2)


def test_a_run_over_several_windows_materializes_each_shard_once_and_budgets_the_whole_run(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zimage_dagster.shards as shards_module

    _fast(emulator)
    monkeypatch.setattr(shards_module, "WINDOW_ROWS", 20)  # 4 shards of ~15 rows: 2+ windows
    dataset = rows(60)
    shards = [f"shard-0000{i}" for i in range(4)]
    groups = group_by_shard([r["key"] for r in dataset], 4)
    windows = shards_module.shard_windows({s: groups.get(s, []) for s in shards}, 20)
    assert len(windows) >= 2
    # A run budget the first window fits in but the run does not: refused before any task.
    refused = image_asset(
        build_image_assets(
            "bulk",
            dataset,
            storage=tmp_path,
            partitioning="shards",
            shard_size=15,
            max_credits_per_run=0.026 * 40,
            retry_policy=None,
        )
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(refused, instance, emulator, shards)
        assert not result.success
        assert emulator.stats()["tasks_created"] == 0
        mats = materializations(instance, "bulk")
        assert sorted(mats) == shards  # every shard's manifest says why (pending: refused)
        assert sum(m[-1]["failed"].value for m in mats.values()) == 60

    asset = image_asset(
        build_image_assets("bulk", dataset, storage=tmp_path, partitioning="shards", shard_size=15)
    )
    store = ImageStore(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(asset, instance, emulator, shards)
        assert result.success
        assert emulator.stats()["tasks_created"] == 60
        mats = materializations(instance, "bulk")
        assert sorted(mats) == shards
        assert all(len(m) == 1 for m in mats.values())
        for shard in shards:
            table = read_manifest(store, "bulk", shard)
            assert table is not None
            assert sorted(table.column("key").to_pylist()) == sorted(groups.get(shard, []))
            assert set(table.column("status").to_pylist()) <= {"stored"}
            assert mats[shard][0]["stored"].value == len(groups.get(shard, []))
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any(f"in {len(windows)} window(s)" in m for m in logs)


class ThreadRunLauncher(SyncInMemoryRunLauncher):
    """Dagster's in-memory launcher, each run on a thread of its own: the backfill daemon's
    iteration runs inside an event loop, which a run's step (``asyncio.run``) must not share; a
    deployed launcher starts each run in a process of its own anyway."""

    def launch_run(self, context: LaunchRunContext) -> None:
        thread = threading.Thread(target=super().launch_run, args=(context,))
        thread.start()
        thread.join()


_BACKFILL_DEFS = """
import os

import dagster as dg

from zimage_dagster import ZImageResource, build_image_assets

rows = [
    {"key": f"p{i}", "prompt": f"a small red fox, study number {i}", "size": "376x376"}
    for i in range(60)
]
defs = dg.Definitions.merge(
    build_image_assets(
        "bulk", rows, storage=os.environ["SHARDS_TEST_STORE"], partitioning="shards",
        shard_size=20, max_partitions_per_run=1,
    ),
    dg.Definitions(
        resources={
            "zimage": ZImageResource(
                api_key=os.environ["SHARDS_TEST_KEY"], base_url=os.environ["SHARDS_TEST_URL"],
                concurrency=24, max_poll_interval=0.25,
            )
        },
        executor=dg.in_process_executor,
    ),
)
"""


@pytest.mark.heavy
def test_a_multi_run_backfill_materializes_each_shard_once_in_a_run_of_its_own(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's own backfill (the daemon's iteration, on a real instance) over the shards of an
    asset with ``max_partitions_per_run=1``: one run per shard, each shard materialized once,
    one task per row."""
    import logging
    import sys
    import time

    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    _fast(emulator)
    monkeypatch.setenv("SHARDS_TEST_STORE", str(tmp_path / "images"))
    monkeypatch.setenv("SHARDS_TEST_KEY", emulator.api_key)
    monkeypatch.setenv("SHARDS_TEST_URL", emulator.url)
    code = tmp_path / "shard_defs.py"
    code.write_text(_BACKFILL_DEFS)
    (tmp_path / "home").mkdir()
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            executable_path=sys.executable,
            python_file=str(code),
            working_directory=str(tmp_path),
            attribute="defs",
        ),
        location_name="shards",
    )
    with (
        dg.instance_for_test(
            overrides={
                "run_launcher": {"module": __name__, "class": "ThreadRunLauncher"},
            },
            temp_dir=str(tmp_path / "home"),
            synchronous_run_coordinator=True,
        ) as instance,
        create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as ws,
    ):
        graph = ws.create_request_context().asset_graph
        instance.add_backfill(
            PartitionBackfill.from_asset_partitions(
                backfill_id="shards",
                asset_graph=graph,
                partition_names=SHARDS,
                asset_selection=[dg.AssetKey("bulk")],
                backfill_timestamp=time.time(),
                tags={},
                dynamic_partitions_store=instance,
                all_partitions=False,
                title=None,
                description=None,
                run_config=None,
            )
        )
        for _ in range(10):
            list(execute_backfill_iteration(ws, logging.getLogger("shards-backfill")))
            backfill = instance.get_backfill("shards")
            assert backfill is not None
            if backfill.status != BulkActionStatus.REQUESTED:
                break
        assert backfill is not None
        assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
        runs = instance.get_runs()
        assert len(runs) == 3
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        ranges = [
            (
                run.tags["dagster/asset_partition_range_start"],
                run.tags["dagster/asset_partition_range_end"],
            )
            for run in runs
        ]
        assert sorted(ranges) == [(shard, shard) for shard in SHARDS]  # one run per shard
        mats = materializations(instance, "bulk")
        assert sorted(mats) == SHARDS
        assert all(len(m) == 1 for m in mats.values())
        assert sum(m[0]["stored"].value for m in mats.values()) == 60
        assert emulator.stats()["tasks_created"] == 60
