"""Deferred mode survives its sensor being stopped and restarted.

A batch is submitted in deferred mode; the task-status sensor's first tick requests collect runs
for the tasks finished so far, but the "daemon" dies after launching only some of them (the rest
of its requests are lost) and the sensor is gone while the remaining tasks finish. A new sensor,
built afresh as a restarted code location would (no cursor), finds every uncollected task in the
ledger: each partition ends up materialized exactly once, and no task is ever created twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from tests.sensors._support import tick, wait_for, wait_terminal
from zimage_dagster import ZImageResource
from zimage_dagster.assets import build_image_definitions
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.sensors import build_task_status_sensor
from zimage_dagster.spec import ImageAssetSpec

ROWS = [
    {"key": f"card-{i:02d}", "prompt": f"a paper lantern number {i}", "size": "376x376"}
    for i in range(12)
]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def test_a_restarted_sensor_collects_everything_once_without_new_tasks(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    # Tasks end spread over 0.5..4 s, so the first tick sees only some of them finished.
    emulator.configure(latency_s=0.5, latency_range_s=[0.5, 4.0], estimated_time=1)
    resource = ZImageResource(
        api_key=emulator.api_key, base_url=emulator.url, max_poll_interval=0.2
    )
    spec = ImageAssetSpec(asset_name="cards", prompts=ROWS, storage=str(tmp_path), mode="deferred")
    images = build_image_definitions(spec)
    defs = dg.Definitions.merge(images, dg.Definitions(resources={"zimage": resource}))
    job = defs.resolve_job_def("cards_job")
    key = dg.AssetKey("cards")
    first, last = ROWS[0]["key"], ROWS[-1]["key"]
    submit = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
    )
    assert submit.success
    assert emulator.stats()["tasks_created"] == len(ROWS)

    def collect(requests: list[dg.RunRequest]) -> list[str]:
        for request in requests:
            run = job.execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags
            )
            assert run.success
        return [str(r.run_key) for r in requests]

    # First life of the sensor: some tasks are done; it asks for a collect run, and the daemon
    # dies before launching it (the request is lost).
    wait_for(
        lambda: sum(t["status"] == "completed" for t in emulator.tasks()) >= 4,
        what="a few tasks to finish",
    )
    # Batches of two: several collect runs in all, one per tick.
    sensor = build_task_status_sensor(spec, "cards_job", max_per_run=2)
    early = tick(sensor, instance, resource)
    [lost] = early.run_requests  # one collect run per tick
    launched: list[str] = []

    # Stopped while the rest finish; then a new sensor (no cursor) in a new code location.
    wait_terminal(emulator, len(ROWS))
    restarted = build_task_status_sensor(spec, "cards_job", recollect_after_s=0.0, max_per_run=2)
    later = tick(restarted, instance, resource, cursor=None)
    for _ in range(len(ROWS)):  # one collect run per tick: tick until none is asked for
        fresh = [r for r in later.run_requests if r.run_key not in launched]
        if not fresh:
            break
        launched += collect(fresh)
        later = tick(restarted, instance, resource, later.cursor)
    assert lost.run_key in launched  # asked for again by the new sensor, with the same run key

    assert instance.get_materialized_partitions(key) == {r["key"] for r in ROWS}
    records = instance.fetch_materializations(key, limit=100).records
    per_partition = Counter(r.partition_key for r in records)
    assert set(per_partition.values()) == {1}, per_partition  # each exactly once
    assert sorted(launched) == sorted(set(launched))  # no task collected twice
    assert emulator.stats()["tasks_created"] == len(ROWS)  # nothing paid twice
    ledger = TaskLedger(ImageStore(str(tmp_path)))
    statuses = {e.partition_key: e.status for e in ledger.iter_entries(("cards",))}
    assert set(statuses.values()) == {LedgerStatus.COLLECTED}
    assert not tick(restarted, instance, resource, later.cursor).run_requests
