"""Crash and resume: the run's process is SIGKILLed twice while tasks are in flight (some
images stored, some tasks live, some partitions not yet submitted), then resumed.

Between each kill and the next state: stored images are untouched (bytes and mtime), partitions
whose task was live keep that task (no new one), and only partitions that had no task get one.
In the end every image is delivered and the only tasks beyond one per partition are those created
in the instant between a create's answer and the ledger write that the kill interrupted (counted
exactly: tasks the emulator has and the ledger never learned of).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability._support import run_crash_scenario, write_dagster_home
from zimage_dagster.emulator.server import EmulatorProcess

pytestmark = pytest.mark.heavy


def test_two_sigkills_then_resume_pay_only_for_what_was_never_recorded(
    emulator_proc: EmulatorProcess, tmp_path: Path
) -> None:
    home = write_dagster_home(tmp_path / "home")
    figures = run_crash_scenario(
        emulator_proc, home, n=40, storage=str(tmp_path / "images"), name="crash_resume_local"
    )
    assert figures["tasks_created"] == 40 + figures["orphans_from_kill_windows"]
