"""Every engine path that creates a task, racing in real processes on the same partitions against
the emulator over HTTP: deferred submits, a blocking batch, and task-status sensor ticks over
failed tasks (which create none: resubmitting is a collect run's job). The emulator's count of
tasks created is the proof."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine import _race
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore

pytestmark = pytest.mark.heavy

SPAWN = multiprocessing.get_context("spawn")
KEYS = [f"k{i}" for i in range(8)]


def _race_all(emulator: EmulatorServer, root: Path, modes: list[str]) -> list[Any]:
    barrier, out = SPAWN.Barrier(len(modes)), SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=_race.create_race,
            args=(str(root), emulator.url, emulator.api_key, KEYS, mode, barrier, out),
        )
        for mode in modes
    ]
    for proc in procs:
        proc.start()
    reports: list[Any] = []
    deadline = time.monotonic() + 180
    while len(reports) < len(procs):
        assert time.monotonic() < deadline, "the racers did not report"
        assert all(p.exitcode in (None, 0) for p in procs), [p.exitcode for p in procs]
        with contextlib.suppress(queue.Empty):
            reports.append(out.get(timeout=0.5))
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return reports


def test_deferred_submits_and_a_blocking_run_create_one_task_per_partition(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.configure(latency_range_s=[0.3, 0.8], estimated_time=1)
    reports = _race_all(emulator, tmp_path, ["submit", "submit", "blocking"])
    assert emulator.stats()["tasks_created"] == len(KEYS), reports
    (blocking,) = [summary for mode, summary in reports if mode == "blocking"]
    assert blocking.startswith(f"{len(KEYS)} stored, 0 failed"), reports
    entries = list(TaskLedger(ImageStore(tmp_path)).iter_entries("imgs"))
    assert len(entries) == len(KEYS)
    assert all(e.attempt == 1 for e in entries)


def test_sensor_ticks_racing_create_nothing(emulator: EmulatorServer, tmp_path: Path) -> None:
    emulator.configure(
        latency_s=0.2,
        estimated_time=1,
        failure_rules=[{"pattern": "fox", "code": "service_error"}],  # retryable, every time
    )
    _race_all(emulator, tmp_path, ["submit"])
    ledger = TaskLedger(ImageStore(tmp_path))
    first = emulator.stats()["tasks_created"]
    assert first == len(KEYS)
    # Let the tasks fail, then three sensor ticks race over them: resubmitting is a collect
    # run's job, so they create nothing. (The daemon never runs one sensor's ticks at once;
    # racing ones may name overlapping batches, which the collect runs' claims make harmless.)
    deadline = time.monotonic() + 30
    while any(t["status"] != "failed" for t in emulator.tasks()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _race_all(emulator, tmp_path, ["tick", "tick", "tick"])
    assert emulator.stats()["tasks_created"] == len(KEYS)
    entries = list(ledger.iter_entries("imgs"))
    assert {e.status for e in entries} == {LedgerStatus.FAILED}
    batches = {e.collect_batch for e in entries}
    assert None not in batches
    assert len(batches) <= 3  # at most one per tick
