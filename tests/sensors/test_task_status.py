"""The task-status sensor's decisions against the emulator, and a real collect run."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
from dagster import DagsterRun, DagsterRunStatus
from dagster._core.utils import make_new_run_id

from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.collect import COLLECT_TAG, batch_digest
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.sensors import build_task_status_sensor
from zimage_dagster.spec import ImageAssetSpec
from zimage_dagster.step import submit_deferred

from ._support import (
    ROWS,
    execute_request,
    jobs_for,
    ledger_of,
    make_defs,
    make_resource,
    make_spec,
    submitted,
    tick,
    wait_terminal,
)


def _batch_entries(ledger: TaskLedger, spec: ImageAssetSpec, batch_id: str) -> set[str]:
    return {
        e.partition_key
        for e in ledger.iter_entries(spec.asset_key.path)
        if e.collect_batch == batch_id
    }


def test_completed_tasks_get_one_collect_run_for_the_batch(
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
    [request] = first.run_requests  # one run for every finished task
    batch_id = request.tags[COLLECT_TAG]
    assert request.run_key == f"collect:{batch_id}"
    assert request.job_name == "cards_job"
    # The smallest range of the dataset's order (fox, owl, elk) holding the batch.
    assert request.tags["dagster/asset_partition_range_start"] == "fox"
    assert request.tags["dagster/asset_partition_range_end"] == "elk"
    assert _batch_entries(ledger, spec, batch_id) == {"fox", "owl", "elk"}
    task_ids = sorted(e.task_id for e in ledger.iter_entries(spec.asset_key.path))
    assert batch_id == batch_digest((t, 0) for t in task_ids)  # derived from the task IDs
    for entry in ledger.iter_entries(spec.asset_key.path):
        assert entry.status == LedgerStatus.COMPLETED
    second = tick(sensor, instance, resource, first.cursor)
    assert not second.run_requests  # never twice
    assert emulator.stats()["tasks_created"] == 3


def test_one_collect_run_per_tick_the_rest_waits_for_the_next(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    spec = make_spec(tmp_path)
    resource = make_resource(emulator)
    ledger = ledger_of(spec)
    submit_deferred(resource, ledger, spec.asset_key.path, jobs_for())
    wait_terminal(emulator, 3)
    sensor = build_task_status_sensor(spec, "cards_job", max_per_run=2)
    first = tick(sensor, instance, resource)
    [one] = first.run_requests  # never more runs than ticks that found work
    batch = _batch_entries(ledger, spec, one.tags[COLLECT_TAG])
    assert len(batch) == 2
    second = tick(sensor, instance, resource, first.cursor)
    [other] = second.run_requests  # the partition held back, on the next tick
    rest = _batch_entries(ledger, spec, other.tags[COLLECT_TAG])
    assert batch | rest == {"fox", "owl", "elk"}
    assert not batch & rest
    assert emulator.stats()["tasks_created"] == 3


def test_a_tick_evaluated_twice_launches_nothing_twice(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    done = submitted(tmp_path, emulator)
    spec, resource, defs = done.spec, done.resource, done.defs
    # The same tick evaluated twice (same cursor), at once: the second asks for nothing.
    sensor = build_task_status_sensor(spec, "cards_job")
    first = tick(sensor, instance, resource)
    assert not tick(sensor, instance, resource).run_requests
    # Evaluated again once its requests may have been lost: the very same run key, which Dagster
    # launches once.
    eager = build_task_status_sensor(spec, "cards_job", recollect_after_s=0.0)
    again = tick(eager, instance, resource)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    # Once the run exists (here: it ran), nothing more is asked for.
    [request] = first.run_requests
    run = execute_request(defs.resolve_job_def("cards_job"), instance, request)
    assert run.success
    assert not tick(eager, instance, resource).run_requests
    assert instance.get_materialized_partitions(spec.asset_key) == {"fox", "owl", "elk"}
    assert emulator.stats()["tasks_created"] == 3


def test_collect_run_materializes_its_batch_without_a_new_task(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    spec = make_spec(tmp_path, mode="deferred")
    resource = make_resource(emulator)
    defs = make_defs(spec, resource)
    ledger = ledger_of(spec)
    # fox and elk are submitted; owl, between them in the range, is not: the run leaves it be.
    submit_deferred(resource, ledger, spec.asset_key.path, [jobs_for()[0], jobs_for()[2]])
    wait_terminal(emulator, 2)
    sensor = defs.get_sensor_def("cards_task_status")
    result = tick(sensor, instance, resource)
    [request] = result.run_requests
    run = execute_request(defs.resolve_job_def("cards_job"), instance, request)
    assert run.success
    assert run.dagster_run.tags[COLLECT_TAG] == request.tags[COLLECT_TAG]
    assert emulator.stats()["tasks_created"] == 2  # collected, not regenerated
    assert instance.get_materialized_partitions(spec.asset_key) == {"fox", "elk"}
    assert ledger.get(spec.asset_key.path, "owl") is None
    for key in ("fox", "elk"):
        entry = ledger.get(spec.asset_key.path, key)
        assert entry is not None
        assert entry.status == LedgerStatus.COLLECTED
    records = instance.fetch_materializations(spec.asset_key, limit=10).records
    metadata = [r.asset_materialization.metadata for r in records if r.asset_materialization]
    assert len(metadata) == 2  # each partition once
    assert {m["seed"].value for m in metadata} == {11, 33}
    # The next tick has nothing to do.
    assert not tick(sensor, instance, resource, result.cursor).run_requests


def test_a_failed_collect_run_is_collected_again_on_the_next_tick(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    done = submitted(tmp_path, emulator)
    spec, resource, defs, ledger = done.spec, done.resource, done.defs, done.ledger
    sensor = defs.get_sensor_def("cards_task_status")
    first = tick(sensor, instance, resource)
    [request] = first.run_requests
    # The daemon launched it, and its worker died before storing anything: run monitoring
    # marked the run failed (what the sensor sees of any run that ended badly).
    instance.add_run(
        DagsterRun(
            job_name="cards_job",
            run_id=make_new_run_id(),
            tags={**request.tags, "dagster/run_key": str(request.run_key)},
            status=DagsterRunStatus.FAILURE,
        )
    )
    # Long before any link expires, the next tick asks for a new run (a new run key) for the
    # same partitions.
    second = tick(sensor, instance, resource, first.cursor)
    [retry] = second.run_requests
    assert retry.run_key != request.run_key
    assert _batch_entries(ledger, spec, retry.tags[COLLECT_TAG]) == {"fox", "owl", "elk"}
    # That run ends without collecting either: the file host refuses every download.
    emulator.configure(http_faults=[{"route": "files", "action": "status", "status": 400}])
    ended = execute_request(defs.resolve_job_def("cards_job"), instance, retry)
    assert ended.success  # the failed partitions are the sensor's to decide on
    assert instance.get_materialized_partitions(spec.asset_key) == set()
    emulator.configure(http_faults=[])
    third = tick(sensor, instance, resource, second.cursor)
    [last] = third.run_requests
    assert last.run_key not in (request.run_key, retry.run_key)
    run = execute_request(defs.resolve_job_def("cards_job"), instance, last)
    assert run.success
    assert instance.get_materialized_partitions(spec.asset_key) == {"fox", "owl", "elk"}
    assert emulator.stats()["tasks_created"] == 3  # collected, never paid again
    assert not tick(sensor, instance, resource, third.cursor).run_requests


def test_retryable_failure_is_resubmitted_inside_the_collect_run(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    emulator.configure(failure_rules=[{"pattern": "(?i)owl", "code": "service_error"}])
    done = submitted(tmp_path, emulator, max_resubmits=1)
    spec, resource, defs, ledger = done.spec, done.resource, done.defs, done.ledger
    sensor = build_task_status_sensor(spec, "cards_job", max_resubmits=1)

    first = tick(sensor, instance, resource)
    [request] = first.run_requests
    assert _batch_entries(ledger, spec, request.tags[COLLECT_TAG]) == {"fox", "owl", "elk"}
    assert not first.asset_events
    assert emulator.stats()["tasks_created"] == 3  # the sensor itself creates nothing

    # The run resubmits owl (same seed), under its own run ID; the rule fails it again.
    run = execute_request(defs.resolve_job_def("cards_job"), instance, request)
    assert run.success  # its failed partition is the sensor's to decide on, not a failed run
    assert instance.get_materialized_partitions(spec.asset_key) == {"fox", "elk"}
    owl = ledger.get(spec.asset_key.path, "owl")
    assert owl is not None
    assert owl.status == LedgerStatus.FAILED
    assert owl.attempt == 2
    assert owl.run_id == run.run_id  # attributed to the collect run
    assert owl.previous[-1].error_code == "service_error"
    owl_tasks = [t for t in emulator.tasks() if "owl" in t["request"]["prompt"]]
    assert len(owl_tasks) == 2
    assert {t["request"]["seed_sent"] for t in owl_tasks} == {22}

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
    assert [r.partition_key for r in first.run_requests] == ["fox"]  # a batch of one
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
    assert entry.handled_at
    # The observation lands on the partition once Dagster stores it (the daemon does this).
    instance.report_runless_asset_event(event)
    [record] = instance.fetch_observations(spec.asset_key, limit=5).records
    assert record.partition_key == "bad"
    # A new deferred submit of the same request is refused: the user must change the prompt.
    again = submit_deferred(resource, ledger, spec.asset_key.path, jobs_for(rows[:1]))
    assert not again.submitted
    assert again.failures[0].code == "content_policy_violation"


def test_expired_result_is_regenerated_inside_the_collect_run(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    done = submitted(tmp_path, emulator, ROWS[:1])
    spec, resource, defs, ledger = done.spec, done.resource, done.defs, done.ledger
    old_task = ledger.get(spec.asset_key.path, "fox").task_id  # type: ignore[union-attr]
    sensor = build_task_status_sensor(spec, "cards_job")
    first = tick(sensor, instance, resource)
    assert len(first.run_requests) == 1  # ... but the collect run never happens

    day = 25 * 3600
    emulator.advance_clock(day)
    later = build_task_status_sensor(spec, "cards_job", clock=lambda: time.time() + day)
    second = tick(later, instance, resource, first.cursor)
    [collect] = second.run_requests  # the run regenerates: the sensor created nothing
    assert not second.asset_events
    assert emulator.stats()["tasks_created"] == 1
    entry = ledger.get(spec.asset_key.path, "fox")
    assert entry is not None
    assert entry.status == LedgerStatus.EXPIRED

    run = execute_request(defs.resolve_job_def("cards_job"), instance, collect)
    assert run.success
    entry = ledger.get(spec.asset_key.path, "fox")
    assert entry is not None
    assert entry.task_id != old_task
    assert entry.status == LedgerStatus.COLLECTED
    assert entry.run_id == run.run_id
    assert entry.previous[-1].task_id == old_task
    assert entry.previous[-1].status == LedgerStatus.EXPIRED
    tasks = emulator.tasks()
    assert [t["request"]["seed_sent"] for t in tasks] == [11, 11]
    record = instance.fetch_materializations(spec.asset_key, limit=1).records[0]
    assert record.asset_materialization is not None
    metadata = record.asset_materialization.metadata
    assert metadata["task_id"].value == entry.task_id
    assert metadata["regenerated"].value is True
    assert metadata["seed"].value == 11
    assert emulator.stats()["tasks_created"] == 2
    assert not tick(later, instance, resource, second.cursor).run_requests


def test_multi_partition_keys_map_back(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    spec = make_spec(tmp_path, ROWS[:1], partitioning="daily", daily_start_date="2026-01-01")
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


def test_new_work_waits_while_max_active_runs_are_active(
    tmp_path: Path, emulator: EmulatorServer, instance: dg.DagsterInstance
) -> None:
    done = submitted(tmp_path, emulator, ROWS[:2])
    spec, resource, ledger = done.spec, done.resource, done.ledger
    sensor = build_task_status_sensor(spec, "cards_job", max_active_runs=1)
    [first] = tick(sensor, instance, resource).run_requests
    # elk finishes while fox and owl's run is asked for: it waits, for one run instead of two.
    submit_deferred(resource, ledger, spec.asset_key.path, jobs_for(ROWS[2:]))
    wait_terminal(emulator, 3)
    held = tick(sensor, instance, resource)
    assert not held.run_requests
    assert held.skip_reason is not None
    assert "1 held for a later run" in held.skip_reason
    assert execute_request(done.defs.resolve_job_def("cards_job"), instance, first).success
    [second] = tick(sensor, instance, resource).run_requests
    assert _batch_entries(ledger, spec, second.tags[COLLECT_TAG]) == {"elk"}
