"""Defaults said out loud (issue 26, point 5): the status the prompt-dataset sensor and the
daily schedule start in, a daily asset's first day, an inline list's description, and the
step's log (generated vs reused, the credits line once)."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from tests.sensors._support import (
    ROWS as ROWS_DEFERRED,
)
from tests.sensors._support import (
    execute_request,
    jobs_for,
    ledger_of,
    make_defs,
    make_resource,
    make_spec,
    tick,
)
from zimage_dagster import ZImageResource, build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.step import submit_deferred

ROWS = [{"key": "fox", "prompt": "a red fox"}, {"key": "tea", "prompt": "a cup of tea"}]


def _csv(tmp_path: Path) -> str:
    path = tmp_path / "prompts.csv"
    path.write_text("key,prompt\nfox,a red fox\ntea,a cup of tea\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("given", "expected"), [({}, "STOPPED"), ({"default_status": "running"}, "RUNNING")]
)
def test_dataset_sensor_and_schedule_start_as_said(
    tmp_path: Path, given: dict[str, str], expected: str
) -> None:
    dynamic = build_image_assets(
        "dyn", _csv(tmp_path), storage=tmp_path, partitioning="dynamic", **given
    )
    (sensor,) = [s for s in dynamic.sensors or [] if s.name == "dyn_prompt_dataset"]
    assert sensor.default_status == dg.DefaultSensorStatus[expected]
    daily = build_image_assets(
        "day",
        ROWS,
        storage=tmp_path,
        partitioning="daily",
        daily_start_date="2026-12-01",
        schedule={"cron": "0 6 * * *"},
        **given,
    )
    (schedule,) = daily.schedules or []
    assert schedule.default_status == dg.DefaultScheduleStatus[expected]


def test_daily_start_date_is_required_with_daily_partitioning(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="daily_start_date is required with partitioning: daily"):
        build_image_assets("day", ROWS, storage=tmp_path, partitioning="daily")


def test_an_inline_list_is_described_as_such(tmp_path: Path) -> None:
    defs = build_image_assets("imgs", ROWS, storage=tmp_path)
    (asset,) = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    description = asset.descriptions_by_key[dg.AssetKey("imgs")]
    assert "from 2 prompt(s) listed in the code." in description
    assert "<" not in description


def _messages(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.message or "" for e in result.all_events]


def test_the_log_says_generated_and_reused_and_credits_once(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    defs = build_image_assets("imgs", ROWS, storage=tmp_path)
    (asset,) = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    resources = {"zimage": ZImageResource(api_key=emulator.api_key, base_url=emulator.url)}
    tags = {
        "dagster/asset_partition_range_start": "fox",
        "dagster/asset_partition_range_end": "tea",
    }
    with dg.instance_for_test() as instance:
        logs = []
        for _ in range(2):
            result = dg.materialize([asset], resources=resources, instance=instance, tags=tags)
            assert result.success
            logs.append(instance.all_logs(result.run_id))
    first, second = ([e.user_message for e in log] for log in logs)
    assert any("imgs: 2 image(s) generated, 0 reused, 0 failed" in m for m in first), first
    assert any("imgs: 0 image(s) generated, 2 reused, 0 failed" in m for m in second), second
    for messages in (first, second):
        assert sum("credits of imgs" in m for m in messages) == 1, messages
    assert emulator.stats()["tasks_created"] == 2


def test_a_deferred_image_tells_its_own_story(tmp_path: Path, emulator: EmulatorServer) -> None:
    """Collected by the sensor's run, the image says what happened to its task: made for it
    (not reused), polled twice by the sensor (once running, once done), and how long the task
    took from its creation to its end as first seen (not the collect run's few milliseconds)."""
    emulator.configure(latency_s=3600.0)  # running until the emulator's clock moves
    spec = make_spec(tmp_path, ROWS_DEFERRED[:1], mode="deferred")
    resource = make_resource(emulator)
    defs = make_defs(spec, resource)
    submitted_at = time.time()
    submit_deferred(resource, ledger_of(spec), spec.asset_key.path, jobs_for(ROWS_DEFERRED[:1]))
    sensor = defs.get_sensor_def("cards_task_status")
    with dg.instance_for_test() as instance:
        assert not tick(sensor, instance, resource).run_requests  # still running: one poll
        emulator.advance_clock(3600)
        second_tick = time.time()
        [request] = tick(sensor, instance, resource).run_requests  # its end: the second poll
        seen = time.time()
        run = execute_request(defs.resolve_job_def("cards_job"), instance, request)
        assert run.success
        [record] = instance.fetch_materializations(spec.asset_key, limit=5).records
    assert record.asset_materialization is not None
    metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert metadata["reused"] is False
    assert metadata["polls"] == 2
    assert "queued_s" not in metadata
    # From the task's creation (whole seconds) to the end the second tick saw.
    generating = metadata["generating_s"]
    assert isinstance(generating, float), generating
    assert second_tick - submitted_at - 1 <= generating <= seen - submitted_at + 1, generating
    assert emulator.stats()["tasks_created"] == 1
