"""Shared fixtures (one emulator per test process, reset before each test that asks for it) and the
grouping that lets ``make pytest`` run the suite on several workers (pytest-xdist).

Most tests wait (on the emulator's latencies, on daemons, on subprocesses starting) rather than
compute, so ``make pytest`` runs them on more workers than the machine has cores, with
``--dist loadgroup``. Each worker is its own process with its own session fixtures (emulator,
S3 server, PostgreSQL cluster), its own environment, working directory and ``tmp_path`` root, so
tests do not see each other. What the grouping below adds, for every test file without
registering it anywhere:

* a test file whose tests share a module- or class-scoped fixture (a webserver, a deployment,
  a browser) runs on one worker, so that fixture is built once, not once per worker;
* tests marked ``@pytest.mark.heavy`` (several busy processes of their own: Dagster children,
  daemons, a browser, timing races) go to a few ``heavy`` lanes, so that no more of them than the
  machine has cores run at once and their timing is not starved by each other.

Without ``-n`` (``pytest tests/x.py``) nothing of this applies: the tests run in this process, one
after the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.nodeid import NodeId

from zimage_dagster.emulator import EmulatorConfig, EmulatorServer

#: How many heavy tests may run at once: one per core of the machine (2 in CI).
HEAVY_LANES = max(1, min(2, os.cpu_count() or 1))
#: Fixture scopes that are built once for the tests sharing them, so those tests stay together.
SHARED_SCOPES = frozenset({"class", "module", "package"})


def _shares_a_scoped_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope in SHARED_SCOPES
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )


def _heavy_lanes(items: list[pytest.Item]) -> dict[str, str]:
    """Each file with heavy tests -> its lane: whole files (their heavy tests may share its
    fixtures), spread in collection order to the lane with the fewest heavy tests so far (every
    worker collects the same items, so every worker computes the same lanes)."""
    counts: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("heavy"):
            module = item.nodeid.split("::", 1)[0]
            counts[module] = counts.get(module, 0) + 1
    load = [0] * HEAVY_LANES
    lanes: dict[str, str] = {}
    for module, count in counts.items():
        lane = load.index(min(load))
        load[lane] += count
        lanes[module] = f"heavy-{lane}"
    return lanes


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (xdist sets ``loadgroup`` in its workers), give each test its
    group before xdist reads the marks: a heavy lane, its file, or none (any worker takes it)."""
    if not getattr(config.option, "loadgroup", False):
        return
    lanes = _heavy_lanes(items)
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        module = item.nodeid.split("::", 1)[0]
        if item.get_closest_marker("heavy"):
            _join(item, lanes[module])
        elif _shares_a_scoped_fixture(item):
            _join(item, module)


def _join(item: pytest.Item, group: str) -> None:
    """Put a test in an xdist group. xdist 3.8 tells the group to its scheduler by renaming the
    test ``<nodeid>@<group>`` through ``item._nodeid``, which pytest 9.2 no longer reads (its node
    ids are ``NodeId`` objects in ``item._id``): without the rename here, every group is ignored
    and each test goes to any worker."""
    item.add_marker(pytest.mark.xdist_group(group))
    renamed = f"{item.nodeid}@{group}"
    if isinstance(getattr(item, "_id", None), NodeId):
        item._id = NodeId.parse(renamed)


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
