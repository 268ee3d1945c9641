"""The batch engine on its own (no Dagster run): ledger re-attach, resubmit budget, reuse, isolation.

Real parts only: the emulator over HTTP, the async client, an image store and ledger in tmp_path.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.dagster._support import SMALL, make_fast
from zimage_dagster.api import AsyncZImageClient, GenerationRequest, PollPolicy, ZImageClient
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.batch import BatchGenerator
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.keys import storage_key
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.outcome import BatchReport, ImageFailure
from zimage_dagster.engine.settings import GenerationPolicy
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import PromptRow


class _Lines:
    """A logger that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(("info", msg))

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(("warning", msg))

    def text(self) -> str:
        return "\n".join(m for _, m in self.lines)


def _job(key: str, prompt: str | None = None, seed: int = 1234) -> ImageJob:
    row = PromptRow(key, prompt or f"a quiet harbour at dawn, {key}", SMALL, None, None)
    return ImageJob.from_row(row, seed=seed)


#: Polls soon after the create (these tests drive the engine directly, with a quick client).
FAST_POLLS = PollPolicy(
    first_wait_fraction=0.1, min_interval=0.05, initial_interval=0.1, max_interval=0.2
)


def _run(
    emulator: EmulatorServer,
    store: ImageStore,
    jobs: list[ImageJob],
    logger: Any = None,
    progress_interval: float = 5.0,
    **policy: Any,
) -> BatchReport:
    async def go() -> BatchReport:
        async with AsyncZImageClient(
            api_key=emulator.api_key, base_url=emulator.url, poll=FAST_POLLS
        ) as client:
            generator = BatchGenerator(
                client,
                store,
                TaskLedger(store),
                "imgs",
                GenerationPolicy(**policy),
                logger=logger,
                progress_interval=progress_interval,
            )
            return await generator.run(jobs)

    return asyncio.run(go())


def _submit_and_record(
    emulator: EmulatorServer, store: ImageStore, job: ImageJob, *, wait: bool = True
) -> str:
    """Create the job's task and record it in the ledger, as the engine does before waiting,
    then (``wait``) let it finish: a run that died before collecting it."""
    with ZImageClient(api_key=emulator.api_key, base_url=emulator.url, poll=FAST_POLLS) as client:
        task = client.create_task(job.request)
        if wait:
            client.wait(task)
    TaskLedger(store).record_submitted(
        "imgs",
        job.partition_key,
        task_id=task.id,
        request=job.request.to_wire(),
        fingerprint=job.fingerprint,
    )
    return task.id


# -- re-attach -----------------------------------------------------------------------------------


def test_a_completed_uncollected_ledger_task_is_collected_without_a_new_task(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    store = ImageStore(tmp_path)
    job = _job("a")
    task_id = _submit_and_record(emulator, store, job)
    TaskLedger(store).mark_completed("imgs", "a", task_id)

    report = _run(emulator, store, [job])
    (success,) = report.successes
    assert emulator.stats()["tasks_created"] == 1
    assert success.record.task_id == task_id
    assert success.record.reused is True
    assert success.record.regenerated is False
    assert success.record.attempts == 1
    entry = TaskLedger(store).get("imgs", "a")
    assert entry is not None
    assert entry.status == LedgerStatus.COLLECTED


def test_an_expired_ledger_entry_is_regenerated_with_the_same_seed_and_says_so(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """An earlier run saw the link expire (ledger ``expired``) and then stopped."""
    make_fast(emulator)
    store = ImageStore(tmp_path)
    job = _job("a", seed=777)
    old = _submit_and_record(emulator, store, job)
    TaskLedger(store).mark_expired("imgs", "a", old)

    (success,) = _run(emulator, store, [job]).successes
    record = success.record
    assert record.regenerated is True
    assert record.reused is False
    assert record.task_id != old
    assert record.previous_task_ids == (old,)
    assert record.attempts == 2
    assert [t["request"]["seed_sent"] for t in emulator.tasks()] == [777, 777]


def test_a_live_task_that_fails_after_reattach_is_resubmitted_and_not_marked_reused(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, failure_rules=[{"pattern": "doomed", "code": "service_error"}])
    store = ImageStore(tmp_path)
    job = _job("a", prompt="a doomed harbour")
    old = _submit_and_record(emulator, store, job, wait=False)
    emulator.configure(failure_rules=[])  # the provider recovered (for new tasks)

    (success,) = _run(emulator, store, [job]).successes
    assert success.record.reused is False
    assert success.record.attempts == 2
    assert success.record.previous_task_ids == (old,)


def test_a_ledger_task_the_provider_no_longer_knows_is_abandoned_and_replaced(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    store = ImageStore(tmp_path)
    job = _job("a")
    old = _submit_and_record(emulator, store, job)
    emulator.reset()  # the provider forgot every task
    make_fast(emulator)

    (success,) = _run(emulator, store, [job]).successes
    assert success.record.task_id != old
    assert success.record.previous_task_ids == (old,)
    entry = TaskLedger(store).get("imgs", "a")
    assert entry is not None
    assert entry.previous[-1].status == LedgerStatus.ABANDONED


# -- resubmit budget -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "max_resubmits", "tasks"),
    [
        ("service_error", 0, 1),
        ("service_error", 2, 3),
        ("a_code_nobody_documented", 5, 2),  # unknown: the benefit of the doubt once
        ("content_policy_violation", 5, 1),  # fixable: never resubmitted
    ],
)
def test_task_failures_are_resubmitted_within_the_budget(
    emulator: EmulatorServer, tmp_path: Path, code: str, max_resubmits: int, tasks: int
) -> None:
    make_fast(emulator, failure_rules=[{"pattern": "doomed", "code": code}])
    store = ImageStore(tmp_path)
    report = _run(
        emulator, store, [_job("a", prompt="a doomed harbour")], max_resubmits=max_resubmits
    )
    (failure,) = report.failures
    assert failure.code == code
    assert emulator.stats()["tasks_created"] == tasks
    assert len({t["request"]["seed_sent"] for t in emulator.tasks()}) == 1
    entry = TaskLedger(store).get("imgs", "a")
    assert entry is not None
    assert entry.status == LedgerStatus.FAILED
    assert entry.attempt == tasks
    assert failure.task_id == entry.task_id


def test_the_budget_counts_tasks_from_earlier_runs_once(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A run after a retryable failure gets ``max_resubmits`` more tasks, not one more."""
    make_fast(emulator, failure_rules=[{"pattern": "doomed", "code": "service_error"}])
    store = ImageStore(tmp_path)
    job = _job("a", prompt="a doomed harbour")
    _run(emulator, store, [job], max_resubmits=0)
    assert emulator.stats()["tasks_created"] == 1
    _run(emulator, store, [job], max_resubmits=2)
    assert emulator.stats()["tasks_created"] == 3
    entry = TaskLedger(store).get("imgs", "a")
    assert entry is not None
    assert entry.attempt == 3


# -- reuse ---------------------------------------------------------------------------------------


def test_a_stored_image_whose_ledger_entry_was_left_open_is_reused_and_the_entry_closed(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """The process died between storing the image and marking the ledger entry collected."""
    make_fast(emulator)
    store = ImageStore(tmp_path)
    job = _job("a")
    (first,) = _run(emulator, store, [job]).successes
    ledger = TaskLedger(store)
    ledger.mark_completed("imgs", "a", first.record.task_id)  # as if collected never happened

    (again,) = _run(emulator, store, [job]).successes
    assert again.record.reused is True
    assert again.record.task_id == first.record.task_id
    assert emulator.stats()["tasks_created"] == 1
    entry = ledger.get("imgs", "a")
    assert entry is not None
    assert entry.status == LedgerStatus.COLLECTED


def test_a_changed_request_is_not_served_from_storage(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    store = ImageStore(tmp_path)
    _run(emulator, store, [_job("a", seed=1)])
    (success,) = _run(emulator, store, [_job("a", seed=2)]).successes
    assert success.record.reused is False
    assert success.record.seed == 2
    assert emulator.stats()["tasks_created"] == 2


# -- isolation and reporting ---------------------------------------------------------------------


def test_one_broken_partition_does_not_sink_the_batch(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    store = ImageStore(tmp_path)
    broken = ImageJob(partition_key="../escape", row=_job("x").row, seed=5)
    log = _Lines()
    report = _run(emulator, store, [_job("a"), broken, _job("b")], logger=log)
    assert sorted(s.job.partition_key for s in report.successes) == ["a", "b"]
    (failure,) = report.failures
    assert isinstance(failure, ImageFailure)
    assert failure.job is broken
    assert failure.code == "internal_error"
    assert "UnsafePathError" in failure.message
    assert "../escape" in failure.describe()
    assert emulator.stats()["tasks_created"] == 2


def test_progress_is_logged_while_tasks_are_in_flight(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, latency_s=0.6)
    log = _Lines()
    report = _run(
        emulator, ImageStore(tmp_path), [_job("a"), _job("b")], logger=log, progress_interval=0.15
    )
    assert len(report.successes) == 2
    progress = [m for _, m in log.lines if m.startswith("images: ")]
    # Several lines before anything finished, then the final one.
    assert sum("0 done" in m for m in progress) >= 2
    assert progress[-1].startswith("images: 2 done, 0 failed, 0 remaining of 2")
    assert report.summary().startswith("2 stored, 0 failed")


def test_concurrency_is_bounded_by_the_engine(emulator: EmulatorServer, tmp_path: Path) -> None:
    make_fast(emulator, latency_s=0.3)
    jobs = [_job(f"k{i}") for i in range(4)]
    report = _run(emulator, ImageStore(tmp_path), jobs, concurrency=2)
    assert len(report.successes) == 4
    assert emulator.stats()["peak_concurrent_tasks"] == 2


def test_storage_key_and_job_request() -> None:
    assert storage_key("2026-01-02|fox") == "2026-01-02__fox"
    job = _job("a", seed=9)
    assert job.request == GenerationRequest(
        prompt=job.row.prompt, size=SMALL, seed=9, nsfw_check=False
    )


def test_the_engine_logs_through_the_standard_logger_by_default(
    emulator: EmulatorServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_fast(emulator, failure_rules=[{"pattern": "doomed", "code": "content_policy_violation"}])
    with caplog.at_level(logging.INFO, logger="zimage_dagster.engine.batch"):
        _run(emulator, ImageStore(tmp_path), [_job("a", prompt="a doomed harbour")])
    assert "a: content_policy_violation" in caplog.text
