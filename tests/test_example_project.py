"""The example project at the repository root: it loads, validates, and `make demo` works twice."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from examples.demo import PARTITION_WIDTH, TABLE_WIDTH, _clip
from zimage_dagster import load_prompts
from zimage_dagster.emulator import EmulatorServer

REPO_ROOT = Path(__file__).resolve().parent.parent
CATALOGUE_KEYS = load_prompts(REPO_ROOT / "examples" / "prompts.csv").keys


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A child environment: no API settings from the caller, temp instance and storage."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "ZIMAGE_API_KEY",
            "ZIMAGE_BASE_URL",
            "ZIMAGE_STORAGE_URL",
            "ZIMAGE_GALLERY_URL",
            "DAGSTER_HOME",
        )
    }
    env.update(
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        ZIMAGE_STORAGE_URL=str(tmp_path / "zimage_output"),
        DAGSTER_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    return env


def _dagster(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The `dagster` CLI on the repository's project, in a child environment."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), *args],
        cwd=REPO_ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZIMAGE_STORAGE_URL", str(tmp_path / "zimage_output"))
    monkeypatch.setenv("ZIMAGE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("ZIMAGE_API_KEY", raising=False)
    return tmp_path / "zimage_output"


def test_definitions_load_with_every_part(project_env: Path) -> None:
    import definitions

    defs = importlib.reload(definitions).defs
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {
        "catalogue_images",
        "contact_sheet",
        "daily_hero",
        "ops_images",
        "dynamic_images",
        "deferred_images",
    } <= keys
    catalogue = graph.get(dg.AssetKey("catalogue_images")).partitions_def
    assert catalogue is not None
    assert catalogue.get_partition_keys() == CATALOGUE_KEYS
    assert dg.AssetKey("catalogue_images") in graph.get(dg.AssetKey("contact_sheet")).parent_keys
    daily = graph.get(dg.AssetKey("daily_hero")).partitions_def
    assert isinstance(daily, dg.MultiPartitionsDefinition)
    for job in ("catalogue_images_job", "contact_sheet_job", "daily_hero_job", "zimage_ops_job"):
        assert defs.resolve_job_def(job).name == job
    assert defs.resolve_schedule_def("daily_hero_schedule").cron_schedule == "0 6 * * *"
    resources = defs.resources or {}
    assert resources["zimage"].base_url == "http://127.0.0.1:9"
    assert resources["zimage_images"].root == str(project_env)


def test_dagster_lists_every_sensor_and_schedule_the_example_shows(tmp_path: Path) -> None:
    """`make dev` shows each capability: the dynamic asset's dataset sensor, the deferred asset's
    task-status sensor, the daily schedule (and the contact sheet's automation sensor)."""

    def listed(kind: str) -> str:
        proc = _dagster(tmp_path, kind, "list", "-f", "definitions.py")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    sensors = listed("sensor")
    for name in ("dynamic_images_prompt_dataset", "deferred_images_task_status"):
        assert f"Sensor: {name}" in sensors, sensors
    assert "Schedule: daily_hero_schedule" in listed("schedule")


def test_base_url_defaults_to_the_real_api(
    project_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZIMAGE_BASE_URL")
    from examples.project import DEFAULT_BASE_URL, build_defs

    assert DEFAULT_BASE_URL == "https://api.evolink.ai"
    resources = build_defs().resources or {}
    assert resources["zimage"].base_url == DEFAULT_BASE_URL


@pytest.mark.parametrize(
    "target", [["-w", "workspace.yaml"], ["-f", "definitions.py"]], ids=["workspace", "file"]
)
def test_dagster_definitions_validate_passes(tmp_path: Path, target: list[str]) -> None:
    proc = _dagster(tmp_path, "definitions", "validate", *target)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


def test_ops_job_of_the_example_project(emulator: EmulatorServer, tmp_path: Path) -> None:
    from examples.project import build_ops_job

    job = build_ops_job(str(tmp_path / "out"))
    from zimage_dagster import ZImageResource

    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = job.execute_in_process(
            instance=instance,
            resources={"zimage": ZImageResource(api_key=emulator.api_key, base_url=emulator.url)},
        )
        assert result.success
        sheet = Path(result.output_for_node("ops_contact_sheet"))
        assert sheet == tmp_path / "out" / "contact_sheets" / "ops_contact_sheet.png"
        with Image.open(sheet) as image:
            assert image.format == "PNG"
            assert image.width > 400
        partitions = instance.get_materialized_partitions(dg.AssetKey("ops_images"))
        assert partitions == set(CATALOGUE_KEYS[:4])
        assert instance.get_latest_materialization_event(dg.AssetKey("ops_contact_sheet"))
    assert emulator.stats()["tasks_created"] == 4


_ROW = re.compile(
    r"^(\S+)\s+(\d+)\s+(task-unified-\d+-[a-z0-9]{8})\s+(\d+x\d+)\s+(new|reused)\s+(.+)$"
)


def _table_rows(stdout: str) -> dict[str, tuple[str, ...]]:
    """partition key -> (seed, task ID, size, status, prompt start), from the demo's table (at
    most 120 columns wide; long keys are shown clipped, and mapped back here)."""
    shown = {_clip(key, PARTITION_WIDTH): key for key in CATALOGUE_KEYS}
    rows = {}
    for line in stdout.splitlines():
        match = _ROW.match(line.strip())
        if match:
            assert len(line) <= TABLE_WIDTH, line
            rows[shown[match.group(1)]] = match.groups()[1:]
    return rows


def _demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.heavy
def test_demo_runs_end_to_end_twice_and_the_second_run_costs_nothing(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    storage = tmp_path / "zimage_output"

    # First run: no key, so the demo starts its own emulator.
    first = _demo(_env(tmp_path, ZIMAGE_DEMO_LATENCY="0.3"))

    assert first.returncode == 0, first.stdout + first.stderr
    assert "using the local emulator at http://127.0.0.1:" in first.stdout
    rows = _table_rows(first.stdout)
    assert sorted(rows) == sorted(CATALOGUE_KEYS)
    assert {row[3] for row in rows.values()} == {"new"}
    assert rows["fox-kit"][4].startswith("A curious red fox cub")
    assert f"{len(CATALOGUE_KEYS)} images: {len(CATALOGUE_KEYS)} new, 0 reused, 0 failed" in (
        first.stdout
    )
    for key in CATALOGUE_KEYS:
        assert (storage / "catalogue_images" / f"{key}.webp").is_file()
        assert (storage / "catalogue_images" / f"{key}.json").is_file()
    sheet = storage / "contact_sheets" / "contact_sheet.png"
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        assert image.width >= 4 * 200
    assert f"Contact sheet: {sheet}" in first.stdout
    assert "make dev" in first.stdout
    assert "Gallery:       http://127.0.0.1:3001/assets/catalogue_images/" in first.stdout
    assert rows["espresso-hero"][0] == "12345"  # the dataset's seed, sent and shown
    assert rows["perfume-bottle"][2] == "864x1152"

    # Second run, against an emulator we watch: every image is reused, no task is created.
    second = _demo(_env(tmp_path, ZIMAGE_API_KEY=emulator.api_key, ZIMAGE_BASE_URL=emulator.url))

    assert second.returncode == 0, second.stdout + second.stderr
    assert emulator.stats()["tasks_created"] == 0
    again = _table_rows(second.stdout)
    assert sorted(again) == sorted(CATALOGUE_KEYS)
    assert {row[3] for row in again.values()} == {"reused"}
    assert "Nothing new: every image was already stored" in second.stdout
    assert {k: v[:3] for k, v in again.items()} == {k: v[:3] for k, v in rows.items()}

    # Both runs are in the persistent instance that `make dev` would show.
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        jobs = [run.job_name for run in instance.get_runs()]
        assert sorted(jobs) == sorted(["catalogue_images_job", "contact_sheet_job"] * 2)
        assert instance.get_materialized_partitions(dg.AssetKey("catalogue_images")) == set(
            CATALOGUE_KEYS
        )


@pytest.mark.slow
@pytest.mark.heavy
def test_demo_exits_non_zero_with_a_clear_message_when_an_image_fails(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    emulator.configure(failure_rules=[{"pattern": "(?i)jazz", "code": "content_policy_violation"}])

    run = _demo(_env(tmp_path, ZIMAGE_API_KEY=emulator.api_key, ZIMAGE_BASE_URL=emulator.url))

    assert run.returncode == 1, run.stdout + run.stderr
    assert "DEMO FAILED: 1 image(s) failed" in run.stderr
    assert re.search(r"^jazz-poster +- +- +- +FAILED", run.stdout, re.M)
    assert re.search(r"^FAILED jazz-poster: content_policy_violation", run.stdout, re.M)
    assert len(_table_rows(run.stdout)) == len(CATALOGUE_KEYS) - 1
    # The stored images still make a contact sheet.
    assert (tmp_path / "zimage_output" / "contact_sheets" / "contact_sheet.png").is_file()


def test_the_contact_sheet_is_redrawn_after_new_images_only(
    project_env: Path, tmp_path: Path
) -> None:
    from examples.project import build_defs

    defs = build_defs()
    sheet = dg.AssetKey("contact_sheet")
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        # No image yet: a missing sheet alone requests nothing.
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.get_num_requested(sheet) == 0

        # Some images arrive (a rejected row may leave others missing): the sheet is requested once.
        for key in CATALOGUE_KEYS[:3]:
            instance.report_runless_asset_event(
                dg.AssetMaterialization("catalogue_images", partition=key)
            )
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert result.get_num_requested(sheet) == 1
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert result.get_num_requested(sheet) == 0

        # Drawn; then one more image: requested again.
        instance.report_runless_asset_event(dg.AssetMaterialization(sheet))
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert result.get_num_requested(sheet) == 0
        instance.report_runless_asset_event(
            dg.AssetMaterialization("catalogue_images", partition=CATALOGUE_KEYS[5])
        )
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor
        )
        assert result.get_num_requested(sheet) == 1
