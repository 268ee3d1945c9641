"""Deferred mode as one option of the factory: a materialization submits and ends; the sensor's
collect runs materialize every partition, each task created once."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from zimage_dagster import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.ledger import LedgerStatus
from zimage_dagster.engine.watcher import COLLECT_TAG

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
    assert {s.name for s in defs.sensors or []} == {"cards_task_status"}
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
