"""The contract matrix: partitioning x mode x entry point, with real runs against the emulator.

For each cell: three partitions are materialized (deferred: submitted, then collected by the runs
the task-status sensor requests); downstream assets load them through the IO manager as bytes,
PIL images and paths; the sensors and schedule the README promises for the cell exist and
evaluate (the dataset sensor adds the dynamic partitions, the schedule names the daily ones); a
re-run creates no task. The factory and the component (from YAML) build the same definitions
for the same options. The op job (static, blocking) goes through the same engine.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster.components.core.component_tree import ComponentTree
from PIL import Image

from tests.dagster._support import SMALL, make_fast, resource_for, schedule_requests
from tests.sensors._support import tick, wait_terminal
from zimage_dagster import (
    ImageStoreIOManager,
    ZImageComponent,
    ZImageResource,
    build_image_assets,
)
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.collect import COLLECT_TAG
from zimage_dagster.ops import build_generate_images_op, load_prompts_op

KEYS = ["fox", "owl", "elk"]
TODAY = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")  # once: a run may cross midnight
CELLS = [(p, m) for p in ("static", "dynamic", "daily") for m in ("blocking", "deferred")]
#: Every cell makes two candidates per partition (one task each): variants=1, the default, is
#: what every other test of the entry points runs (tests/dagster, tests/component, tests/sensors).
VARIANTS = 2


def _options(tmp_path: Path, partitioning: str, mode: str) -> dict[str, Any]:
    csv = tmp_path / "prompts.csv"
    csv.write_text(
        "key,prompt,size\n" + "".join(f"{k},a small {k} in the snow,{SMALL}\n" for k in KEYS),
        encoding="utf-8",
    )
    options: dict[str, Any] = {
        "prompts": str(csv),
        "storage": str(tmp_path / "images"),
        "partitioning": partitioning,
        "mode": mode,
        "variants": VARIANTS,
    }
    if partitioning == "daily":
        options.update(daily_start_date=TODAY, schedule={"cron": "0 6 * * *"})
    return options


def factory_defs(options: dict[str, Any]) -> dg.Definitions:
    rest = {k: v for k, v in options.items() if k != "prompts"}
    return build_image_assets("imgs", options["prompts"], retry_policy=None, **rest)


def component_defs(options: dict[str, Any]) -> dg.Definitions:
    yaml = json.dumps({"asset_name": "imgs", "retry": None, **options})  # JSON is YAML
    component = ZImageComponent.resolve_from_yaml(yaml)
    return component.build_defs(ComponentTree.for_test().load_context)


ENTRIES: dict[str, Callable[[dict[str, Any]], dg.Definitions]] = {
    "factory": factory_defs,
    "component": component_defs,
}


def shape(defs: dg.Definitions) -> dict[str, Any]:
    """What a user gets, comparable: assets, checks, partitions, policies, sensors, schedules."""
    with_resource = dg.Definitions.merge(
        defs, dg.Definitions(resources={"zimage": ZImageResource()})
    )
    graph = with_resource.resolve_asset_graph()
    repository = with_resource.get_repository_def()
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "partitions": repr(node.partitions_def),
            "kinds": sorted(node.kinds),
            "checks": sorted(c.name for c in graph.get_check_keys_for_assets({key})),
            "backfill": repr(node.backfill_policy),
            "retry": repr(node.retry_policy) if hasattr(node, "retry_policy") else None,
            "metadata": sorted(node.metadata),
        }
    return {
        "assets": assets,
        "sensors": sorted(
            (s.name, s.job_name, s.default_status.value, s.minimum_interval_seconds)
            for s in repository.sensor_defs
        ),
        "schedules": sorted(
            (s.name, s.cron_schedule, s.execution_timezone, s.job_name)
            for s in repository.schedule_defs
        ),
        "jobs": sorted(
            j.name for j in with_resource.resolve_all_job_defs() if not j.name.startswith("__")
        ),
    }


def _expected_automations(partitioning: str, mode: str) -> tuple[list[str], list[str]]:
    sensors = ["imgs_review_sensor"]  # every image asset's (stopped by default)
    if mode == "deferred":
        sensors.append("imgs_task_status")
    if partitioning == "dynamic":
        sensors.append("imgs_prompt_dataset")
    schedules = ["imgs_schedule"] if partitioning == "daily" else []
    return sorted(sensors), schedules


# -- the cells ----------------------------------------------------------------------------------


def _partition_keys(
    defs: dg.Definitions, partitioning: str, instance: dg.DagsterInstance
) -> list[str]:
    """The three partitions, as the cell's own sensor or schedule names them."""
    if partitioning == "static":
        return KEYS
    if partitioning == "dynamic":
        result = tick(defs.resolve_sensor_def("imgs_prompt_dataset"), instance)
        (add,) = result.dynamic_partitions_requests
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        assert sorted(str(r.partition_key) for r in result.run_requests) == sorted(KEYS)
        return KEYS
    # The tick of TODAY's 06:00, whatever the clock says now (the module may have been loaded
    # before midnight: the wall clock would then name tomorrow's partitions).
    when = dt.datetime.fromisoformat(f"{TODAY}T06:00:00+00:00")
    requests = schedule_requests(defs, "imgs_schedule", when)
    keys = sorted(str(r.partition_key) for r in requests)
    assert keys == sorted(f"{TODAY}|{k}" for k in KEYS)
    return keys


def _materialize(
    defs: dg.Definitions,
    partitioning: str,
    mode: str,
    keys: list[str],
    instance: dg.DagsterInstance,
    emulator: EmulatorServer,
    resource: ZImageResource,
) -> None:
    job = defs.resolve_job_def("imgs_job")
    if partitioning == "daily":  # date x prompt keys: one run each
        for key in keys:
            assert job.execute_in_process(instance=instance, partition_key=key).success
    else:  # one run over the range (a single-run backfill)
        tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        assert job.execute_in_process(instance=instance, tags=tags).success
    if mode == "deferred":
        wait_terminal(emulator, VARIANTS * len(keys))
        result = tick(defs.resolve_sensor_def("imgs_task_status"), instance, resource)
        assert len(result.run_requests) == 1  # one collect run for the whole batch
        for request in result.run_requests:
            assert COLLECT_TAG in request.tags
            collected = job.execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags
            )
            assert collected.success


def _load_downstream(
    defs: dg.Definitions, keys: list[str], instance: dg.DagsterInstance, root: str
) -> None:
    """Three downstream assets load every partition through the IO manager."""
    images = defs.resolve_assets_def("imgs")
    seen: dict[str, Any] = {}

    def loader(kind: str) -> dg.AssetsDefinition:
        @dg.asset(
            name=f"as_{kind}",
            ins={
                "imgs": dg.AssetIn(
                    input_manager_key="zimage_images",
                    partition_mapping=dg.AllPartitionMapping(),
                    metadata={"as": kind},
                )
            },
        )
        def _load(imgs: Any) -> None:
            seen[kind] = imgs

        return _load

    loaders = [loader("bytes"), loader("pil"), loader("path")]
    result = dg.materialize(
        [images.to_source_asset(), *loaders],
        instance=instance,
        resources={"zimage_images": ImageStoreIOManager(root=root)},
        selection=[a.key for a in loaders],
    )
    assert result.success
    assert sorted(seen["bytes"]) == sorted(keys)
    assert all(isinstance(v, bytes) and len(v) > 100 for v in seen["bytes"].values())
    assert all(isinstance(v, Image.Image) and v.size == (376, 376) for v in seen["pil"].values())
    assert all(Path(str(v)).is_file() for v in seen["path"].values())


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize(("partitioning", "mode"), CELLS, ids=[f"{p}-{m}" for p, m in CELLS])
def test_cell(
    entry: str,
    partitioning: str,
    mode: str,
    emulator: EmulatorServer,
    tmp_path: Path,
) -> None:
    make_fast(emulator)
    options = _options(tmp_path, partitioning, mode)
    built = ENTRIES[entry](options)
    sensors, schedules = _expected_automations(partitioning, mode)
    assert shape(built)["sensors"] == [s for s in shape(built)["sensors"] if s[0] in sensors]
    assert [s[0] for s in shape(built)["sensors"]] == sensors
    assert [s[0] for s in shape(built)["schedules"]] == schedules

    resource = resource_for(emulator)
    defs = dg.Definitions.merge(built, dg.Definitions(resources={"zimage": resource}))
    with dg.DagsterInstance.ephemeral() as instance:
        keys = _partition_keys(defs, partitioning, instance)
        _materialize(defs, partitioning, mode, keys, instance, emulator, resource)
        created = emulator.stats()["tasks_created"]
        assert created == VARIANTS * len(keys)
        _load_downstream(defs, keys, instance, options["storage"])
        # A re-run of the same partitions reuses what is stored: no task is created.
        _materialize(defs, partitioning, "blocking", keys, instance, emulator, resource)
        assert emulator.stats()["tasks_created"] == created


@pytest.mark.parametrize(("partitioning", "mode"), CELLS, ids=[f"{p}-{m}" for p, m in CELLS])
def test_factory_and_component_build_the_same_definitions(
    partitioning: str, mode: str, tmp_path: Path
) -> None:
    options = _options(tmp_path, partitioning, mode)
    assert shape(factory_defs(options)) == shape(component_defs(options))


def test_op_job_cell(emulator: EmulatorServer, tmp_path: Path) -> None:
    """The op job (static rows, blocking): same engine, same store; loads downstream; 0 re-paid."""
    make_fast(emulator)
    options = _options(tmp_path, "static", "blocking")
    op = build_generate_images_op(
        "generate", asset_key="imgs", storage=options["storage"], variants=VARIANTS
    )

    @dg.job
    def images_job() -> None:
        op(load_prompts_op())

    rows = [{"key": k, "prompt": f"a small {k} in the snow", "size": SMALL} for k in KEYS]
    run_config = {"ops": {"load_prompts": {"config": {"path": options["prompts"]}}}}
    resources = {"zimage": resource_for(emulator)}
    with dg.DagsterInstance.ephemeral() as instance:
        for _ in range(2):
            result = images_job.execute_in_process(
                run_config=run_config, instance=instance, resources=resources
            )
            assert result.success
            assert emulator.stats()["tasks_created"] == VARIANTS * len(KEYS)
            records = result.output_for_node("generate")
            assert sorted((r["partition_key"], r["candidate"]) for r in records) == sorted(
                (k, i) for k in KEYS for i in range(VARIANTS)
            )
        # The op's images are the asset "imgs" of static partitions: load them downstream.
        images = dg.Definitions.merge(
            build_image_assets("imgs", rows, storage=options["storage"], variants=VARIANTS),
            dg.Definitions(resources=resources),
        )
        _load_downstream(images, KEYS, instance, options["storage"])
