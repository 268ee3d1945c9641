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

* the longest work is handed out first (xdist's own order, biggest group first, is turned off):
  the heavy lanes, then the files of :data:`LONG_FILES` longest first, then the other ``slow``
  tests, then the rest in collection order. A long test handed out last is what the whole run
  waits for at its end (the quick-start walk, 5-7 minutes on a loaded machine, used to start
  two thirds of the way through).

Without ``-n`` (``pytest tests/x.py``) nothing of this applies: the tests run in this process, one
after the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.nodeid import NodeId

from tests._support import once_per_run
from zimage_dagster.emulator import EmulatorConfig, EmulatorServer

#: How many heavy tests may run at once: one per core of the machine (2 in CI).
HEAVY_LANES = max(1, min(2, os.cpu_count() or 1))
#: Fixture scopes that are built once for the tests sharing them, so those tests stay together.
SHARED_SCOPES = frozenset({"class", "module", "package"})
#: Scheduling hints only: the test files that take longest, in seconds (their tests' calls and
#: set-ups, measured on a loaded 2-core machine, 4 workers). Heavy files are spread over the
#: lanes by these figures (a heavy file not listed counts HEAVY_TEST_S per heavy test) and the
#: files listed are handed out first, longest first. A stale or missing figure makes the run
#: longer, never wrong.
LONG_FILES: dict[str, float] = {
    # heavy (one lane per core)
    "tests/reliability/test_races.py": 258,
    "tests/reliability/test_distributed.py": 247,
    "tests/sensors/test_dagster_dev.py": 205,
    "tests/test_example_project.py": 196,  # its two heavy tests; its other tests run anywhere
    "tests/reliability/test_dead_runs.py": 165,
    "tests/test_readme.py": 144,
    "tests/reliability/test_kill_loop.py": 104,
    "tests/ui/test_browser.py": 70,
    "tests/reliability/test_crash_resume.py": 59,
    "tests/gallery/test_gallery_dagster_ui.py": 40,
    "tests/engine/test_create_races.py": 25,
    # any worker
    "tests/readme/test_quick_start.py": 414,
    "tests/component/test_scaffold_and_cli.py": 474,  # three tests of 150 s: one each
    "tests/reliability/test_production_storage.py": 326,
    "tests/reliability/test_fault_matrix.py": 216,
    "tests/reliability/test_expiry.py": 65,
    "tests/reliability/test_secrets.py": 50,
    "tests/sensors/test_tick_budget.py": 49,
    "tests/cost/test_cost.py": 46,
    "tests/dagster/test_ledger.py": 45,
    "tests/reliability/test_sensor_restart.py": 44,
    "tests/packaging/test_venv_tools.py": 40,
}
HEAVY_TEST_S = 30.0


def _shares_a_scoped_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        definition.scope in SHARED_SCOPES
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    )


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _heavy_lanes(items: list[pytest.Item]) -> dict[str, str]:
    """Each file with heavy tests -> its lane: whole files (their heavy tests may share its
    fixtures), longest first (:data:`LONG_FILES`) to the lane with the least work so far (every
    worker collects the same items, so every worker computes the same lanes)."""
    counts: dict[str, int] = {}
    for item in items:
        if item.get_closest_marker("heavy"):
            counts[_module(item)] = counts.get(_module(item), 0) + 1
    cost = {module: LONG_FILES.get(module, HEAVY_TEST_S * n) for module, n in counts.items()}
    load = [0.0] * HEAVY_LANES
    lanes: dict[str, str] = {}
    for module in sorted(cost, key=lambda m: (-cost[m], m)):
        lane = load.index(min(load))
        load[lane] += cost[module]
        lanes[module] = f"heavy-{lane}"
    return lanes


def _longest_first(items: list[pytest.Item]) -> None:
    """Order ``items`` so that the longest work is handed out first, each xdist group kept in
    one piece and in collection order inside: heavy lanes, then :data:`LONG_FILES` longest
    first, then other ``slow`` tests, then the rest."""
    position: dict[str, int] = {}
    rank: dict[str, tuple[int, float]] = {}
    for index, item in enumerate(items):
        marker = item.get_closest_marker("xdist_group")
        scope = str(marker.args[0]) if marker and marker.args else item.nodeid
        position.setdefault(scope, index)
        if item.get_closest_marker("heavy"):
            mine = (0, 0.0)
        elif _module(item) in LONG_FILES:
            mine = (1, -LONG_FILES[_module(item)])
        elif item.get_closest_marker("slow"):
            mine = (2, 0.0)
        else:
            mine = (3, 0.0)
        rank[scope] = min(rank.get(scope, mine), mine)

    def key(pair: tuple[int, pytest.Item]) -> tuple[int, float, int, int]:
        index, item = pair
        marker = item.get_closest_marker("xdist_group")
        scope = str(marker.args[0]) if marker and marker.args else item.nodeid
        return (*rank[scope], position[scope], index)

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


def pytest_configure(config: pytest.Config) -> None:
    """xdist hands groups out biggest first unless told otherwise: keep the order set below."""
    if getattr(config.option, "dist", None) == "loadgroup":
        config.option.loadscopereorder = False


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
        module = _module(item)
        if item.get_closest_marker("heavy"):
            _join(item, lanes[module])
        elif _shares_a_scoped_fixture(item):
            _join(item, module)
    _longest_first(items)


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
    """The sdist and the wheel built from this tree (`python -m build`), once per run (shared by
    the workers): the packaging tests and the README's quick-start walk install it."""
    with once_per_run(tmp_path_factory, "dist") as out:
        if not (out / ".built").exists():
            shutil.rmtree(out, ignore_errors=True)
            repo = Path(__file__).resolve().parents[1]
            built = subprocess.run(
                [sys.executable, "-m", "build", "--outdir", str(out), str(repo)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
            (out / ".built").touch()
    return out
