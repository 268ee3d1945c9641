"""Shared helpers of the deferred-mode tests: specs, resources, jobs and sensor ticks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from zimage_dagster.assets import build_image_definitions
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import PromptRow
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import ImageAssetSpec
from zimage_dagster.step import submit_deferred

ROWS: list[dict[str, Any]] = [
    {"key": "fox", "prompt": "a red fox in the snow", "size": "1:1", "seed": 11},
    {"key": "owl", "prompt": "an owl on a branch at night", "size": "4:3", "seed": 22},
    {"key": "elk", "prompt": "an elk by a frozen lake", "size": "3:4", "seed": 33},
]


def make_spec(
    storage: Path | str, rows: Sequence[dict[str, Any]] | str = ROWS, **kw: Any
) -> ImageAssetSpec:
    return ImageAssetSpec(
        asset_name=kw.pop("name", "cards"), prompts=rows, storage=str(storage), **kw
    )


def make_resource(emulator: EmulatorServer, **kw: Any) -> ZImageResource:
    return ZImageResource(
        api_key=emulator.api_key, base_url=emulator.url, max_poll_interval=0.2, **kw
    )


def make_defs(
    spec: ImageAssetSpec, resource: ZImageResource, *extra: dg.Definitions
) -> dg.Definitions:
    return dg.Definitions.merge(
        build_image_definitions(spec), *extra, dg.Definitions(resources={"zimage": resource})
    )


def jobs_for(rows: Sequence[dict[str, Any]] = ROWS) -> list[ImageJob]:
    return [
        ImageJob(
            partition_key=r["key"],
            row=PromptRow(r["key"], r["prompt"], r.get("size"), r["seed"], None),
            seed=r["seed"],
        )
        for r in rows
    ]


def ledger_of(spec: ImageAssetSpec) -> TaskLedger:
    return TaskLedger(ImageStore(spec.storage_root))


@dataclass
class Submitted:
    """A deferred image asset whose tasks were submitted and have ended at the emulator."""

    spec: ImageAssetSpec
    resource: ZImageResource
    defs: dg.Definitions
    ledger: TaskLedger


def submitted(
    storage: Path, emulator: EmulatorServer, rows: Sequence[dict[str, Any]] = ROWS, **kw: Any
) -> Submitted:
    """Deferred submit of ``rows`` (``kw``: resource fields), then wait for their tasks' end."""
    spec = make_spec(storage, rows, mode="deferred")
    resource = make_resource(emulator, **kw)
    ledger = ledger_of(spec)
    submit_deferred(resource, ledger, spec.asset_key.path, jobs_for(rows))
    wait_terminal(emulator, len(rows))
    return Submitted(spec, resource, make_defs(spec, resource), ledger)


@dataclass
class Tick:
    """A sensor result with its optional lists made lists (and typed for the tests)."""

    run_requests: list[dg.RunRequest]
    dynamic_partitions_requests: list[dg.AddDynamicPartitionsRequest]
    asset_events: list[Any]
    cursor: str | None
    skip_reason: str | None


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resource: ZImageResource | None = None,
    cursor: str | None = None,
) -> Tick:
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"zimage": resource} if resource is not None else None,
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    adds = [
        r
        for r in result.dynamic_partitions_requests or []
        if isinstance(r, dg.AddDynamicPartitionsRequest)
    ]
    return Tick(
        run_requests=list(result.run_requests or []),
        dynamic_partitions_requests=adds,
        asset_events=list(result.asset_events),
        cursor=result.cursor,
        skip_reason=result.skip_reason.skip_message if result.skip_reason else None,
    )


def execute_request(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    request: dg.RunRequest,
    **kw: Any,
) -> dg.ExecuteInProcessResult:
    """Run a sensor's run request in process, as the daemon would launch it."""
    return job.execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags, **kw
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_terminal(emulator: EmulatorServer, count: int | None = None) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        tasks = emulator.tasks()
        if count is not None and len(tasks) < count:
            return None
        if all(t["status"] in ("completed", "failed") for t in tasks):
            return tasks
        return None

    return wait_for(done, what="emulator tasks to end")
