"""The op building blocks, run for real: a Dagster instance on disk, the emulator over loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pydantic
import pytest

from zimage_dagster import ZImageResource
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.ops import build_generate_images_op, load_prompts_op
from zimage_dagster.spec import GenerationOptions, ImageAssetSpec

ASSET = "ops_images"
ROWS_CSV = """key,prompt,size,seed,category
fox,"A red fox in fresh snow, morning light",16:9,7,animals
lighthouse,"A lighthouse at dusk, long exposure",1:1,,places
poster,"A retro travel poster for a trip to the moon",3:4,1960,posters
"""
REJECTED_PROMPT = "A forbidden ritual in a dark hall"


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def _job(storage: Path, emulator: EmulatorServer) -> dg.JobDefinition:
    generate = build_generate_images_op("generate_images", asset_key=ASSET, storage=str(storage))

    @dg.job(
        resource_defs={"zimage": ZImageResource(api_key=emulator.api_key, base_url=emulator.url)}
    )
    def images_job() -> None:
        generate(load_prompts_op())

    return images_job


def _run_config(path: Path, **extra: Any) -> dict[str, Any]:
    return {"ops": {"load_prompts": {"config": {"path": str(path), **extra}}}}


def _materializations(
    instance: dg.DagsterInstance, run_id: str
) -> dict[str, dict[str, dg.MetadataValue]]:
    records = instance.fetch_materializations(dg.AssetKey(ASSET), limit=100).records
    out = {}
    for record in records:
        if record.run_id != run_id:
            continue
        mat = record.asset_materialization
        assert mat is not None
        out[str(mat.partition)] = dict(mat.metadata)
    return out


def test_op_job_materializes_each_row_with_the_asset_metadata(
    emulator: EmulatorServer, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    dataset = tmp_path / "prompts.csv"
    dataset.write_text(ROWS_CSV)
    storage = tmp_path / "images"

    result = _job(storage, emulator).execute_in_process(
        run_config=_run_config(dataset), instance=instance
    )

    assert result.success
    records = result.output_for_node("generate_images")
    assert [r["partition_key"] for r in records] == ["fox", "lighthouse", "poster"]
    assert emulator.stats()["tasks_created"] == 3
    sent = {task["request"]["prompt"]: task["request"] for task in emulator.tasks()}

    mats = _materializations(instance, result.run_id)
    assert sorted(mats) == ["fox", "lighthouse", "poster"]
    for record in records:
        md = mats[record["partition_key"]]
        # The seed recorded is the seed sent; the task ID is the provider's.
        assert md["seed"].value == record["seed"] == sent[record["prompt"]]["seed"]
        assert md["task_id"].value == record["task_id"]
        assert record["task_id"].startswith("task-unified-")
        assert isinstance(md["width"], dg.IntMetadataValue)
        assert isinstance(md["generating_s"], dg.FloatMetadataValue)
        assert md["reused"].value is False
        assert str(md["thumbnail"].value).startswith("![")
        assert "data:image/" in str(md["thumbnail"].value)
        assert Path(str(md["path"].value)).is_file()
        provenance = json.loads(Path(record["path"]).with_suffix(".json").read_text())
        assert provenance["task_id"] == record["task_id"]
    assert mats["fox"]["seed"].value == 7
    assert mats["fox"]["category"].value == "animals"
    assert (mats["fox"]["width"].value, mats["fox"]["height"].value) == (1280, 720)
    # No key anywhere in what was recorded.
    assert emulator.api_key not in json.dumps(records)


def test_second_run_reuses_the_stored_images_without_new_tasks(
    emulator: EmulatorServer, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    dataset = tmp_path / "prompts.csv"
    dataset.write_text(ROWS_CSV)
    job = _job(tmp_path / "images", emulator)
    first = job.execute_in_process(run_config=_run_config(dataset), instance=instance)
    assert first.success
    created = emulator.stats()["tasks_created"]

    second = job.execute_in_process(run_config=_run_config(dataset), instance=instance)

    assert second.success
    assert emulator.stats()["tasks_created"] == created
    records = second.output_for_node("generate_images")
    assert all(r["reused"] for r in records)
    first_ids = {r["task_id"] for r in first.output_for_node("generate_images")}
    assert {r["task_id"] for r in records} == first_ids
    mats = _materializations(instance, second.run_id)
    assert all(md["reused"].value is True for md in mats.values())


def test_a_content_policy_row_fails_alone_with_the_providers_message(
    emulator: EmulatorServer, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    dataset = tmp_path / "prompts.csv"
    dataset.write_text(ROWS_CSV + f'rejected,"{REJECTED_PROMPT}",1:1,5,misc\n')

    result = _job(tmp_path / "images", emulator).execute_in_process(
        run_config=_run_config(dataset), instance=instance, raise_on_error=False
    )

    assert not result.success
    mats = _materializations(instance, result.run_id)
    assert sorted(mats) == ["fox", "lighthouse", "poster"]
    (failure_event,) = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
    ]
    failure = failure_event.step_failure_data.user_failure_data
    assert failure is not None
    rejected = next(t for t in emulator.tasks() if t["request"]["prompt"] == REJECTED_PROMPT)
    # The provider's own words, as its query route gives them.
    answer = httpx.get(
        f"{emulator.url}/v1/tasks/{rejected['id']}",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    ).json()
    provider_message = answer["error"]["message"]
    assert answer["error"]["code"] == "content_policy_violation"
    assert "1 of 4 image(s) failed (3 stored and materialized)" in (failure.description or "")
    assert "rejected: content_policy_violation" in (failure.description or "")
    assert provider_message.splitlines()[0] in (failure.description or "")
    assert failure.metadata["failed_rows"].value == {
        "rejected": f"content_policy_violation: {provider_message}"
    }
    assert emulator.stats()["tasks_created"] == 4


@pytest.mark.parametrize(
    ("prompt", "step_retries", "tasks"),
    [
        pytest.param(REJECTED_PROMPT, 0, 1, id="content-policy-not-retried"),
        pytest.param("A flaky generation of a harbour", 1, 2, id="service-error-retried"),
    ],
)
def test_only_retryable_failures_let_the_retry_policy_run_the_step_again(
    emulator: EmulatorServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    prompt: str,
    step_retries: int,
    tasks: int,
) -> None:
    emulator.configure(failure_rules=[{"pattern": "flaky", "code": "service_error"}])
    dataset = tmp_path / "prompts.csv"
    dataset.write_text(f'key,prompt,seed\nrow,"{prompt}",5\n')
    generate = build_generate_images_op(
        asset_key=ASSET,
        storage=str(tmp_path / "images"),
        retry_policy=dg.RetryPolicy(max_retries=1, delay=0),
    )
    resource = ZImageResource(api_key=emulator.api_key, base_url=emulator.url, max_resubmits=0)

    @dg.job(resource_defs={"zimage": resource})
    def images_job() -> None:
        generate(load_prompts_op())

    result = images_job.execute_in_process(
        run_config=_run_config(dataset), instance=instance, raise_on_error=False
    )

    assert not result.success
    retries = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert len(retries) == step_retries
    assert emulator.stats()["tasks_created"] == tasks


def test_load_prompts_op_selects_rows_and_reports_bad_ones(
    emulator: EmulatorServer, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    dataset = tmp_path / "prompts.csv"
    dataset.write_text(ROWS_CSV + "Bad Key!,a prompt with a bad key,1:1,,x\n")

    result = _job(tmp_path / "images", emulator).execute_in_process(
        run_config=_run_config(dataset, keys=["poster", "fox"]), instance=instance
    )

    assert result.success
    rows = result.output_for_node("load_prompts")
    assert [r["key"] for r in rows] == ["poster", "fox"]
    assert rows[1] == {
        "category": "animals",
        "key": "fox",
        "prompt": "A red fox in fresh snow, morning light",
        "size": "16:9",
        "seed": 7,
    }
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.level in (logging.WARNING, "WARNING") and "row left out" in (e.message or "")
    ]
    assert any("row 5" in w and "'key'" in w for w in warnings)
    assert emulator.stats()["tasks_created"] == 2


def test_a_missing_key_fails_the_load_step(
    emulator: EmulatorServer, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    dataset = tmp_path / "prompts.csv"
    dataset.write_text(ROWS_CSV)

    result = _job(tmp_path / "images", emulator).execute_in_process(
        run_config=_run_config(dataset, keys=["nope"]), instance=instance, raise_on_error=False
    )

    assert not result.success
    assert emulator.stats()["tasks_created"] == 0


def test_the_op_takes_the_assets_option_model(tmp_path: Path) -> None:
    """Each option is described once (GenerationOptions, shared with ImageAssetSpec): the op
    validates its options with the same messages, and refuses one it does not know."""
    assert set(GenerationOptions.model_fields) <= set(ImageAssetSpec.model_fields)
    with pytest.raises(pydantic.ValidationError, match="default_size"):
        build_generate_images_op(asset_key=ASSET, storage=str(tmp_path), default_size="7:5")
    with pytest.raises(pydantic.ValidationError, match="no_such_option"):
        build_generate_images_op(asset_key=ASSET, no_such_option=1)


def test_the_op_resolves_its_storage_as_the_assets_do(
    emulator: EmulatorServer,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No storage given: $ZIMAGE_STORAGE_URL (resolve_storage), not a folder of the cwd."""
    storage = tmp_path / "from_env"
    monkeypatch.setenv("ZIMAGE_STORAGE_URL", str(storage))
    dataset = tmp_path / "prompts.csv"
    dataset.write_text(ROWS_CSV)
    generate = build_generate_images_op("generate_images", asset_key=ASSET)

    @dg.job(
        resource_defs={"zimage": ZImageResource(api_key=emulator.api_key, base_url=emulator.url)}
    )
    def images_job() -> None:
        generate(load_prompts_op())

    result = images_job.execute_in_process(
        run_config=_run_config(dataset, keys=["fox"]), instance=instance
    )
    assert result.success
    [record] = result.output_for_node("generate_images")
    assert Path(record["path"]).is_relative_to(storage)
    assert emulator.stats()["tasks_created"] == 1
