"""The README's Install and Quick start, walked end to end against the built wheel (one fresh
venv for both roads, one emulator): the `dg` road ends with `dg dev`'s own GraphQL showing the
3 partitions materialized, the plain road with `dagster dev`'s; a re-run creates no task."""

from __future__ import annotations

from pathlib import Path

import pytest

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

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1500)  # a fresh venv's install, two UIs: minutes on a loaded 2-core machine
def test_the_quick_start_walks_from_the_wheel(dist: Path, tmp_path: Path) -> None:
    quick = QuickStart.from_readme()
    venv = Venv(tmp_path / "venv")
    env = venv.env(DAGSTER_DISABLE_TELEMETRY="1")
    run_lines([install_line(quick.install, _wheel(dist))], tmp_path, env, 0)
    for tool in ("dagster-webserver", "dagster-dg-cli", "create-dagster"):
        assert venv.installed(tool) == venv.installed("dagster"), tool  # one Dagster release
    for dev_tool in ("pytest", "mypy", "playwright"):  # the package as a user gets it
        code = f"import importlib.util as u; print(u.find_spec({dev_tool!r}) is None)"
        assert run_lines([f"python -c {code!r}"], tmp_path, env, 0).strip() == "True", dev_tool

    with readme_emulator(quick.emulator, env, tmp_path / "emulator.log") as url:
        port = int(url.rsplit(":", 1)[1])
        road = tmp_path / "dg-road"
        road.mkdir()
        stats = walk_to_ui(quick.dg_road, road, env, port, "hero_images", 3, road / "ui.log")
        assert stats["numPartitions"] == 3, stats
        assert tasks_created(url) == 3
        run_lines(session_lines(quick.dg_road, "dg launch"), road, env, port)
        assert tasks_created(url) == 3, "a re-run paid again for a stored image"

        walk_plain_road(quick, tmp_path / "plain-road", env, url)
