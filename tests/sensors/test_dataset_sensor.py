"""The prompt-dataset sensor: new keys, changed prompts, removed keys, a small cursor."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.jobs import plan_job
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import load_prompts
from zimage_dagster.sensors import REASON_TAG, build_prompt_dataset_sensor

from ._support import Tick, make_defs, make_resource, make_spec, tick


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["key", "prompt", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    stamp = time.time() + len(rows) + hash(json.dumps(rows)) % 1000  # a distinct mtime per content
    os.utime(path, (stamp, stamp))


ROWS: list[dict[str, object]] = [
    {"key": "fox", "prompt": "a red fox", "seed": 1},
    {"key": "owl", "prompt": "an owl", "seed": 2},
    {"key": "elk", "prompt": "an elk", "seed": 3},
]


def apply(result: Tick, instance: dg.DagsterInstance) -> None:
    """What the daemon does with a result's partition requests and events."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events:
        instance.report_runless_asset_event(event)


def test_new_changed_and_removed_keys(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    data = tmp_path / "prompts.csv"
    write_csv(data, ROWS)
    spec = make_spec(tmp_path / "out", str(data), partitioning="dynamic")
    sensor = build_prompt_dataset_sensor(spec, "cards_job")
    name = spec.partitions_name

    first = tick(sensor, instance)
    [add] = first.dynamic_partitions_requests
    assert (add.partitions_def_name, list(add.partition_keys)) == (name, ["fox", "owl", "elk"])
    assert {r.partition_key for r in first.run_requests} == {"fox", "owl", "elk"}
    assert {r.tags[REASON_TAG] for r in first.run_requests} == {"new"}
    apply(first, instance)
    unchanged = tick(sensor, instance, cursor=first.cursor)
    assert unchanged.skip_reason is not None
    assert unchanged.skip_reason == "dataset unchanged"

    # Generate them for real (blocking mode), so that storage knows what was made.
    defs = make_defs(spec, make_resource(emulator))
    job = defs.resolve_job_def("cards_job")
    for key in ("fox", "owl", "elk"):
        assert job.execute_in_process(instance=instance, partition_key=key).success

    # owl's prompt changes, elk leaves, yak arrives.
    write_csv(
        data,
        [
            ROWS[0],
            {"key": "owl", "prompt": "a snowy owl", "seed": 2},
            {"key": "yak", "prompt": "a yak", "seed": 9},
        ],
    )
    second = tick(sensor, instance, cursor=unchanged.cursor)
    [add] = second.dynamic_partitions_requests
    assert list(add.partition_keys) == ["yak"]
    reasons = {r.partition_key: r.tags[REASON_TAG] for r in second.run_requests}
    assert reasons == {"owl": "changed", "yak": "new"}
    owl_run = next(r for r in second.run_requests if r.partition_key == "owl")
    [removed] = second.asset_events
    assert removed.partition == "elk"
    assert removed.metadata["zimage_status"].value == "removed_from_dataset"
    apply(second, instance)
    assert "elk" in instance.get_dynamic_partitions(name)  # never deleted

    # The file changes again (owl not yet regenerated): the same run key, elk not reported again.
    write_csv(
        data,
        [
            ROWS[0],
            {"key": "owl", "prompt": "a snowy owl", "seed": 2},
            {"key": "yak", "prompt": "a yak", "seed": 9},
            {"key": "ant", "prompt": "an ant", "seed": 4},
        ],
    )
    third = tick(sensor, instance, cursor=second.cursor)
    assert not third.asset_events
    assert owl_run.run_key in {r.run_key for r in third.run_requests}
    # Regenerate owl: now it matches the dataset and is no longer requested.
    assert job.execute_in_process(instance=instance, partition_key="owl").success
    os.utime(data, (time.time() + 5000, time.time() + 5000))
    fourth = tick(sensor, instance, cursor=third.cursor)
    assert "owl" not in {r.partition_key for r in fourth.run_requests}


def test_a_folder_of_files(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    write_csv(folder / "a.csv", ROWS[:2])
    (folder / "b.jsonl").write_text(json.dumps({"key": "yak", "prompt": "a yak"}) + "\n")
    (folder / "notes.txt").write_text("not a dataset")
    spec = make_spec(tmp_path / "out", str(folder), partitioning="dynamic")
    sensor = build_prompt_dataset_sensor(spec, "cards_job")
    first = tick(sensor, instance)
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == ["fox", "owl", "yak"]
    apply(first, instance)
    (folder / "c.jsonl").write_text(json.dumps({"key": "emu", "prompt": "an emu"}) + "\n")
    second = tick(sensor, instance, cursor=first.cursor)
    assert list(second.dynamic_partitions_requests[0].partition_keys) == ["emu"]


def test_cursor_stays_small_for_10000_rows(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    data = tmp_path / "big.csv"
    write_csv(
        data, [{"key": f"p{i:05d}", "prompt": f"picture {i}", "seed": i + 1} for i in range(10_000)]
    )
    spec = make_spec(tmp_path / "out", str(data), partitioning="dynamic")
    sensor = build_prompt_dataset_sensor(spec, "cards_job", max_run_requests=500)
    t0 = time.monotonic()
    first = tick(sensor, instance)
    elapsed = time.monotonic() - t0
    assert len(first.dynamic_partitions_requests[0].partition_keys) == 10_000
    assert len(first.run_requests) == 500
    assert first.cursor is not None
    assert len(first.cursor) < 80, first.cursor
    assert json.loads(first.cursor)["backlog"] is True
    apply(first, instance)
    second = tick(sensor, instance, cursor=first.cursor)  # the backlog goes on, file unchanged
    assert len(second.run_requests) == 500
    first_keys = {r.partition_key for r in first.run_requests}
    assert not first_keys & {r.partition_key for r in second.run_requests}
    assert len(second.cursor or "") < 80
    print(f"\n10,000-row dataset: first tick {elapsed:.2f} s, cursor {len(first.cursor)} chars")


def test_needs_dynamic_partitions(tmp_path: Path) -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError):
        build_prompt_dataset_sensor(make_spec(tmp_path), "cards_job")


def test_a_retryable_failure_is_wanted_again_a_fixable_one_is_not(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The sensor asks the one decision: a row whose task failed with a retryable error (the
    provider's outage) is requested again; one rejected with a fixable error is not (before,
    any failed entry counted as rejected, and an outage left the row ungenerated for good)."""
    data = tmp_path / "prompts.csv"
    write_csv(data, ROWS)
    spec = make_spec(tmp_path / "out", str(data), partitioning="dynamic")
    ledger = TaskLedger(ImageStore(spec.storage_root))
    rows = {row.key: row for row in load_prompts(str(data))}
    for key, code in (("fox", "service_error"), ("owl", "content_policy_violation")):
        job = plan_job(ledger, spec.asset_key.path, key, rows[key])
        task = f"task-unified-1796000000-{key}aaaaa"
        ledger.record_submitted(
            spec.asset_key.path, key, task_id=task, request=job.request.to_wire()
        )
        ledger.mark_failed(spec.asset_key.path, key, task, code, "it failed")
    sensor = build_prompt_dataset_sensor(spec, "cards_job")
    first = tick(sensor, instance)
    reasons = {r.partition_key: r.tags[REASON_TAG] for r in first.run_requests}
    assert reasons == {"fox": "changed", "elk": "new"}  # owl stays rejected
