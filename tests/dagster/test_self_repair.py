"""Damaged ledger entries and provenance records, in real runs against the emulator: the file is
moved aside with a warning naming it, the partition is rebuilt and materialized, and no task is
paid for again when the partition's task can be found (before: a "retryable" internal_error on
every run forever, a blocked partition, or a silent new paid task)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tests.dagster._support import (
    image_asset,
    make_fast,
    resource_for,
    rows,
    run_log_text,
    run_range,
)
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore

DAMAGE = {
    "truncated": b'{"asset":["imgs"],"attempt":1,"error_co',
    "garbage": b"<<< not json >>>",
    "empty object": b"{}",
    "list": b"[]",
    "empty": b"",
    "binary": b"\x00\xff\xfe\x80\x10binary",
}


def _setup(
    tmp_path: Path, emulator: EmulatorServer, n: int
) -> tuple[dg.AssetsDefinition, ImageStore]:
    make_fast(emulator)
    store = ImageStore(tmp_path / "out")
    keyed = [{**row, "key": f"p{i:02d}"} for i, row in enumerate(rows(n))]
    asset = image_asset(build_image_assets("imgs", keyed, storage=str(tmp_path / "out")))
    return asset, store


def test_damaged_files_are_set_aside_and_their_partitions_rebuilt_without_paying(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """Each kind of damage, on the ledger entry of one partition and on the provenance record of
    another; one run repairs them all."""
    n = 2 * len(DAMAGE) + 1
    asset, store = _setup(tmp_path, emulator, n)
    ledger = TaskLedger(store)
    resource = resource_for(emulator)
    with dg.instance_for_test() as instance:
        assert run_range(asset, instance, resource, "p00", f"p{n - 1:02d}").success
        assert emulator.stats()["tasks_created"] == n
        damaged: dict[str, Path] = {}
        for i, (kind, content) in enumerate(DAMAGE.items()):
            for what, key in (("ledger", f"p{i:02d}"), ("provenance", f"p{i + len(DAMAGE):02d}")):
                path = (
                    ledger.path("imgs", key)
                    if what == "ledger"
                    else store.provenance_path("imgs", key)
                )
                Path(path.path).write_bytes(content)
                damaged[f"{what} {kind}"] = Path(path.path)

        result = run_range(asset, instance, resource, "p00", f"p{n - 1:02d}")
        assert result.success
        log = run_log_text(instance, result.run_id)
    for label, file in damaged.items():
        (aside,) = file.parent.glob(f"{file.name}.unreadable-*")
        assert aside.read_bytes() == DAMAGE[label.split(" ", 1)[1]], label
        assert aside.name in log, f"{label}: no warning naming {aside.name} in the run's log"
    assert emulator.stats()["tasks_created"] == n  # re-attached to each task: nothing paid
    for i in range(n):
        entry = ledger.get("imgs", f"p{i:02d}")
        assert entry is not None
        assert entry.status == LedgerStatus.COLLECTED
        found = store.find("imgs", f"p{i:02d}")
        assert found is not None
        assert found.sha256  # a whole provenance record again


def test_a_damaged_entry_of_a_partition_never_generated_does_not_block_it(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    asset, store = _setup(tmp_path, emulator, 3)
    path = Path(TaskLedger(store).path("imgs", "p00").path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{}")  # before: KeyError 'asset', on every run
    with dg.instance_for_test() as instance:
        assert run_range(asset, instance, resource_for(emulator), "p00", "p02").success
    assert emulator.stats()["tasks_created"] == 3
