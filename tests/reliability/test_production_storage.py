"""Production-shaped storage: the fault matrix and the crash/resume scenario again, with images,
provenance and the task ledger on an S3-compatible server (moto, on loopback, through s3fs/UPath)
and the Dagster instance (runs, event log, schedules) on PostgreSQL (dagster-postgres).

``make test`` runs small versions; the ``soak`` ones run 200 prompts.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.reliability._support import run_crash_scenario, run_fault_matrix, write_dagster_home
from tests.reliability.conftest import S3, Postgres
from zimage_dagster.emulator.server import EmulatorProcess


def _home(tmp_path: Path, postgres: Postgres) -> Path:
    return write_dagster_home(
        tmp_path / "home", yaml=postgres.dagster_yaml(postgres.create_database())
    )


def _fault_matrix(
    emulator: EmulatorProcess, s3: S3, postgres: Postgres, tmp_path: Path, n: int, name: str
) -> dict[str, object]:
    home = _home(tmp_path, postgres)
    bucket = s3.make_bucket()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        return run_fault_matrix(
            emulator,
            instance,
            n=n,
            storage=f"s3://{bucket}/zimage",
            storage_options=s3.storage_options,
            name=name,
        )


def test_fault_matrix_on_s3_and_postgres(
    emulator_proc: EmulatorProcess, s3: S3, postgres: Postgres, tmp_path: Path
) -> None:
    figures = _fault_matrix(emulator_proc, s3, postgres, tmp_path, 50, "fault_matrix_s3_pg")
    assert figures["rejected"] == 1


@pytest.mark.soak
def test_soak_fault_matrix_200_on_s3_and_postgres(
    emulator_proc: EmulatorProcess, s3: S3, postgres: Postgres, tmp_path: Path
) -> None:
    figures = _fault_matrix(emulator_proc, s3, postgres, tmp_path, 200, "soak_fault_matrix_s3_pg")
    assert figures["rejected"] == 4


def _crash(
    emulator: EmulatorProcess, s3: S3, postgres: Postgres, tmp_path: Path, n: int, name: str
) -> dict[str, object]:
    home = _home(tmp_path, postgres)
    bucket = s3.make_bucket()
    figures = run_crash_scenario(
        emulator,
        home,
        n=n,
        storage=f"s3://{bucket}/zimage",
        storage_options=s3.storage_options,
        name=name,
        # moto serves one request at a time (tests/reliability/conftest.py): the test's ledger
        # scans queue behind the run's writes, so the tasks must last longer than locally for the
        # kill to find some in flight (0.4-1.2 s: none left once, at load 7).
        latency_range_s=(1.5, 3.0),
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # The killed runs stay in PostgreSQL as they were left; the resuming run succeeded.
        statuses = [r.status for r in instance.get_runs()]
        assert statuses.count(dg.DagsterRunStatus.SUCCESS) == 1
        assert statuses.count(dg.DagsterRunStatus.STARTED) == 2
    return figures


def test_crash_and_resume_on_s3_and_postgres(
    emulator_proc: EmulatorProcess, s3: S3, postgres: Postgres, tmp_path: Path
) -> None:
    figures = _crash(emulator_proc, s3, postgres, tmp_path, 30, "crash_resume_s3_pg")
    assert figures["tasks_created"] == 30 + figures["orphans_from_kill_windows"]  # type: ignore[operator]


@pytest.mark.soak
def test_soak_crash_and_resume_200_on_s3_and_postgres(
    emulator_proc: EmulatorProcess, s3: S3, postgres: Postgres, tmp_path: Path
) -> None:
    figures = _crash(emulator_proc, s3, postgres, tmp_path, 200, "soak_crash_resume_s3_pg")
    assert figures["tasks_created"] == 200 + figures["orphans_from_kill_windows"]  # type: ignore[operator]


def test_a_long_lived_reader_sees_ledger_entries_written_by_another_process(s3: S3) -> None:
    from zimage_dagster.engine.ledger import TaskLedger
    from zimage_dagster.engine.store import ImageStore

    bucket = s3.make_bucket()
    plain = {k: v for k, v in s3.storage_options.items() if k != "use_listings_cache"}
    reader = TaskLedger(ImageStore(f"s3://{bucket}/zimage", plain))  # e.g. the sensor's process
    # Another process (a run) has its own filesystem object: skip_instance_cache stands for it.
    writer = TaskLedger(ImageStore(f"s3://{bucket}/zimage", {**plain, "skip_instance_cache": True}))
    writer.record_submitted(
        "imgs", "p0", task_id="task-unified-1-aaaaaaaa", request={"prompt": "a", "seed": 1}
    )
    assert [e.partition_key for e in reader.iter_entries("imgs")] == ["p0"]
    writer.record_submitted(
        "imgs", "p1", task_id="task-unified-1-bbbbbbbb", request={"prompt": "b", "seed": 2}
    )
    assert [e.partition_key for e in reader.iter_entries("imgs")] == ["p0", "p1"]
