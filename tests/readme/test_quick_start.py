"""The README's Install and Quick start, walked end to end against the built wheel: one fresh
venv made by the Install line (once per run, whichever road asks first), each road with its own
emulator. The `dg` road ends with `dg dev`'s own GraphQL showing the 3 partitions materialized,
the plain road with `dagster dev`'s; on each, a re-run creates no task.

The two roads are two tests so that two workers walk them at once (each is minutes on a loaded
2-core machine: walked one after the other, they were the longest test of the suite).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests._support import once_per_run
from tests.packaging.test_wheel import Venv, _wheel
from tests.readme.walk import (
    QuickStart,
    install_line,
    readme_emulator,
    run_lines,
    session_lines,
    tasks_created,
    walk_plain_road,
    walk_to_ui,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),  # a fresh venv's install, a UI: minutes on a loaded 2-core machine
]


@pytest.fixture(scope="session")
def quick() -> QuickStart:
    return QuickStart.from_readme()


@pytest.fixture(scope="session")
def installed(quick: QuickStart, dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv holding what the README's Install line installs (the wheel in place of
    `zimage-dagster`), made once per run: the first road to ask makes it, the other waits."""
    with once_per_run(tmp_path_factory, "quick-start-venv") as root:
        if (root / ".installed").exists():
            return Venv.existing(root)
        shutil.rmtree(root, ignore_errors=True)
        venv = Venv(root)
        env = venv.env(DAGSTER_DISABLE_TELEMETRY="1")
        run_lines([install_line(quick.install, _wheel(dist))], root, env, 0)
        (root / ".installed").touch()
        return venv


def test_the_install_line_gives_one_dagster_release_and_no_dev_tool(
    installed: Venv, tmp_path: Path
) -> None:
    env = installed.env(DAGSTER_DISABLE_TELEMETRY="1")
    for tool in ("dagster-webserver", "dagster-dg-cli", "create-dagster"):
        assert installed.installed(tool) == installed.installed("dagster"), tool  # one release
    for dev_tool in ("pytest", "mypy", "playwright"):  # the package as a user gets it
        code = f"import importlib.util as u; print(u.find_spec({dev_tool!r}) is None)"
        assert run_lines([f"python -c {code!r}"], tmp_path, env, 0).strip() == "True", dev_tool


def test_the_dg_road_walks_from_the_wheel(
    quick: QuickStart, installed: Venv, tmp_path: Path
) -> None:
    env = installed.env(DAGSTER_DISABLE_TELEMETRY="1")
    with readme_emulator(quick.emulator, env, tmp_path / "emulator.log") as url:
        port = int(url.rsplit(":", 1)[1])
        road = tmp_path / "dg-road"
        road.mkdir()
        stats = walk_to_ui(quick.dg_road, road, env, port, "hero_images", 3, road / "ui.log")
        assert stats["numPartitions"] == 3, stats
        assert tasks_created(url) == 3
        run_lines(session_lines(quick.dg_road, "dg launch"), road, env, port)
        assert tasks_created(url) == 3, "a re-run paid again for a stored image"


def test_the_plain_road_walks_from_the_wheel(
    quick: QuickStart, installed: Venv, tmp_path: Path
) -> None:
    env = installed.env(DAGSTER_DISABLE_TELEMETRY="1")
    with readme_emulator(quick.emulator, env, tmp_path / "emulator.log") as url:
        walk_plain_road(quick, tmp_path / "plain-road", env, url)
        assert tasks_created(url) == 3  # its own emulator: the road's 3 images, once
