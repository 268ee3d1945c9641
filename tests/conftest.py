"""Shared fixtures: one emulator for the session, reset before each test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

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
