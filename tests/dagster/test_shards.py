"""Sharded mode (``partitioning="shards"``), in real runs against the emulator, counting its tasks.

The emulator's load mode (stock images per size) keeps 600-image runs short; the engine's path is
the per-prompt mode's (claims, ledger, decide) so what is asserted here is what sharding adds:
the manifests, the shards' materializations and their metadata, the stable row-to-shard rule.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

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
