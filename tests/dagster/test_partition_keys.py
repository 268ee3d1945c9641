"""A partition key that starts with ``.`` is refused, naming the key, on every path that takes a
key: dataset rows (read or made by hand), dynamic partitions added by hand on the instance
(blocking and deferred runs), an op's rows, and, underneath them all, the image store and the
task ledger.

The store's and the ledger's scans skip dot-files: such a key's image and task would be written
and never found again, so a deferred task for it was paid for and never collected. Real runs
against the emulator count its tasks: none is ever created for such a key.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.dagster._support import failure_message, image_asset, make_fast, resource_for, run_range
from zimage_dagster import ZImageResource, build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.keys import InvalidPartitionKeyError, storage_key
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.store import ImageStore, UnsafePathError
from zimage_dagster.ops import build_generate_images_op
from zimage_dagster.prompts import PromptDataset, PromptRow, load_prompts

DOT_KEYS = [".hidden", "..x", ".x|y", ".env"]


@pytest.mark.parametrize("key", DOT_KEYS)
def test_the_store_and_the_ledger_refuse_a_dot_key(tmp_path: Path, key: str) -> None:
    store = ImageStore(tmp_path)
    with pytest.raises(UnsafePathError) as caught:
        store.write_image(("imgs",), key, b"x")
    assert f"partition key {key!r} refused: starts with '.'" in str(caught.value)
    with pytest.raises(UnsafePathError):
        TaskLedger(store).path(("imgs",), key)
    with pytest.raises(InvalidPartitionKeyError):
        storage_key(key)
    assert not any(tmp_path.rglob("*"))


def test_a_dataset_row_with_a_dot_key_is_a_bad_row_naming_it() -> None:
    ds = load_prompts([{"key": ".hidden", "prompt": "a fox"}, {"key": "owl", "prompt": "an owl"}])
    assert ds.keys == ["owl"]
    (problem,) = ds.problems
    assert (problem.field, problem.value) == ("key", ".hidden")
    assert problem.reason.startswith("starts with '.'")


def test_a_dataset_made_by_hand_refuses_a_dot_key(tmp_path: Path) -> None:
    row = PromptRow(".hidden", "a fox", None, None, None)
    with pytest.raises(InvalidPartitionKeyError, match=r"'\.hidden' refused: starts with '\.'"):
        PromptDataset((row,))


@pytest.mark.parametrize("mode", ["blocking", "deferred"])
def test_a_dot_key_added_by_hand_as_a_dynamic_partition_fails_alone_and_costs_nothing(
    emulator: EmulatorServer, tmp_path: Path, mode: str
) -> None:
    make_fast(emulator)
    defs = build_image_assets(
        "imgs",
        [{"key": "fox", "prompt": "a fox", "size": "376x376"}],
        storage=tmp_path / "images",
        partitioning="dynamic",
        mode=mode,
    )
    asset = image_asset(defs)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("imgs_prompts", [".hidden", "fox"])
        result = run_range(asset, instance, resource_for(emulator), ".hidden", "fox")
        assert not result.success
        message = failure_message(result)
        assert "- .hidden: partition key '.hidden' refused: starts with '.'" in message
        assert "fox" not in message.split("\n", 1)[1]  # the good partition went on
        kinds = [e.event_type for e in result.all_events]
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in kinds
    assert emulator.stats()["tasks_created"] == 1  # fox's; never one for .hidden
    assert not [p for p in (tmp_path / "images").rglob("*") if ".hidden" in p.name]


def test_an_op_row_with_a_dot_key_is_left_out_naming_it(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    generate = build_generate_images_op("generate_images", asset_key="ops_images",
                                        storage=str(tmp_path / "images"))  # fmt: skip

    @dg.op
    def rows() -> list[dict[str, str]]:
        return [
            {"key": ".hidden", "prompt": "a fox", "size": "376x376"},
            {"key": "owl", "prompt": "an owl", "size": "376x376"},
        ]

    @dg.job(
        resource_defs={"zimage": ZImageResource(api_key=emulator.api_key, base_url=emulator.url)}
    )
    def images_job() -> None:
        generate(rows())

    with dg.instance_for_test() as instance:
        result = images_job.execute_in_process(instance=instance)
        assert result.success
        warnings = [
            e.message or ""
            for e in instance.all_logs(result.run_id)
            if e.level == 30 and "left out" in (e.message or "")
        ]
    assert len(warnings) == 1
    assert "'.hidden'" in warnings[0]
    assert "starts with '.'" in warnings[0]
    assert emulator.stats()["tasks_created"] == 1
