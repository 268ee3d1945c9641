"""The task-status sensor's decisions against the emulator, and a real collect run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.ledger import LedgerStatus
from zimage_dagster.engine.watcher import COLLECT_TAG
from zimage_dagster.sensors import build_task_status_sensor
from zimage_dagster.step import submit_deferred

from ._support import (
    ROWS,
    jobs_for,
    ledger_of,
    make_defs,
    make_resource,
    make_spec,
    tick,
    wait_terminal,
)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def test_completed_tasks_get_one_collect_run_each(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    spec = make_spec(tmp_path)
    resource = make_resource(emulator)
    ledger = ledger_of(spec)
    report = submit_deferred(resource, ledger, spec.asset_key.path, jobs_for())
    assert len(report.submitted) == 3
    assert not report.failures
    # Submitting again creates nothing: every partition has an open task for the same request.
    again = submit_deferred(resource, ledger, spec.asset_key.path, jobs_for())
    assert (len(again.submitted), len(again.open_task)) == (0, 3)
    assert emulator.stats()["tasks_created"] == 3
    wait_terminal(emulator, 3)

    sensor = build_task_status_sensor(spec, "cards_job")
    first = tick(sensor, instance, resource)
    by_key = {str(r.partition_key): r for r in first.run_requests}
    assert set(by_key) == {"fox", "owl", "elk"}
    for key, request in by_key.items():
        entry = ledger.get(spec.asset_key.path, key)
        assert entry is not None
        assert entry.status == LedgerStatus.COMPLETED
        assert request.run_key == entry.task_id
        assert request.tags[COLLECT_TAG] == entry.task_id
        assert request.job_name == "cards_job"
    second = tick(sensor, instance, resource, first.cursor)
    assert not second.run_requests  # never twice
    assert emulator.stats()["tasks_created"] == 3


def test_collect_run_materializes_without_a_new_task(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    spec = make_spec(tmp_path, mode="deferred")
    resource = make_resource(emulator)
    defs = make_defs(spec, resource)
    ledger = ledger_of(spec)
    submit_deferred(resource, ledger, spec.asset_key.path, jobs_for())
    wait_terminal(emulator, 3)
    sensor = defs.get_sensor_def("cards_task_status")
    result = tick(sensor, instance, resource)
    assert len(result.run_requests) == 3
    job = defs.resolve_job_def("cards_job")
    for request in result.run_requests:
        run = job.execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags
        )
        assert run.success
        assert run.dagster_run.tags[COLLECT_TAG] == request.run_key
    assert emulator.stats()["tasks_created"] == 3  # collected, not regenerated
    for row in ROWS:
        event = instance.get_latest_materialization_event(spec.asset_key)
        assert event is not None
        entry = ledger.get(spec.asset_key.path, row["key"])
        assert entry is not None
        assert entry.status == LedgerStatus.COLLECTED
    materialized = instance.get_materialized_partitions(spec.asset_key)
    assert materialized == {"fox", "owl", "elk"}
    records = instance.fetch_materializations(spec.asset_key, limit=10).records
    metadata = [r.asset_materialization.metadata for r in records if r.asset_materialization]
    task_ids = {m["task_id"].value for m in metadata}
    assert task_ids == {r.run_key for r in result.run_requests}
    seeds = {m["seed"].value for m in metadata}
    assert seeds == {11, 22, 33}
    # The next tick has nothing to do.
    assert not tick(sensor, instance, resource, result.cursor).run_requests


def test_retryable_failure_is_resubmitted_with_the_same_seed(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    emulator.configure(failure_rules=[{"pattern": "(?i)owl", "code": "service_error"}])
    spec = make_spec(tmp_path)
    resource = make_resource(emulator)
    ledger = ledger_of(spec)
    submit_deferred(resource, ledger, spec.asset_key.path, jobs_for())
    wait_terminal(emulator, 3)
    sensor = build_task_status_sensor(spec, "cards_job", max_resubmits=1)

    first = tick(sensor, instance, resource)
    assert {r.partition_key for r in first.run_requests} == {"fox", "elk"}
    assert not first.asset_events
    owl = ledger.get(spec.asset_key.path, "owl")
    assert owl is not None
    assert owl.status == LedgerStatus.SUBMITTED
    assert owl.attempt == 2
    assert owl.previous[-1].status == LedgerStatus.FAILED
    assert owl.previous[-1].error_code == "service_error"
    owl_tasks = [t for t in emulator.tasks() if "owl" in t["request"]["prompt"]]
    assert len(owl_tasks) == 2
    assert {t["request"]["seed_sent"] for t in owl_tasks} == {22}

    wait_terminal(emulator, 4)
    second = tick(sensor, instance, resource, first.cursor)  # budget spent: reported
    assert not second.run_requests
    [event] = second.asset_events
    assert isinstance(event, dg.AssetObservation)
    assert event.partition == "owl"
    assert event.metadata["error_code"].value == "service_error"
    assert "gave up after 1 resubmission" in str(event.metadata["error_message"].value)
    assert not tick(sensor, instance, resource, second.cursor).asset_events  # once
    assert emulator.stats()["tasks_created"] == 4


def test_permanent_failure_is_reported_once_and_not_retried(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    rows = [{"key": "bad", "prompt": "a forbidden scene", "seed": 5}, *ROWS[:1]]
    spec = make_spec(tmp_path, rows)
    resource = make_resource(emulator)
    ledger = ledger_of(spec)
    submit_deferred(resource, ledger, spec.asset_key.path, jobs_for(rows))
    wait_terminal(emulator, 2)
    sensor = build_task_status_sensor(spec, "cards_job")
    first = tick(sensor, instance, resource)
    assert [r.partition_key for r in first.run_requests] == ["fox"]
    [event] = first.asset_events
    assert event.partition == "bad"
    assert event.metadata["error_code"].value == "content_policy_violation"
    assert "safety filters" in event.metadata["error_message"].value
    assert event.metadata["seed"].value == 5
    assert emulator.stats()["tasks_created"] == 2
    second = tick(sensor, instance, resource, first.cursor)
    assert not second.asset_events
    assert not second.run_requests
    entry = ledger.get(spec.asset_key.path, "bad")
    assert entry is not None
    assert entry.status == LedgerStatus.FAILED
    assert entry.extra["handled_at"]
    # The observation lands on the partition once Dagster stores it (the daemon does this).
    instance.report_runless_asset_event(event)
    [record] = instance.fetch_observations(spec.asset_key, limit=5).records
    assert record.partition_key == "bad"
    # A new deferred submit of the same request is refused: the user must change the prompt.
    again = submit_deferred(resource, ledger, spec.asset_key.path, jobs_for(rows[:1]))
    assert not again.submitted
    assert again.failures[0].code == "content_policy_violation"


def test_expired_result_is_regenerated_with_the_same_seed(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    spec = make_spec(tmp_path, ROWS[:1])
    resource = make_resource(emulator)
    defs = make_defs(spec, resource)
    ledger = ledger_of(spec)
    submit_deferred(resource, ledger, spec.asset_key.path, jobs_for(ROWS[:1]))
    wait_terminal(emulator, 1)
    sensor = build_task_status_sensor(spec, "cards_job")
    first = tick(sensor, instance, resource)
    [request] = first.run_requests  # ... but the collect run never happens
    old_task = request.run_key

    day = 25 * 3600
    emulator.advance_clock(day)
    later = build_task_status_sensor(spec, "cards_job", clock=lambda: time.time() + day)
    second = tick(later, instance, resource, first.cursor)
    assert not second.run_requests
    assert not second.asset_events
    entry = ledger.get(spec.asset_key.path, "fox")
    assert entry is not None
    assert entry.task_id != old_task
    assert entry.status == LedgerStatus.SUBMITTED
    assert entry.extra["regenerated"] is True
    assert entry.previous[-1].task_id == old_task
    assert entry.previous[-1].status == LedgerStatus.EXPIRED
    tasks = emulator.tasks()
    assert [t["request"]["seed_sent"] for t in tasks] == [11, 11]

    wait_terminal(emulator, 2)
    third = tick(later, instance, resource, second.cursor)
    [collect] = third.run_requests
    assert collect.run_key == entry.task_id
    run = defs.resolve_job_def("cards_job").execute_in_process(
        instance=instance, partition_key="fox", tags=collect.tags
    )
    assert run.success
    record = instance.fetch_materializations(spec.asset_key, limit=1).records[0]
    assert record.asset_materialization is not None
    metadata = record.asset_materialization.metadata
    assert metadata["task_id"].value == entry.task_id
    assert metadata["regenerated"].value is True  # the collect run says what the sensor did
    assert metadata["seed"].value == 11
    assert emulator.stats()["tasks_created"] == 2


def test_multi_partition_keys_map_back(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    spec = make_spec(tmp_path, ROWS[:1], partitioning="daily")
    resource = make_resource(emulator)
    ledger = ledger_of(spec)
    job = jobs_for(ROWS[:1])[0]
    job = type(job)(partition_key="2026-03-04|fox", row=job.row, seed=job.seed)
    submit_deferred(resource, ledger, spec.asset_key.path, [job])
    entry = ledger.get(spec.asset_key.path, "2026-03-04|fox")
    assert entry is not None
    assert entry.partition_key == "2026-03-04|fox"
    assert ledger.path(spec.asset_key.path, entry.partition_key).name == "2026-03-04__fox.json"
    wait_terminal(emulator, 1)
    [request] = tick(build_task_status_sensor(spec, "cards_job"), instance, resource).run_requests
    assert request.partition_key == "2026-03-04|fox"


def test_cursor_is_small_json(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = make_spec(tmp_path)
    sensor = build_task_status_sensor(spec, "cards_job")
    with dg.instance_for_test() as instance:
        result = tick(sensor, instance, make_resource(emulator))
    assert result.cursor is None
    assert result.skip_reason is not None
