"""The factory's job runs its one step in the run's own process (Dagster's in-process executor),
not in a child process the multiprocess executor would start: a real run of the job, launched the
way a run worker launches it (``dg.execute_job`` on a reconstructable job)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from tests.dagster._support import make_fast, rows
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.resource import ZImageResource

N = 4


def factory_job() -> dg.JobDefinition:
    """The factory's ``executor_images_job``, configured from the environment (reconstructable:
    a run worker or a step process builds it again from this module)."""
    resource = ZImageResource(
        api_key=os.environ["TEST_EXECUTOR_KEY"],
        base_url=os.environ["TEST_EXECUTOR_URL"],
        max_poll_interval=0.25,
    )
    defs = dg.Definitions.merge(
        build_image_assets("executor_images", rows(N), storage=os.environ["TEST_EXECUTOR_STORE"]),
        dg.Definitions(resources={"zimage": resource}),
    )
    return defs.resolve_job_def("executor_images_job")


def test_the_factory_job_runs_its_step_in_the_run_process(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_fast(emulator)
    monkeypatch.setenv("TEST_EXECUTOR_URL", emulator.url)
    monkeypatch.setenv("TEST_EXECUTOR_KEY", emulator.api_key)
    monkeypatch.setenv("TEST_EXECUTOR_STORE", str(tmp_path / "images"))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        with dg.execute_job(
            dg.reconstructable(factory_job),
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": "p0",
                "dagster/asset_partition_range_end": f"p{N - 1}",
            },
        ) as result:
            assert result.success
            run_id = result.run_id
        events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event]
    messages = [e.message or "" for e in events]
    assert any(m == f"Executing steps in process (pid: {os.getpid()})" for m in messages)
    assert not [e for e in events if e.event_type == dg.DagsterEventType.STEP_WORKER_STARTING]
    assert not [m for m in messages if "in subprocess" in m]
    materialized = [e for e in events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION]
    assert len(materialized) == N
    assert emulator.stats()["tasks_created"] == N  # one task per partition, none twice
