"""Shared fixtures: one emulator for the session, reset before each test that asks for it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from zimage_dagster.emulator import EmulatorConfig, EmulatorServer


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    """The session's emulator (short latency and callback retries; documented rules otherwise)."""
    with EmulatorServer(EmulatorConfig.for_tests()) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> EmulatorServer:
    """The session emulator, reset (tasks, stats, config, faults, clock) for this test."""
    emulator_server.reset()
    return emulator_server


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from this tree (`python -m build`), once per session: the
    packaging tests and the README's quick-start walk install it."""
    out = tmp_path_factory.mktemp("dist")
    repo = Path(__file__).resolve().parents[1]
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(repo)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out
