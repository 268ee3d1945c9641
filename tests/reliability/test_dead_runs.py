"""A SIGKILLed run is marked failed and frees its pool slot, with the example project's instance
settings (``examples/dagster.yaml``) and Dagster's default run launcher: a real ``dagster-daemon``,
its code server and run workers, and runs submitted with ``dagster job launch``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait(what: str, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "examples" / "dagster.yaml", home / "dagster.yaml")
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n"
        f"  - python_file:\n      relative_path: {REPO / 'tests/reliability/_hold_project.py'}\n"
        f"      working_directory: {REPO}\n      location_name: hold\n"
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ZIMAGE_TEST_HOLD_DIR": str(hold_dir),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "daemon.log").open("w"),
    )
    try:
        yield tmp_path, env
    finally:
        (hold_dir / "release").touch()
        daemon.send_signal(signal.SIGINT)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _launch(tmp_path: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "launch",
            "-w",
            str(tmp_path / "workspace.yaml"),
            "-j",
            "hold_job",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_sigkilled_run_is_failed_and_frees_its_pool_slot(
    deployment: tuple[Path, dict[str, str]],
) -> None:
    tmp_path, env = deployment
    hold_dir = Path(env["ZIMAGE_TEST_HOLD_DIR"])
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.event_log_storage.set_concurrency_slots("zimage", 1)

        def runs() -> list[dg.DagsterRun]:
            return list(reversed(instance.get_runs()))  # oldest first

        _launch(tmp_path, env)
        _wait("the first run to hold the slot", lambda: len(list(hold_dir.glob("*.pid"))) == 1)
        first = runs()[0].run_id
        pid = int((hold_dir / f"{first}.pid").read_text())

        _launch(tmp_path, env)
        _wait("the second run to be submitted", lambda: len(runs()) == 2)
        second = runs()[1].run_id
        time.sleep(3)  # queued, or started and blocked on the pool: either way it must not run
        assert not (hold_dir / f"{second}.pid").exists(), "the pool limit of 1 did not hold"
        assert instance.get_run_by_id(first).status == dg.DagsterRunStatus.STARTED  # type: ignore[union-attr]

        os.kill(pid, signal.SIGKILL)
        _wait(
            "the killed run to be marked failed",
            lambda: instance.get_run_by_id(first).status == dg.DagsterRunStatus.FAILURE,  # type: ignore[union-attr]
        )
        _wait("the second run to get the freed slot", lambda: (hold_dir / f"{second}.pid").exists())
        (hold_dir / "release").touch()
        _wait(
            "the second run to succeed",
            lambda: instance.get_run_by_id(second).status == dg.DagsterRunStatus.SUCCESS,  # type: ignore[union-attr]
        )
