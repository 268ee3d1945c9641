"""Candidates per prompt (``variants=N``): real runs against the emulator, counting its tasks.

N units of work per partition, each through the claims, ledger, decide() and the budgets;
stored under the partition (candidate 0 where a partition of one image is); one
materialization per partition with every candidate and the preview first.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from tests.dagster._support import (
    SMALL,
    failure_message,
    image_asset,
    make_fast,
    materializations,
    resource_for,
    rows,
    run_range,
    values,
)
from tests.sensors._support import tick, wait_terminal
from zimage_dagster import ZImageComponent, build_image_assets
from zimage_dagster.checks import PARTITIONED_CHECKS, REVIEW_CHECK
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.collect import COLLECT_TAG
from zimage_dagster.engine.keys import candidate_key
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.reviews import record_verdict
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import Gallery, links
from zimage_dagster.ops import build_generate_images_op

KEYS = ["p0", "p1", "p2", "p3", "p4"]
TOKEN = "test-review-token-" + "c4" * 12


def _provenance(store: ImageStore, key: str, candidate: int) -> dict[str, Any]:
    found = store.find("imgs", candidate_key(key, candidate))
    assert found is not None
    return dict(found.provenance)


@pytest.mark.heavy  # 15-35 s: 20-28 tasks, several real runs
def test_five_prompts_times_four_candidates_make_twenty_tasks_once(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    data = [{**row, "seed": 100 + 10 * i} for i, row in enumerate(rows(5))]
    data[1].pop("seed")  # a derived seed too
    asset = image_asset(build_image_assets("imgs", data, storage=str(tmp_path), variants=4))
    store = ImageStore(tmp_path)
    with dg.instance_for_test() as instance:
        first = run_range(asset, instance, resource_for(emulator), "p0", "p4")
        assert first.success
        assert emulator.stats()["tasks_created"] == 20
        # Stored under the partition: candidate 0 where variants=1 puts it, the others beside.
        files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
        assert sorted(f for f in files if f.endswith(".json")) == [
            f"{k}{suffix}.json" for k in KEYS for suffix in ("", "~1", "~2", "~3")
        ]
        assert sorted(f.rsplit(".", 1)[0] for f in files if not f.endswith(".json")) == [
            f"{k}{suffix}" for k in KEYS for suffix in ("", "~1", "~2", "~3")
        ]
        # The store and its readers see partitions, each with four candidates.
        assert store.partitions("imgs") == KEYS
        assert [r.partition_key for r in store.records("imgs")] == KEYS
        assert sorted(
            (r.partition_key, r.candidate) for r in store.records("imgs", candidates=True)
        ) == [(k, i) for k in KEYS for i in range(4)]
        seeds = [_provenance(store, "p0", i)["seed"] for i in range(4)]
        assert seeds == [100, 101, 102, 103]  # a row's seed s gives s, s+1, ...
        derived = [_provenance(store, "p1", i)["seed"] for i in range(4)]
        assert len(set(derived)) == 4
        # One ledger entry per candidate unit, each collected.
        entries = TaskLedger(store).entries(("imgs",))
        assert len(entries) == 20
        assert {e.status.value for e in entries} == {"collected"}
        # One materialization per partition: the preview first, every candidate, the current.
        found = materializations(instance, "imgs", first.run_id)
        assert sorted(found) == KEYS
        for key in KEYS:
            (metadata,) = found[key]
            assert next(iter(metadata)) == "preview"
            assert str(metadata["preview"].value).startswith("![4 candidates")
            plain = values(metadata)
            assert plain["candidate"] == 0
            listed = plain["candidates"]
            assert [c["candidate"] for c in listed] == [0, 1, 2, 3]
            stored = [image for _, image in store.candidates("imgs", key)]
            assert [c["task_id"] for c in listed] == [s.provenance["task_id"] for s in stored]
            assert [c["seed"] for c in listed] == [s.provenance["seed"] for s in stored]
            assert plain["seed"] == listed[0]["seed"]
            assert plain["task_id"] == listed[0]["task_id"]
            assert plain["zimage.credits_candidates"] == pytest.approx(4 * 0.026)
            for s in stored:
                assert hashlib.sha256(s.path.read_bytes()).hexdigest() == s.sha256

        again = run_range(asset, instance, resource_for(emulator), "p0", "p4")
        assert again.success
        assert emulator.stats()["tasks_created"] == 20  # the re-run creates none
        assert sorted(materializations(instance, "imgs", again.run_id)) == KEYS


def test_one_variant_changes_nothing(emulator: EmulatorServer, tmp_path: Path) -> None:
    """variants=1 is today's asset: same paths, same metadata keys, and a store made without
    the option is reused as it is."""
    make_fast(emulator)
    before = image_asset(build_image_assets("imgs", rows(2), storage=str(tmp_path)))
    after = image_asset(build_image_assets("imgs", rows(2), storage=str(tmp_path), variants=1))
    with dg.instance_for_test() as instance:
        made = run_range(before, instance, resource_for(emulator), "p0", "p1")
        assert made.success
        assert emulator.stats()["tasks_created"] == 2
        files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
        assert [f.rsplit(".", 1)[0] for f in files] == ["p0", "p0", "p1", "p1"]
        reused = run_range(after, instance, resource_for(emulator), "p0", "p1")
        assert reused.success
        assert emulator.stats()["tasks_created"] == 2
        assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == files
        old = materializations(instance, "imgs", made.run_id)
        new = materializations(instance, "imgs", reused.run_id)
        for key in ("p0", "p1"):
            assert list(new[key][0]) == list(old[key][0])
            assert "preview" not in new[key][0]
            assert "candidates" not in new[key][0]


def test_a_failed_candidate_is_named_by_its_partition_and_number(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """The step's failure lists each failed unit as people read it: ``p1`` for candidate 0 (as
    with one image), ``p1 (candidate 2)`` for index 1, counted from 1 like the gallery; never
    the unit key ``p1...1``. The failed partition is counted once."""
    make_fast(emulator, failure_rules=[{"pattern": "doomed", "code": "content_policy_violation"}])
    data = [*rows(1), {"key": "p1", "prompt": "a doomed harbour", "size": SMALL}]
    asset = image_asset(build_image_assets("imgs", data, storage=str(tmp_path), variants=3))
    with dg.instance_for_test() as instance:
        result = run_range(asset, instance, resource_for(emulator), "p0", "p1")
    assert not result.success
    assert emulator.stats()["tasks_created"] == 6
    message = failure_message(result)
    assert "1 of 2 partitions failed" in message
    listed = [line for line in message.splitlines() if line.startswith("- ")]
    assert sorted(line.split(": ")[0] for line in listed) == [
        "- p1",
        "- p1 (candidate 2)",
        "- p1 (candidate 3)",
    ]
    assert all(": content_policy_violation: " in line for line in listed)
    assert "..." not in message


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _status(instance: dg.DagsterInstance, check: str, partition: str) -> bool | None:
    key = dg.AssetCheckKey(dg.AssetKey("imgs"), check)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [key], partition_filter=PartitionKeyFilter(key=partition)
    ).get(key)
    if latest is None or latest.status == AssetCheckExecutionRecordStatus.PLANNED:
        return None
    assert latest.event is not None
    assert latest.event.dagster_event is not None
    evaluation = latest.event.dagster_event.event_specific_data
    assert isinstance(evaluation, dg.AssetCheckEvaluation)
    return bool(evaluation.passed)


def _tick_review_sensor(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """One tick of the review sensor, as the daemon does it (events reported, its run run)."""
    (sensor,) = [s for s in defs.sensors or () if s.name == "imgs_review_sensor"]
    assert isinstance(sensor, dg.SensorDefinition)
    with dg.build_sensor_context(instance=instance, cursor=None) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    for request in result.run_requests or []:
        assert isinstance(request, dg.RunRequest)
        job = defs.resolve_job_def("imgs_review_job")
        assert job.execute_in_process(instance=instance, tags=request.tags).success


def image_asset_named(defs: dg.Definitions, name: str) -> dg.AssetsDefinition:
    return _asset(defs, name)


def _asset(defs: dg.Definitions, name: str) -> dg.AssetsDefinition:
    (found,) = [
        a
        for a in defs.assets or ()
        if isinstance(a, dg.AssetsDefinition) and a.key == dg.AssetKey(name)
    ]
    return found


@pytest.mark.heavy  # 15-35 s: 20-28 tasks, several real runs
@pytest.mark.skipif(not PARTITIONED_CHECKS, reason="per-asset checks on this Dagster")
def test_review_candidates_in_the_gallery_then_publish_the_picks(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """5 prompts x 4 candidates; 3 picked (candidates 1, 3, 4 as the reviewer numbers them) and
    2 rejected through the gallery's HTTP interface; <name>_picks holds exactly the 3 picked
    images; the per-partition review checks match the verdicts; nothing of it pays."""
    make_fast(emulator)
    defs = dg.Definitions.merge(
        build_image_assets("imgs", rows(5), storage=str(tmp_path), variants=4, picks=True),
        dg.Definitions(resources={"zimage": resource_for(emulator)}),
    )
    images, picks = _asset(defs, "imgs"), _asset(defs, "imgs_picks")
    store = ImageStore(tmp_path)
    picked = {"p0": 0, "p1": 2, "p2": 3}
    with dg.instance_for_test() as instance:
        assert run_range(images, instance, resource_for(emulator), "p0", "p4").success
        assert emulator.stats()["tasks_created"] == 20
        with (
            Gallery(tmp_path, refresh_s=0, review_token=TOKEN, reviewer="ana") as gallery,
            httpx.Client(base_url=gallery.url, timeout=30) as client,
        ):
            bearer = {"authorization": f"Bearer {TOKEN}"}
            grid = client.get(links.grid_url("", ("imgs",)))
            assert grid.status_code == 200
            cards = re.findall(r"<article class='card' data-key='([^']*)'", grid.text)
            assert sorted(cards) == KEYS  # candidates are not partitions
            page = client.get(links.partition_url("", ("imgs",), "p1"), headers=bearer)
            assert page.status_code == 200
            assert "class='candidates n4'" in page.text
            for i in range(1, 4):  # each candidate's own image is served
                image = client.get(links.image_url("", ("imgs",), "p1") + f"?candidate={i}")
                assert image.status_code == 200
                assert _sha(image.content) == _provenance(store, "p1", i)["sha256"]
            assert (
                client.get(links.image_url("", ("imgs",), "p1") + "?candidate=7").status_code == 404
            )
            assert (
                client.get(links.image_url("", ("imgs",), "p1") + "?candidate=../1").status_code
                == 404
            )
            for key, candidate in picked.items():
                answer = client.post(
                    links.verdict_url("", ("imgs",), key),
                    data={"verdict": "pick", "candidate": str(candidate)},
                    headers=bearer,
                )
                assert answer.status_code == 201, answer.text
            nine = client.post(
                links.verdict_url("", ("imgs",), "p0"),
                data={"verdict": "pick", "candidate": "4"},
                headers=bearer,
            )
            assert nine.status_code == 404  # no fifth candidate
            for key in ("p3", "p4"):
                answer = client.post(
                    links.verdict_url("", ("imgs",), key),
                    data={"verdict": "reject", "note": "off-brief"},
                    headers=bearer,
                )
                assert answer.status_code == 201, answer.text
            # The picks' zip holds each picked candidate's own bytes; its manifest says which.
            exported = client.get(links.export_url("", ("imgs",)))
            assert exported.status_code == 200
            with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
                manifest = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
                assert {m["key"]: int(m["candidate"]) for m in manifest} == picked
                for m in manifest:
                    data = archive.read(m["file"])
                    assert _sha(data) == m["sha256"]
                    assert m["sha256"] == _provenance(store, m["key"], picked[m["key"]])["sha256"]
                    assert int(m["seed"]) == _provenance(store, m["key"], picked[m["key"]])["seed"]
        _tick_review_sensor(defs, instance)
        statuses = {key: _status(instance, REVIEW_CHECK, key) for key in KEYS}
        assert statuses == {"p0": True, "p1": True, "p2": True, "p3": False, "p4": False}

        assert run_range(picks, instance, resource_for(emulator), "p0", "p4").success
        assert store.partitions("imgs_picks") == ["p0", "p1", "p2"]
        held = {key: _sha(store.read_bytes("imgs_picks", key)) for key in picked}
        assert held == {k: _provenance(store, k, i)["sha256"] for k, i in picked.items()}
        assert emulator.stats()["tasks_created"] == 20

        # Regeneration (opt-in): the 2 rejected partitions get 4 new candidates each, once.
        rejected = {k: [_provenance(store, k, i) for i in range(4)] for k in ("p3", "p4")}
        regenerating = image_asset_named(
            build_image_assets(
                "imgs", rows(5), storage=str(tmp_path), variants=4, regenerate_rejected=True
            ),
            "imgs",
        )
        kept = {k: _sha(store.read_bytes("imgs", candidate_key(k, 1))) for k in picked}
        regenerated = run_range(regenerating, instance, resource_for(emulator), "p0", "p4")
        assert regenerated.success
        assert emulator.stats()["tasks_created"] == 20 + 2 * 4
        assert {k: _sha(store.read_bytes("imgs", candidate_key(k, 1))) for k in picked} == kept
        found = materializations(instance, "imgs", regenerated.run_id)
        for key, old in rejected.items():
            new = [_provenance(store, key, i) for i in range(4)]
            assert not {p["seed"] for p in new} & {p["seed"] for p in old}  # new seeds
            plain = values(found[key][0])
            assert [r["seed"] for r in plain["replaced"]] == [p["seed"] for p in old]
            assert [r["task_id"] for r in plain["replaced"]] == [p["task_id"] for p in old]
            assert plain["regenerated_for"] == plain["replaced"][0]["rejected_by"]
            for i in range(4):  # the rejected task stays in the unit's ledger history
                entry = TaskLedger(store).get("imgs", candidate_key(key, i))
                assert entry is not None
                assert [p.task_id for p in entry.previous] == [old[i]["task_id"]]
                assert entry.task_id == new[i]["task_id"]
        assert "replaced" not in found["p0"][0]
        again = run_range(regenerating, instance, resource_for(emulator), "p0", "p4")
        assert again.success
        assert emulator.stats()["tasks_created"] == 28  # one reject never pays twice
        # A regenerated candidate picked later keeps its images (no return to the first seeds).
        record_verdict(store, "imgs", "p3", "pick", reviewer="ana", candidate=2)
        assert run_range(regenerating, instance, resource_for(emulator), "p0", "p4").success
        assert emulator.stats()["tasks_created"] == 28
        _tick_review_sensor(defs, instance)
        assert _status(instance, REVIEW_CHECK, "p3") is True
        assert _status(instance, REVIEW_CHECK, "p4") is False


@pytest.mark.parametrize("bad", [0, 9, -1])
def test_variants_is_one_to_eight_everywhere(bad: int) -> None:
    """One field, one validation: the factory, the component's YAML and the op refuse it."""
    with pytest.raises(ValueError, match="variants"):
        build_image_assets("imgs", rows(1), storage="memory://candidates-bad", variants=bad)
    with pytest.raises(Exception, match="variants"):
        ZImageComponent.resolve_from_yaml(f"asset_name: imgs\nprompts: [a fox]\nvariants: {bad}\n")
    with pytest.raises(ValueError, match="variants"):
        build_generate_images_op("generate", asset_key="imgs", variants=bad)


def test_the_component_yaml_takes_variants_and_regenerate_rejected() -> None:
    component = ZImageComponent.resolve_from_yaml(
        "asset_name: imgs\nprompts: [a fox]\nvariants: 3\nregenerate_rejected: true\n"
    )
    assert component.variants == 3
    assert component.regenerate_rejected is True


def _collect(
    defs: dg.Definitions, instance: dg.DagsterInstance, emulator: EmulatorServer, tasks: int
) -> str:
    """Wait for the emulator's ``tasks`` to end, tick the task-status sensor and run its one
    collect run; returns the run's ID."""
    wait_terminal(emulator, tasks)
    result = tick(defs.resolve_sensor_def("imgs_task_status"), instance, resource_for(emulator))
    (request,) = result.run_requests
    assert COLLECT_TAG in request.tags
    run = defs.resolve_job_def("imgs_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags
    )
    assert run.success
    return run.run_id


@pytest.mark.heavy  # 15-35 s: 20-28 tasks, several real runs
def test_deferred_candidates_and_a_regeneration(emulator: EmulatorServer, tmp_path: Path) -> None:
    """Deferred mode: the submit run creates every candidate's task, one collect run stores and
    materializes them; a rejected partition regenerated in deferred mode pays N once."""
    make_fast(emulator)
    store = ImageStore(tmp_path)

    def defs_with(**options: Any) -> dg.Definitions:
        built = build_image_assets(
            "imgs", rows(2), storage=str(tmp_path), variants=2, mode="deferred", **options
        )
        return dg.Definitions.merge(
            built, dg.Definitions(resources={"zimage": resource_for(emulator)})
        )

    tags = {"dagster/asset_partition_range_start": "p0", "dagster/asset_partition_range_end": "p1"}
    with dg.instance_for_test() as instance:
        defs = defs_with()
        submit = defs.resolve_job_def("imgs_job").execute_in_process(instance=instance, tags=tags)
        assert submit.success
        assert emulator.stats()["tasks_created"] == 4
        collected = _collect(defs, instance, emulator, 4)
        assert sorted(materializations(instance, "imgs", collected)) == ["p0", "p1"]
        assert len(store.records("imgs", candidates=True)) == 4

        record_verdict(store, "imgs", "p1", "reject", reviewer="ana")
        regenerating = defs_with(regenerate_rejected=True)
        job = regenerating.resolve_job_def("imgs_job")
        assert job.execute_in_process(instance=instance, tags=tags).success
        assert emulator.stats()["tasks_created"] == 6
        collected = _collect(regenerating, instance, emulator, 6)
        (metadata,) = materializations(instance, "imgs", collected)["p1"]
        assert [r["candidate"] for r in values(metadata)["replaced"]] == [0, 1]
        assert job.execute_in_process(instance=instance, tags=tags).success
        assert emulator.stats()["tasks_created"] == 6


def test_the_op_regenerates_a_rejected_row_once(emulator: EmulatorServer, tmp_path: Path) -> None:
    make_fast(emulator)
    store = ImageStore(tmp_path)

    def run_op(**options: Any) -> list[dict[str, Any]]:
        op = build_generate_images_op(
            "generate", asset_key="imgs", storage=str(tmp_path), variants=2, **options
        )

        @dg.op
        def the_rows() -> list[dict[str, Any]]:
            return rows(2)

        @dg.job
        def images_job() -> None:
            op(the_rows())

        result = images_job.execute_in_process(
            instance=instance, resources={"zimage": resource_for(emulator)}
        )
        assert result.success
        records: list[dict[str, Any]] = result.output_for_node("generate")
        return records

    with dg.instance_for_test() as instance:
        first = run_op()
        assert emulator.stats()["tasks_created"] == 4
        record_verdict(store, "imgs", "p1", "reject", reviewer="ana")
        again = run_op(regenerate_rejected=True)
        assert emulator.stats()["tasks_created"] == 6
        seeds = {(r["partition_key"], r["candidate"]): r["seed"] for r in first}
        changed = {
            (r["partition_key"], r["candidate"])
            for r in again
            if r["seed"] != seeds[(r["partition_key"], r["candidate"])]
        }
        assert changed == {("p1", 0), ("p1", 1)}
        run_op(regenerate_rejected=True)
        assert emulator.stats()["tasks_created"] == 6
        # Turned off, the regenerated row goes back to its first seeds (the documented trade-off):
        # their images were replaced, so they are paid for again, once.
        back = run_op()
        assert emulator.stats()["tasks_created"] == 8
        assert {(r["partition_key"], r["candidate"]): r["seed"] for r in back} == seeds
        run_op()
        assert emulator.stats()["tasks_created"] == 8
