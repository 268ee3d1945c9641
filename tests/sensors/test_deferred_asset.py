"""Deferred mode as one option of the factory: a materialization submits and ends; the sensor's
collect runs materialize every partition, each task created once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from zimage_dagster import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.collect import COLLECT_TAG
from zimage_dagster.engine.ledger import LedgerStatus

from ._support import (
    ROWS,
    execute_request,
    ledger_of,
    make_resource,
    make_spec,
    tick,
    wait_terminal,
)


def test_deferred_asset_submits_then_the_sensor_collects(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    resource = make_resource(emulator)
    images = build_image_assets("cards", ROWS, storage=str(tmp_path), mode="deferred")
    defs = dg.Definitions.merge(images, dg.Definitions(resources={"zimage": resource}))
    assert {s.name for s in defs.sensors or []} == {"cards_task_status", "cards_review_sensor"}
    job = defs.resolve_job_def("cards_job")
    key = dg.AssetKey("cards")

    submit = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "fox",
            "dagster/asset_partition_range_end": "elk",
        },
    )
    assert submit.success
    # The step ended without waiting: nothing materialized, every task in the ledger.
    assert instance.get_materialized_partitions(key) == set()
    ledger = ledger_of(make_spec(tmp_path))
    entries = {e.partition_key: e for e in ledger.iter_entries(("cards",))}
    assert set(entries) == {"fox", "owl", "elk"}
    assert all(e.status == LedgerStatus.SUBMITTED for e in entries.values())
    assert emulator.stats()["tasks_created"] == 3

    wait_terminal(emulator, 3)
    result = tick(defs.get_sensor_def("cards_task_status"), instance, resource)
    [request] = result.run_requests  # one collect run for the three finished tasks
    run = execute_request(job, instance, request)
    assert run.success
    assert run.dagster_run.tags[COLLECT_TAG] == request.tags[COLLECT_TAG]
    assert run.dagster_run.tags["dagster/asset_partition_range_start"] == "fox"
    assert run.dagster_run.tags["dagster/asset_partition_range_end"] == "elk"

    assert instance.get_materialized_partitions(key) == {"fox", "owl", "elk"}
    records = instance.fetch_materializations(key, limit=10).records
    task_ids = {
        r.asset_materialization.metadata["task_id"].value
        for r in records
        if r.asset_materialization
    }
    assert task_ids == {e.task_id for e in entries.values()}
    assert emulator.stats()["tasks_created"] == 3  # collected, never created twice
    assert not tick(
        defs.get_sensor_def("cards_task_status"), instance, resource, result.cursor
    ).run_requests


def test_deferred_asset_at_the_providers_cap_then_batched_collection(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    """The combination users build: a deferred asset, the provider's concurrency cap, and the
    task-status sensor collecting in batches. The submit waits for its own tasks at the cap
    (not blind Retry-After sleeps) and records those it saw finish; the sensor polls only the
    rest; one collect run stores every image once."""
    rows: list[dict[str, Any]] = [
        {"key": f"card{i:02d}", "prompt": f"a playing card, number {i}", "size": "1:1", "seed": i}
        for i in range(1, 13)
    ]
    emulator.configure(concurrency_cap=3, latency_s=0.5)
    resource = make_resource(emulator, concurrency=6, max_retries=20)
    images = build_image_assets("cards", rows, storage=str(tmp_path), mode="deferred")
    defs = dg.Definitions.merge(images, dg.Definitions(resources={"zimage": resource}))
    job = defs.resolve_job_def("cards_job")
    sensor = defs.get_sensor_def("cards_task_status")
    key = dg.AssetKey("cards")
    keys = [str(r["key"]) for r in rows]

    submit = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
    )
    assert submit.success
    stats = emulator.stats()
    assert stats["tasks_created"] == 12
    assert stats["requests"]["create"].get("429", 0) <= 6  # blind sleeps: one or more per create
    ledger = ledger_of(make_spec(tmp_path, rows))
    entries = {e.partition_key: e for e in ledger.iter_entries(("cards",))}
    assert set(entries) == set(keys)
    seen = {k for k, e in entries.items() if e.status == LedgerStatus.COMPLETED}
    unseen = {k for k, e in entries.items() if e.status == LedgerStatus.SUBMITTED}
    assert seen
    assert unseen
    assert seen | unseen == set(keys)

    wait_terminal(emulator, 12)
    polls = stats["requests"].get("task", {}).get("200", 0)
    result = tick(sensor, instance, resource)
    assert emulator.stats()["requests"]["task"]["200"] - polls == len(unseen)
    [request] = result.run_requests  # one collect run for all twelve
    assert execute_request(job, instance, request).success

    assert instance.get_materialized_partitions(key) == set(keys)
    records = instance.fetch_materializations(key, limit=100).records
    assert sorted(r.partition_key or "" for r in records) == sorted(keys)  # each once
    assert emulator.stats()["tasks_created"] == 12  # collected, never created twice
    assert not tick(sensor, instance, resource, result.cursor).run_requests
