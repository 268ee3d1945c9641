"""One regression test per seam of issue 11 (the copies of a rule that had drifted apart).

Each test fails on the code before the rebuild. Point 7 (the README's example under the
`dagster` CLI) is in tests/test_readme.py; point 8 (doctests) is `pytest --doctest-modules
zimage_dagster` in `make test`, plus the factory's own example here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import doctest
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

import zimage_dagster.assets as assets_module
from tests.dagster._support import (
    SMALL,
    failure_message,
    image_asset,
    make_fast,
    resource_for,
    rows,
    run_one,
    schedule_requests,
    step_failure,
)
from zimage_dagster import ImageStoreIOManager, ZImageResource, build_image_assets
from zimage_dagster.api import AsyncZImageClient, PollPolicy
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.collect import TaskWatcher
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.store import STORAGE_URL_ENV, ImageStore
from zimage_dagster.prompts import PromptRow
from zimage_dagster.step import submit_deferred


def _sensor_names(defs: dg.Definitions) -> list[str]:
    """The asset's sensors but its review sensor (every image asset has one)."""
    return sorted(s.name for s in defs.sensors or [] if not s.name.endswith("_review_sensor"))


def _csv(path: Path, keys: list[str]) -> Path:
    path.write_text(
        "key,prompt,size\n" + "".join(f"{k},a fox number {k},{SMALL}\n" for k in keys),
        encoding="utf-8",
    )
    return path


# -- 1. the IO manager loads daily (date x prompt) partitions ----------------------------------


def test_1_io_manager_loads_a_daily_partition(tmp_path: Path) -> None:
    images = image_asset(
        build_image_assets(
            "daily", rows(1), storage=tmp_path, partitioning="daily", daily_start_date="2026-01-01"
        )
    )
    key = "2026-01-01|p0"
    png = tmp_path / "img.png"
    Image.new("RGB", (8, 8), "teal").save(png)
    ImageStore(tmp_path).save("daily", key, png.read_bytes(), "png", {"sha256": "x"})

    @dg.asset(
        partitions_def=images.partitions_def,
        ins={"daily": dg.AssetIn(input_manager_key="zimage_images")},
    )
    def thumbs(daily: Image.Image) -> None:
        assert daily.size == (8, 8)

    result = dg.materialize(
        [images.to_source_asset(), thumbs],
        partition_key=key,
        resources={"zimage_images": ImageStoreIOManager(root=str(tmp_path))},
        selection=[thumbs],
    )
    assert result.success


# -- 2 and 3. one function decides the sensors ---------------------------------------------------


def test_2_a_dynamic_factory_asset_has_its_dataset_sensor_in_blocking_mode(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "prompts.csv", ["a"])
    defs = build_image_assets("imgs", csv, storage=tmp_path, partitioning="dynamic")
    assert _sensor_names(defs) == ["imgs_prompt_dataset"]


def test_3_dataset_sensor_false_is_honoured_in_deferred_mode(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "prompts.csv", ["a"])
    options = {"storage": tmp_path, "partitioning": "dynamic", "mode": "deferred"}
    defs = build_image_assets("imgs", csv, dataset_sensor=False, **options)
    assert _sensor_names(defs) == ["imgs_task_status"]
    assert _sensor_names(build_image_assets("imgs", csv, **options)) == [
        "imgs_prompt_dataset",
        "imgs_task_status",
    ]


# -- 4. a create whose answer was lost is not retried, in either mode ---------------------------


@pytest.mark.parametrize("mode", ["blocking", "deferred"])
def test_4_create_outcome_unknown_is_not_retried_in_either_mode(
    emulator: EmulatorServer, tmp_path: Path, mode: str
) -> None:
    # The server creates the task and the answer is lost: retrying blindly may pay twice.
    make_fast(
        emulator,
        http_faults=[{"route": "create", "action": "truncate", "after_create": True, "count": 1}],
    )
    policy = dg.RetryPolicy(max_retries=2, delay=0)
    asset = image_asset(
        build_image_assets("imgs", rows(1), storage=tmp_path, retry_policy=policy, mode=mode)
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_one(asset, instance, resource_for(emulator), "p0")
    assert not result.success
    assert "create_outcome_unknown" in failure_message(result)
    restarts = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_RESTARTED]
    assert restarts == []
    assert emulator.stats()["tasks_created"] == 1
    assert step_failure(result).step_failure_data.error is not None


# -- 5. the daily schedule never fails a tick because the dataset changed -------------------------


def test_5_a_row_added_after_load_does_not_fail_the_daily_schedule(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "daily.csv", ["a", "b"])
    defs = dg.Definitions.merge(
        build_image_assets(
            "daily",
            csv,
            storage=tmp_path,
            partitioning="daily",
            daily_start_date="2026-01-01",
            schedule={"cron": "0 6 * * *"},
        ),
        dg.Definitions(resources={"zimage": ZImageResource()}),
    )
    _csv(csv, ["a", "b", "c"])  # a row added after the code location loaded
    assert defs.resolve_schedule_def("daily_schedule").cron_schedule == "0 6 * * *"
    tick = dt.datetime(2026, 3, 4, 6, 0, tzinfo=dt.timezone.utc)
    requests = schedule_requests(defs, "daily_schedule", tick)
    assert sorted(str(r.partition_key) for r in requests) == ["2026-03-04|a", "2026-03-04|b"]


# -- 6. ZIMAGE_STORAGE_URL is the default storage ----------------------------------------------


def test_6_zimage_storage_url_is_where_images_go_by_default(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "from_env"
    monkeypatch.setenv(STORAGE_URL_ENV, str(root))
    monkeypatch.chdir(tmp_path)
    make_fast(emulator)
    asset = image_asset(build_image_assets("imgs", rows(1), retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_one(asset, instance, resource_for(emulator), "p0").success
    assert ImageStore(root).partitions("imgs") == ["p0"]
    assert TaskLedger(ImageStore(root)).get("imgs", "p0") is not None
    assert not (tmp_path / "zimage_output").exists()
    # An explicit argument still wins.
    explicit = image_asset(build_image_assets("imgs", rows(1), storage=tmp_path / "arg"))
    assert explicit.metadata_by_key[explicit.key]["storage"].value == str(tmp_path / "arg")


# -- 8. the factory's docstring example runs ------------------------------------------------------


def test_8_the_factory_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    (test,) = [t for t in finder.find(assets_module) if t.name.endswith("build_image_assets")]
    result = doctest.DocTestRunner().run(test)
    assert result.attempted > 0
    assert result.failed == 0


# -- 9. the ledger holds the partition key itself ------------------------------------------------


def test_9_a_static_key_that_looks_like_a_date_pair_is_collected_under_its_own_key(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    # "2026-01-02__fox" is a valid dataset key; the old date heuristic turned it into the
    # multi-partition key "2026-01-02|fox", which the asset does not have.
    make_fast(emulator)
    key = "2026-01-02__fox"
    ledger = TaskLedger(ImageStore(tmp_path))
    job = ImageJob.from_row(PromptRow(key, "a red fox", SMALL, 5, None), seed=5)
    submit_deferred(resource_for(emulator), ledger, ("imgs",), [job])

    async def tick() -> list[str]:
        poll = PollPolicy(initial_interval=0.05, min_interval=0.05, max_interval=0.1)
        async with AsyncZImageClient(
            api_key=emulator.api_key, base_url=emulator.url, poll=poll
        ) as client:
            task = await client.get_task(ledger.get("imgs", key).task_id)  # type: ignore[union-attr]
            await client.wait(task)
            report = await TaskWatcher(ledger, ("imgs",)).tick(client)
        return [key for batch in report.batches for key in batch.partitions]

    assert asyncio.run(tick()) == [key]
    assert ledger.get("imgs", key).partition_key == key  # type: ignore[union-attr]
