"""Dagster acts on review verdicts: per-partition checks, the review sensor, ``<name>_picks``.

Real runs against the emulator on a real (temporary, sqlite) instance; verdicts written with
``record_verdict``, the review sensor ticked and its events reported as the daemon reports them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from PIL import Image

from tests.dagster._support import make_fast, resource_for, rows, run_range
from zimage_dagster import ImageStoreIOManager, build_image_assets
from zimage_dagster.checks import CHECK_NAMES, PARTITIONED_CHECKS, REVIEW_CHECK
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.reviews import record_verdict
from zimage_dagster.engine.store import ImageStore

KEYS = ["p0", "p1", "p2", "p3", "p4"]
IMAGE_CHECKS = [name for name in CHECK_NAMES if name != REVIEW_CHECK]


def _asset(defs: dg.Definitions, name: str) -> dg.AssetsDefinition:
    (found,) = [
        a
        for a in defs.assets or ()
        if isinstance(a, dg.AssetsDefinition) and a.key == dg.AssetKey(name)
    ]
    return found


def _status(instance: dg.DagsterInstance, check: str, partition: str) -> bool | None:
    """The partition's latest evaluation of the check: passed, failed, or ``None`` (none)."""
    key = dg.AssetCheckKey(dg.AssetKey("imgs"), check)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [key], partition_filter=PartitionKeyFilter(key=partition)
    ).get(key)
    if latest is None or latest.status == AssetCheckExecutionRecordStatus.PLANNED:
        return None  # planned by a run that did not evaluate it: the UI shows "skipped"
    assert latest.event is not None
    assert latest.event.dagster_event is not None
    evaluation = latest.event.dagster_event.event_specific_data
    assert isinstance(evaluation, dg.AssetCheckEvaluation)
    assert evaluation.partition == partition
    return bool(evaluation.passed)


def _review_sensor(defs: dg.Definitions) -> dg.SensorDefinition:
    (sensor,) = [s for s in defs.sensors or () if s.name == "imgs_review_sensor"]
    assert isinstance(sensor, dg.SensorDefinition)
    return sensor


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> str | None:
    """One tick of the review sensor, done as the sensor daemon does it: its events reported,
    its run request (at most one) run."""
    sensor = _review_sensor(defs)
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    requests = list(result.run_requests or [])
    assert len(requests) == (1 if result.asset_events else 0)
    for request in requests:
        assert isinstance(request, dg.RunRequest)
        job = defs.resolve_job_def("imgs_review_job")
        assert job.execute_in_process(instance=instance, tags=request.tags).success
    return result.cursor


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not PARTITIONED_CHECKS, reason="per-asset checks on this Dagster")
def test_verdicts_become_partition_checks_and_picks(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    defs = dg.Definitions.merge(
        build_image_assets("imgs", rows(5), storage=str(tmp_path), picks=True),
        dg.Definitions(resources={"zimage": resource_for(emulator)}),
    )
    sensor = _review_sensor(defs)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    images, picks = _asset(defs, "imgs"), _asset(defs, "imgs_picks")
    store = ImageStore(tmp_path)
    with dg.instance_for_test() as instance:
        result = run_range(images, instance, resource_for(emulator), "p0", "p4")
        assert result.success
        assert emulator.stats()["tasks_created"] == 5
        # Each prompt has its own status: the four image checks passed, review not evaluated.
        for key in KEYS:
            assert {c: _status(instance, c, key) for c in IMAGE_CHECKS} == dict.fromkeys(
                IMAGE_CHECKS, True
            )
            assert _status(instance, REVIEW_CHECK, key) is None

        cursor = _tick(defs, instance, None)
        assert cursor is None  # nothing reviewed yet
        for key in KEYS[:3]:
            record_verdict(store, "imgs", key, "pick", reviewer="ana", candidate=0)
        for key in KEYS[3:]:
            record_verdict(store, "imgs", key, "reject", reviewer="bo", note="off-brief")
        cursor = _tick(defs, instance, cursor)
        assert cursor is not None
        statuses = {key: _status(instance, REVIEW_CHECK, key) for key in KEYS}
        assert statuses == {"p0": True, "p1": True, "p2": True, "p3": False, "p4": False}
        observations = [
            r.asset_observation
            for r in instance.fetch_observations(dg.AssetKey("imgs"), limit=50).records
        ]
        states = {
            o.partition: o.metadata["review_state"].value
            for o in observations
            if o is not None and "review_state" in o.metadata
        }
        assert states == {"p0": "picked", "p1": "picked", "p2": "picked"} | {
            "p3": "rejected",
            "p4": "rejected",
        }
        # A tick with nothing new reports nothing; an undo is reported by the next tick.
        assert _tick(defs, instance, cursor) == cursor
        record_verdict(store, "imgs", "p2", "undo", reviewer="ana")
        record_verdict(store, "imgs", "p2", "pick", reviewer="bo", candidate=0)
        record_verdict(store, "imgs", "p3", "pick", reviewer="ana", candidate=0)
        record_verdict(store, "imgs", "p3", "undo", reviewer="ana")  # back to bo's reject
        assert _tick(defs, instance, cursor) != cursor
        assert {key: _status(instance, REVIEW_CHECK, key) for key in KEYS} == statuses

        # <name>_picks holds exactly the three picked images, loaded through the IO manager.
        picked = run_range(picks, instance, resource_for(emulator), "p0", "p4")
        assert picked.success
        expected = {key: _sha(store.read_bytes("imgs", key)) for key in KEYS[:3]}

        @dg.asset(
            partitions_def=images.partitions_def,
            ins={"imgs_picks": dg.AssetIn(metadata={"allow_missing_partitions": True})},
        )
        def publish(imgs_picks: dict[str, bytes]) -> None:
            assert {k: _sha(v) for k, v in imgs_picks.items()} == expected

        published = dg.materialize(
            [publish, picks.to_source_asset()],
            instance=instance,
            resources={"io_manager": ImageStoreIOManager(root=str(tmp_path))},
            tags={
                "dagster/asset_partition_range_start": "p0",
                "dagster/asset_partition_range_end": "p4",
            },
            selection=[publish],
        )
        assert published.success
        assert sorted(store.partitions("imgs_picks")) == KEYS[:3]

        # A pick withdrawn (rejected) leaves the picks at the next materialization.
        record_verdict(store, "imgs", "p0", "reject", reviewer="bo")
        assert run_range(picks, instance, resource_for(emulator), "p0", "p4").success
        assert sorted(store.partitions("imgs_picks")) == ["p1", "p2"]
        # None of this created a task.
        assert emulator.stats()["tasks_created"] == 5


@pytest.mark.skipif(not PARTITIONED_CHECKS, reason="per-asset checks on this Dagster")
def test_a_near_uniform_image_fails_not_blank(emulator: EmulatorServer, tmp_path: Path) -> None:
    make_fast(emulator)
    defs = build_image_assets("imgs", rows(2), storage=str(tmp_path))
    images = _asset(defs, "imgs")
    store = ImageStore(tmp_path)
    with dg.instance_for_test() as instance:
        assert run_range(images, instance, resource_for(emulator), "p0", "p1").success
        # p1's image replaced by a flat grey one of the same size, its provenance updated to
        # match (as a pipeline writing a bad image would leave it): the re-run reuses it.
        found = store.find("imgs", "p1")
        assert found is not None
        original = Image.open(io.BytesIO(store.read_bytes("imgs", "p1")))
        buffer = io.BytesIO()
        Image.new("RGB", original.size, (128, 128, 128)).save(buffer, found.format)
        blank = buffer.getvalue()
        provenance = {**found.provenance, "sha256": _sha(blank)}
        store.save("imgs", "p1", blank, found.path.suffix.lstrip("."), provenance)
        assert run_range(images, instance, resource_for(emulator), "p0", "p1").success
        assert _status(instance, "not_blank", "p1") is False
        assert _status(instance, "not_blank", "p0") is True
        assert _status(instance, "image_decodes", "p1") is True
        assert emulator.stats()["tasks_created"] == 2
