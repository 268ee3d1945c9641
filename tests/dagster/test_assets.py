"""The image asset factory in real runs: emulator over HTTP, a real Dagster instance, real files.

Each test proves one behaviour of issue 4 (see DESIGN.md section 4) and could fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from tests.dagster._support import (
    SMALL,
    check_evaluations,
    failure_message,
    image_asset,
    log_messages,
    make_fast,
    materializations,
    resource_for,
    rows,
    run_one,
    run_range,
    schedule_requests,
    seed_failing_then_passing,
    step_failure,
    values,
)
from zimage_dagster.api import AsyncZImageClient, GenerationRequest, PollPolicy, ZImageClient
from zimage_dagster.assets import build_image_assets
from zimage_dagster.checks import (
    CHECK_NAMES,
    PARTITIONED_CHECKS,
    REVIEW_CHECK,
    _dimension_mismatch,
    judge_partition,
)
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.batch import BatchGenerator
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.outcome import BatchReport
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import PromptRow, derive_seed, request_fingerprint
from zimage_dagster.resource import ZImageResource

METADATA_FIELDS = (
    "seed",
    "task_id",
    "model",
    "size_requested",
    "width",
    "height",
    "prompt",
    "path",
    "sha256",
    "bytes",
    "format",
    "credits_reserved",
    "queued_s",
    "generating_s",
    "downloading_s",
    "polls",
    "attempts",
    "reused",
    "regenerated",
    "thumbnail",
)
INT_FIELDS = ("seed", "width", "height", "bytes", "polls", "attempts")
FLOAT_FIELDS = ("credits_reserved", "queued_s", "generating_s", "downloading_s")


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _request_of(task: dict[str, object]) -> tuple[object, ...]:
    request = task["request"]
    assert isinstance(request, dict)
    return (request["prompt"], request["size"], request["seed_sent"], request["nsfw_check"])


# -- 1. one partition ----------------------------------------------------------------------------


def test_one_partition_records_everything_and_the_seed_sent(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    dataset = rows(2)
    asset = image_asset(build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_one(asset, instance, resource_for(emulator), "p0")
        assert result.success

        mats = materializations(instance, "imgs")
        assert list(mats) == ["p0"]
        assert len(mats["p0"]) == 1
        md = mats["p0"][0]
        assert set(METADATA_FIELDS) <= set(md), set(METADATA_FIELDS) - set(md)
        for name in INT_FIELDS:
            assert isinstance(md[name], dg.IntMetadataValue), name
        for name in FLOAT_FIELDS:
            assert isinstance(md[name], dg.FloatMetadataValue), name
        assert isinstance(md["path"], dg.PathMetadataValue)
        assert isinstance(md["thumbnail"], dg.MarkdownMetadataValue)
        v = values(md)
        assert (v["width"], v["height"], v["size_requested"]) == (376, 376, SMALL)
        assert v["prompt"] == dataset[0]["prompt"]
        assert v["model"] == "z-image-turbo"
        assert v["format"] == "WEBP"  # the provider's format, the emulator's default
        assert v["attempts"] == 1
        assert v["polls"] >= 1
        assert v["reused"] is False
        assert v["regenerated"] is False
        assert v["credits_reserved"] > 0
        thumb = v["thumbnail"]
        assert thumb.startswith("![")
        assert "](data:image/jpeg;base64," in thumb
        assert 300 < len(thumb) < 8_000  # a few KB

        path = Path(v["path"])
        assert path.is_file()
        assert path.parent == tmp_path / "imgs"
        assert _sha(path) == v["sha256"]
        assert path.stat().st_size == v["bytes"]

        (task,) = emulator.tasks()
        assert task["id"] == v["task_id"]
        assert task["request"]["seed_sent"] == v["seed"]
        assert v["seed"] == derive_seed("imgs", "p0", dataset[0]["prompt"])

        # The same partition again (storage reuse off so a task is made): the same request.
        again = image_asset(
            build_image_assets(
                "imgs", dataset, storage=tmp_path, retry_policy=None, reuse_stored=False
            )
        )
        assert run_one(again, instance, resource_for(emulator), "p0").success
        first, second = emulator.tasks()
        assert _request_of(first) == _request_of(second)
        latest = values(materializations(instance, "imgs")["p0"][-1])
        assert latest["task_id"] == second["id"]
        assert latest["seed"] == v["seed"]
        assert latest["sha256"] == v["sha256"]  # same request, same picture


def test_rerun_of_a_stored_partition_reuses_it_without_a_task(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    asset = image_asset(build_image_assets("imgs", rows(1), storage=tmp_path, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_one(asset, instance, resource_for(emulator), "p0").success
        path = tmp_path / "imgs" / "p0.webp"
        mtime = path.stat().st_mtime_ns
        result = run_one(asset, instance, resource_for(emulator), "p0")
        assert result.success
        assert emulator.stats()["tasks_created"] == 1
        first, second = (values(m) for m in materializations(instance, "imgs")["p0"])
        assert second["reused"] is True
        assert second["task_id"] == first["task_id"]
        assert second["sha256"] == first["sha256"]
        assert path.stat().st_mtime_ns == mtime
        assert all(all(p) for p in check_evaluations(result).values())


# -- 2. many partitions in one run ---------------------------------------------------------------


def test_one_run_submits_many_partitions_concurrently_under_the_limit(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, latency_s=0.3)
    asset = image_asset(build_image_assets("imgs", rows(6), storage=tmp_path, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource_for(emulator, concurrency=3), "p0", "p5")
        assert result.success
        stats = emulator.stats()
        assert stats["tasks_created"] == 6
        assert 1 < stats["peak_concurrent_tasks"] <= 3
        mats = materializations(instance, "imgs", result.run_id)
        assert sorted(mats) == [f"p{i}" for i in range(6)]
        assert all(len(m) == 1 for m in mats.values())
        # One step, one run: every partition's materialization came from the same run.
        assert len(instance.get_runs()) == 1
        seeds = {values(m[0])["seed"] for m in mats.values()}
        assert len(seeds) == 6
        # Each partition was materialized when its image was stored, not all at the end: the
        # first wave's events come before the second wave's tasks even ended (the emulator's
        # clock is the wall clock).
        stamps = sorted(
            r.timestamp
            for r in instance.fetch_materializations(dg.AssetKey("imgs"), limit=10).records
        )
        assert stamps[0] < max(t["end_at"] for t in emulator.tasks())


# -- 3. partial failure --------------------------------------------------------------------------


def test_a_rejected_prompt_fails_its_partition_alone_and_is_remembered(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    dataset = [*rows(4), {"key": "p4", "prompt": "a forbidden fox", "size": SMALL}]
    # A retry policy is set: a fixable failure must not be retried (allow_retries=False).
    policy = dg.RetryPolicy(max_retries=2)
    asset = image_asset(build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=policy))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource_for(emulator), "p0", "p4")
        assert not result.success
        assert sorted(materializations(instance, "imgs")) == ["p0", "p1", "p2", "p3"]

        rejected = next(t for t in emulator.tasks() if "forbidden" in t["request"]["prompt"])
        provider_message = rejected["failure"]["message"]
        failure = step_failure(result)
        error = failure.step_failure_data.error
        assert error is not None
        assert error.cls_name == "Failure"
        text = error.message
        assert "p4" in text
        assert "content_policy_violation" in text
        assert provider_message in text
        assert "1 of 5 partitions failed (4 stored and materialized)" in text
        user_data = failure.step_failure_data.user_failure_data
        assert user_data is not None
        failed = user_data.metadata["failed_partitions"].value
        assert isinstance(failed, dict)
        assert list(failed) == ["p4"]
        # Not retried: no step retry, one task for the rejected prompt.
        kinds = [e.event_type for e in result.all_events]
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in kinds
        assert emulator.stats()["tasks_created"] == 5
        # Checks ran for the four stored partitions.
        assert check_evaluations(result) == _all_passed(4)

        # The failed partition alone, again: the ledger remembers the rejection, no new task.
        again = run_one(asset, instance, resource_for(emulator), "p4")
        assert not again.success
        assert emulator.stats()["tasks_created"] == 5
        again_text = failure_message(again)
        assert "rejected before" in again_text
        assert "content_policy_violation" in again_text

        # ... unless asked to submit rejected prompts again.
        retrying = image_asset(
            build_image_assets(
                "imgs", dataset, storage=tmp_path, retry_policy=None, retry_rejected=True
            )
        )
        assert not run_one(retrying, instance, resource_for(emulator), "p4").success
        assert emulator.stats()["tasks_created"] == 6


# -- 4. transient failures -----------------------------------------------------------------------


def test_a_retryable_task_error_is_resubmitted_with_the_same_seed(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    seed = seed_failing_then_passing(0.5, [True, False])
    make_fast(emulator, failure_rates={"service_error": 0.5}, random_seed=seed)
    asset = image_asset(build_image_assets("imgs", rows(1), storage=tmp_path, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_one(asset, instance, resource_for(emulator), "p0")
        assert result.success
        failed, ok = emulator.tasks()
        assert failed["failure"]["code"] == "service_error"
        assert ok["failure"] is None
        assert _request_of(failed) == _request_of(ok)  # same seed, same everything
        v = values(materializations(instance, "imgs")["p0"][0])
        assert v["attempts"] == 2
        assert v["task_id"] == ok["id"]
        assert v["previous_task_ids"] == [failed["id"]]
        assert v["seed"] == ok["request"]["seed_sent"]
        entry = TaskLedger(ImageStore(tmp_path)).get("imgs", "p0")
        assert entry is not None
        assert entry.status == LedgerStatus.COLLECTED
        assert entry.attempt == 2
        assert [p.task_id for p in entry.previous] == [failed["id"]]


def test_a_step_retry_redoes_only_the_partitions_not_yet_materialized(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """p0, p1 stored earlier (reused now), p2 fails once with a retryable error and no resubmit
    budget: the step fails, Dagster retries it, and the retry materializes p2 alone."""
    make_fast(emulator)
    dataset = rows(3)
    policy = dg.RetryPolicy(max_retries=1)
    asset = image_asset(build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=policy))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_range(asset, instance, resource_for(emulator), "p0", "p1").success
        emulator.configure(
            failure_rates={"service_error": 0.5},
            random_seed=seed_failing_then_passing(0.5, [True, False]),
        )
        result = run_range(asset, instance, resource_for(emulator, max_resubmits=0), "p0", "p2")
        assert result.success
        kinds = [e.event_type for e in result.all_events]
        assert kinds.count(dg.DagsterEventType.STEP_UP_FOR_RETRY) == 1
        mats = materializations(instance, "imgs", result.run_id)
        assert {k: len(v) for k, v in mats.items()} == {"p0": 1, "p1": 1, "p2": 1}
        assert values(mats["p0"][0])["reused"] is True
        p2 = values(mats["p2"][0])
        assert p2["attempts"] == 2
        assert len(p2["previous_task_ids"]) == 1
        assert emulator.stats()["tasks_created"] == 4


def test_a_mixed_failure_is_retried_for_the_retryable_partition_only(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """p0 rejected (fixable), p1 failed with a retryable error: the step is retried; the retry
    fails p0 at once from the ledger (no task) and materializes p1; then the run fails for p0."""
    make_fast(
        emulator,
        failure_rates={"service_error": 0.5},
        random_seed=seed_failing_then_passing(0.5, [True, False]),
    )
    dataset = [{"key": "p0", "prompt": "a forbidden fox", "size": SMALL}, *rows(2)[1:]]
    policy = dg.RetryPolicy(max_retries=2)
    asset = image_asset(build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=policy))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource_for(emulator, max_resubmits=0), "p0", "p1")
        assert not result.success
        kinds = [e.event_type for e in result.all_events]
        assert kinds.count(dg.DagsterEventType.STEP_UP_FOR_RETRY) == 1  # then not again
        assert list(materializations(instance, "imgs", result.run_id)) == ["p1"]
        assert emulator.stats()["tasks_created"] == 3  # p0 once, p1 twice
        message = failure_message(result)
        assert "1 of 2 partitions failed" in message
        assert "p0: content_policy_violation" in message


def test_the_last_allowed_attempt_fails_with_the_partitions_not_a_bare_retry_count(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, failure_rules=[{"pattern": "stormy", "code": "service_error"}])
    dataset = [{"key": "p0", "prompt": "a stormy harbour", "size": SMALL}]
    policy = dg.RetryPolicy(max_retries=1)
    asset = image_asset(build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=policy))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource_for(emulator, max_resubmits=0), "p0", "p0")
        assert not result.success
        kinds = [e.event_type for e in result.all_events]
        assert kinds.count(dg.DagsterEventType.STEP_UP_FOR_RETRY) == 1
        message = failure_message(result)
        assert "Exceeded max_retries" not in message
        assert "p0: service_error" in message
        assert emulator.stats()["tasks_created"] == 2  # one per attempt


def test_http_faults_on_create_and_poll_are_absorbed_by_the_client(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(
        emulator,
        http_faults=[
            {"route": "create", "action": "status", "status": 429, "retry_after": 0.2, "count": 2},
            {"route": "task", "action": "status", "status": 503, "count": 2},
        ],
    )
    asset = image_asset(build_image_assets("imgs", rows(3), storage=tmp_path, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource_for(emulator), "p0", "p2")
        assert result.success
        stats = emulator.stats()
        assert stats["faults_fired"] == 4
        assert stats["requests"]["create"]["429"] == 2
        assert stats["requests"]["task"]["503"] == 2
        assert stats["tasks_created"] == 3  # a refused create made no task; none was made twice
        mats = materializations(instance, "imgs")
        assert sorted(mats) == ["p0", "p1", "p2"]
        assert all(values(m[0])["attempts"] == 1 for m in mats.values())


# -- 5. crash and resume -------------------------------------------------------------------------

_CRASH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import dagster as dg
    from zimage_dagster.assets import build_image_assets
    from zimage_dagster.resource import ZImageResource

    spec = json.loads(sys.argv[1])
    defs = build_image_assets("imgs", spec["rows"], storage=spec["storage"], retry_policy=None)
    (asset,) = defs.assets
    dg.materialize(
        [asset],
        instance=dg.DagsterInstance.get(),
        resources={"zimage": ZImageResource(api_key=spec["key"], base_url=spec["url"])},
        tags={
            "dagster/asset_partition_range_start": spec["start"],
            "dagster/asset_partition_range_end": spec["end"],
        },
    )
    """
)


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_run_resumes_from_the_ledger_without_new_tasks(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    # Tasks take 2 s: the killed process is still waiting on them when it dies.
    make_fast(emulator, latency_s=2.0)
    dataset = rows(4)
    storage, home = tmp_path / "images", tmp_path / "dagster_home"
    home.mkdir()
    spec = {
        "rows": dataset,
        "storage": str(storage),
        "key": emulator.api_key,
        "url": emulator.url,
        "start": "p0",
        "end": "p3",
    }
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT, json.dumps(spec)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ledger = TaskLedger(ImageStore(storage))
    try:
        _wait_for(
            lambda: (
                emulator.stats()["tasks_created"] == 4
                and len(list(ledger.iter_entries("imgs"))) == 4
            ),
            timeout=30,
            what="the subprocess to create its tasks and write the ledger",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    entries = {e.partition_key: e for e in ledger.iter_entries("imgs")}
    assert {e.status for e in entries.values()} == {LedgerStatus.SUBMITTED}
    assert not list((storage / "imgs").glob("*.webp"))  # nothing was collected before the kill

    asset = image_asset(build_image_assets("imgs", dataset, storage=storage, retry_policy=None))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = run_range(asset, instance, resource_for(emulator), "p0", "p3")
        assert result.success
        assert emulator.stats()["tasks_created"] == 4  # re-attached, paid nothing twice
        mats = materializations(instance, "imgs", result.run_id)
        assert sorted(mats) == ["p0", "p1", "p2", "p3"]
        for key, (md,) in mats.items():
            v = values(md)
            assert v["task_id"] == entries[key].task_id
            assert v["reused"] is True
            assert v["attempts"] == 1
            assert Path(v["path"]).is_file()
            assert _sha(v["path"]) == v["sha256"]
        assert all(e.status == LedgerStatus.COLLECTED for e in ledger.iter_entries("imgs"))
        assert any("re-attached to task" in m for m in log_messages(instance, result.run_id))


# -- 6. expired result links ---------------------------------------------------------------------


def test_an_expired_uncollected_result_is_regenerated_and_stored_images_are_untouched(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    dataset = rows(2)
    asset = image_asset(build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_one(asset, instance, resource_for(emulator), "p0").success
        stored = tmp_path / "imgs" / "p0.webp"
        before = (stored.read_bytes(), stored.stat().st_mtime_ns)

        # p1: a task created and recorded in the ledger (as the asset does before waiting),
        # then never collected: the run that made it died.
        prompt = dataset[1]["prompt"]
        seed = derive_seed("imgs", "p1", prompt)
        request = {"prompt": prompt, "size": SMALL, "seed": seed, "nsfw_check": False}
        quick = PollPolicy(first_wait_fraction=0.1, min_interval=0.05, initial_interval=0.1)
        with ZImageClient(api_key=emulator.api_key, base_url=emulator.url, poll=quick) as client:
            task = client.create_task(GenerationRequest(**request))
            client.wait(task)
        ledger = TaskLedger(ImageStore(tmp_path))
        ledger.record_submitted(
            "imgs",
            "p1",
            task_id=task.id,
            request=request,
            fingerprint=request_fingerprint(prompt, SMALL, seed, False),
        )
        emulator.advance_clock(25 * 3600)  # its result link is dead now

        result = run_range(asset, instance, resource_for(emulator), "p0", "p1")
        assert result.success
        mats = materializations(instance, "imgs", result.run_id)
        p1 = values(mats["p1"][0])
        assert p1["regenerated"] is True
        assert p1["reused"] is False
        assert p1["seed"] == seed
        assert p1["task_id"] != task.id
        assert p1["previous_task_ids"] == [task.id]
        assert p1["attempts"] == 2
        tasks = emulator.tasks()
        assert len(tasks) == 3
        assert tasks[-1]["request"]["seed_sent"] == seed  # same seed
        assert _request_of(tasks[-1]) == _request_of(tasks[1])
        entry = ledger.get("imgs", "p1")
        assert entry is not None
        assert entry.status == LedgerStatus.COLLECTED
        assert entry.previous[-1].status == LedgerStatus.EXPIRED
        # p0 was reused as stored: same bytes, not rewritten.
        assert values(mats["p0"][0])["reused"] is True
        assert (stored.read_bytes(), stored.stat().st_mtime_ns) == before


# -- 7. checks ----------------------------------------------------------------------------------


def test_a_damaged_stored_file_is_not_reused_but_generated_again(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    asset = image_asset(build_image_assets("imgs", rows(1), storage=tmp_path, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_one(asset, instance, resource_for(emulator), "p0").success
        path = tmp_path / "imgs" / "p0.webp"
        original = _sha(path)
        path.write_bytes(path.read_bytes()[:200])  # truncated on disk
        result = run_one(asset, instance, resource_for(emulator), "p0")
        assert result.success
        # Its task's result is fetched again (the link lives 24 h): nothing paid twice.
        assert emulator.stats()["tasks_created"] == 1
        latest = values(materializations(instance, "imgs")["p0"][-1])
        assert latest["reused"] is True  # from the ledger's task, not a new one
        assert latest["sha256"] == original == _sha(path)
        assert check_evaluations(result) == _all_passed(1)
        assert any(
            "differs from its provenance" in m for m in log_messages(instance, result.run_id)
        )


def _stored_report(emulator: EmulatorServer, tmp_path: Path, keys: list[str]) -> BatchReport:
    """Really generate and store ``keys`` with the engine (a quick client) and return its report."""
    store = ImageStore(tmp_path)
    jobs = [
        ImageJob.from_row(PromptRow(k, f"a lighthouse, {k}", SMALL, None, None), seed=11)
        for k in keys
    ]
    polls = PollPolicy(first_wait_fraction=0.1, min_interval=0.05, initial_interval=0.1)

    async def go() -> BatchReport:
        async with AsyncZImageClient(emulator.api_key, base_url=emulator.url, poll=polls) as c:
            return await BatchGenerator(c, store, TaskLedger(store), "imgs").run(jobs)

    report = asyncio.run(go())
    assert len(report.successes) == len(keys)
    return report


def test_checks_fail_for_files_changed_after_they_were_stored(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    report = _stored_report(emulator, tmp_path, ["intact", "swapped", "garbage"])
    folder = tmp_path / "imgs"
    other = io.BytesIO()
    Image.new("RGB", (400, 300), "red").save(other, "WEBP")
    (folder / "swapped.webp").write_bytes(other.getvalue())  # a valid image, not ours
    (folder / "garbage.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBP not really")

    store = ImageStore(tmp_path)
    failed: dict[str, dict[str, str]] = {}
    for success in report.successes:
        for finding in judge_partition(store, ["imgs"], success):
            if not finding.passed:
                failed.setdefault(finding.check_name, {})[success.job.partition_key] = (
                    finding.problem
                )
    assert sorted(failed["sha256_matches"]) == ["garbage", "swapped"]
    assert sorted(failed["image_decodes"]) == ["garbage"]
    assert failed["dimensions_match_request"]["swapped"] == "got 400x300, requested 376x376"
    assert "intact" not in failed.get("not_blank", {})


def _all_passed(stored: int) -> dict[str, list[bool]]:
    """What a run storing ``stored`` good, unreviewed partitions evaluates: per partition with
    partitioned checks (no ``review`` evaluation while unreviewed), else once per check."""
    if PARTITIONED_CHECKS:
        return {name: [True] * stored for name in CHECK_NAMES if name != REVIEW_CHECK}
    return {name: [True] for name in CHECK_NAMES}


@pytest.mark.parametrize(
    ("size", "width", "height", "ok"),
    [
        ("376x376", 376, 376, True),
        ("1024x768", 768, 1024, False),
        ("1:1", 1024, 1024, True),
        ("16:9", 1024, 576, True),
        ("16:9", 1024, 1024, False),
        ("9:16", 576, 1024, True),
        ("2:3", 832, 1248, True),
    ],
)
def test_dimension_mismatch(size: str, width: int, height: int, ok: bool) -> None:
    problem = _dimension_mismatch(size, width, height)
    assert (problem is None) is ok
    if not ok:
        assert problem is not None
        assert f"{width}x{height}" in problem


# -- 8. bad dataset rows -------------------------------------------------------------------------


def test_bad_dataset_rows_are_reported_and_the_good_ones_run(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    csv = tmp_path / "prompts.csv"
    csv.write_text(
        "key,prompt,size,seed\n"
        f"fox,a red fox,{SMALL},\n"
        "wide,a wide fox,9999x1,\n"
        f"owl,an owl,{SMALL},not-a-number\n"
        f"cat,a cat,{SMALL},7\n"
    )
    defs = build_image_assets("imgs", csv, storage=tmp_path / "out", retry_policy=None)
    asset = image_asset(defs)
    report = asset.specs_by_key[dg.AssetKey("imgs")].metadata["dataset_problem_report"].value
    assert "row 3, field 'size'" in report
    assert "row 4, field 'seed'" in report
    assert asset.partitions_def is not None
    assert asset.partitions_def.get_partition_keys() == ["fox", "cat"]
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource_for(emulator), "fox", "cat")
        assert result.success
        assert sorted(materializations(instance, "imgs")) == ["cat", "fox"]
        assert values(materializations(instance, "imgs")["cat"][0])["seed"] == 7
        warnings = [m for m in log_messages(instance, result.run_id) if "row left out" in m]
        assert any("row 3, field 'size'" in m and "9999" in m for m in warnings)
        assert any("row 4, field 'seed'" in m for m in warnings)


# -- 9. dynamic and daily partitions -------------------------------------------------------------


def test_dynamic_partitions_added_on_the_instance_run_as_one_range(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    defs = build_image_assets(
        "imgs", rows(4), storage=tmp_path, partitioning="dynamic", retry_policy=None
    )
    asset = image_asset(defs)
    assert isinstance(asset.partitions_def, dg.DynamicPartitionsDefinition)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("imgs_prompts", ["p0", "p1", "p2"])
        result = run_range(asset, instance, resource_for(emulator), "p0", "p2")
        assert result.success
        assert sorted(materializations(instance, "imgs")) == ["p0", "p1", "p2"]
        assert emulator.stats()["tasks_created"] == 3


def test_a_dynamic_partition_without_a_dataset_row_fails_alone_without_retries(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    policy = dg.RetryPolicy(max_retries=2)
    defs = build_image_assets(
        "imgs", rows(1), storage=tmp_path, partitioning="dynamic", retry_policy=policy
    )
    asset = image_asset(defs)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("imgs_prompts", ["p0", "zz"])
        result = run_range(asset, instance, resource_for(emulator), "p0", "zz")
        assert not result.success
        assert list(materializations(instance, "imgs")) == ["p0"]
        kinds = [e.event_type for e in result.all_events]
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in kinds
        data = step_failure(result).step_failure_data.user_failure_data
        assert data is not None
        failed = data.metadata["failed_partitions"].value
        assert isinstance(failed, dict)
        assert list(failed) == ["zz"]
        assert "no row with key 'zz'" in str(failed["zz"])


def test_random_seeds_are_drawn_once_per_partition_and_kept(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    dataset = [*rows(1), {"key": "p1", "prompt": "a forbidden fox", "size": SMALL}]
    asset = image_asset(
        build_image_assets(
            "imgs", dataset, storage=tmp_path, seed_strategy="random", retry_policy=None
        )
    )
    with dg.DagsterInstance.ephemeral() as instance:
        assert not run_range(asset, instance, resource_for(emulator), "p0", "p1").success
        assert not run_range(asset, instance, resource_for(emulator), "p0", "p1").success
        # The stored image is reused and the rejection remembered: no new draw, no new task.
        assert emulator.stats()["tasks_created"] == 2
        first, second = (values(m) for m in materializations(instance, "imgs")["p0"])
        assert second["reused"] is True
        assert first["seed"] == second["seed"]
        assert first["seed"] != derive_seed("imgs", "p0", dataset[0]["prompt"])


def test_daily_by_prompt_partitions_store_per_day_with_per_day_seeds(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    dataset = rows(2)
    asset = image_asset(
        build_image_assets(
            "daily",
            dataset,
            storage=tmp_path,
            partitioning="daily",
            daily_start_date="2026-01-01",
            retry_policy=None,
        )
    )
    resource = resource_for(emulator)
    keys = [
        dg.MultiPartitionKey({"date": day, "prompt": "p1"}) for day in ("2026-03-01", "2026-03-02")
    ]
    with dg.DagsterInstance.ephemeral() as instance:
        for key in keys:
            result = dg.materialize(
                [asset], instance=instance, resources={"zimage": resource}, partition_key=key
            )
            assert result.success
        mats = materializations(instance, "daily")
        assert sorted(mats) == ["2026-03-01|p1", "2026-03-02|p1"]
        first, second = (values(mats[str(k)][0]) for k in keys)
        assert first["seed"] != second["seed"]
        assert first["seed"] == derive_seed("daily", "2026-03-01|p1", dataset[1]["prompt"])
        assert first["prompt"] == second["prompt"] == dataset[1]["prompt"]
        assert Path(first["path"]) == tmp_path / "daily" / "2026-03-01__p1.webp"
        assert Path(second["path"]).is_file()
        assert [t["request"]["seed_sent"] for t in emulator.tasks()] == [
            first["seed"],
            second["seed"],
        ]


def test_daily_schedule_requests_one_run_per_prompt_for_the_ticks_date(tmp_path: Path) -> None:
    images = build_image_assets(
        "daily",
        rows(3),
        storage=tmp_path,
        partitioning="daily",
        daily_start_date="2026-01-01",
        schedule={"cron": "0 6 * * *"},
    )
    defs = dg.Definitions.merge(images, dg.Definitions(resources={"zimage": ZImageResource()}))
    tick = dt.datetime(2026, 3, 4, 6, 0, tzinfo=dt.timezone.utc)
    requests = schedule_requests(defs, "daily_schedule", tick)
    assert [str(r.partition_key) for r in requests] == [f"2026-03-04|p{i}" for i in range(3)]
    assert len({r.run_key for r in requests}) == 3


def test_schedule_needs_daily_partitions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="schedule needs partitioning: daily"):
        build_image_assets("imgs", rows(1), storage=tmp_path, schedule={"cron": "0 6 * * *"})
