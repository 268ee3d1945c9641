"""Many images in one run: submit concurrently, poll together, store each one as it finishes.

:class:`BatchGenerator` is the engine under the image assets and ops. For each :class:`ImageJob`
(one partition) it:

1. reuses the stored image when the identical request was already generated (optional);
2. re-attaches to the partition's live task from the ledger (a retried step, a re-run after a
   crash) instead of creating a new one; a completed but uncollected task is collected;
3. otherwise creates a task and writes its ID to the ledger *before* waiting on it;
4. waits (adaptive polling), downloads, stores the image and its provenance atomically, and marks
   the ledger entry collected;
5. resubmits a task that failed with a retryable provider error (same seed) within a budget,
   regenerates one whose result link expired (same seed, flagged ``regenerated``), and reports a
   fixable error (content policy...) as a failure of that partition alone.

Nothing here knows Dagster: callers get an ``on_success`` callback per stored image (the asset
logs an ``AssetMaterialization`` there) and a :class:`BatchReport` at the end.

Example::

    async with resource.async_client() as client:
        engine = BatchGenerator(client, store, ledger, asset=("catalogue",), on_success=print)
        report = await engine.run([ImageJob.from_row(row, seed=42) for row in dataset])
    print(report.summary())
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from zimage_dagster.api import (
    AsyncZImageClient,
    AuthenticationError,
    BadRequestError,
    CreateOutcomeUnknownError,
    DownloadedImage,
    DownloadError,
    GenerationRequest,
    InsufficientQuotaError,
    NotAnImageError,
    NotFoundError,
    PermissionDeniedError,
    RequestValidationError,
    ResultExpiredError,
    Task,
    TaskFailedError,
    WaitOutcome,
    ZImageError,
    is_retryable_task_error_code,
)
from zimage_dagster.ledger import LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.metadata import ImageRecord, from_provenance, make_thumbnail, to_provenance
from zimage_dagster.prompts import DEFAULT_SIZE, PromptRow, request_fingerprint
from zimage_dagster.storage import ImageStore, asset_parts

__all__ = [
    "BatchGenerator",
    "BatchReport",
    "ImageFailure",
    "ImageJob",
    "ImageSuccess",
    "storage_key",
]

log = logging.getLogger(__name__)


def storage_key(partition_key: str) -> str:
    """The file stem for a Dagster partition key (``|`` of multi-partition keys becomes ``__``).

    >>> storage_key("2026-11-25|hero")
    '2026-11-25__hero'
    """
    return str(partition_key).replace("|", "__")


@dataclass(frozen=True)
class ImageJob:
    """One partition to generate: its key, its dataset row and the seed that will be sent.

    >>> job = ImageJob.from_row(PromptRow("fox", "a red fox", "16:9", None, None), seed=7)
    >>> job.request.size, job.request.seed, job.storage_key
    ('16:9', 7, 'fox')
    """

    partition_key: str
    row: PromptRow
    seed: int

    @classmethod
    def from_row(cls, row: PromptRow, *, seed: int, partition_key: str | None = None) -> ImageJob:
        return cls(partition_key=partition_key or row.key, row=row, seed=seed)

    @property
    def storage_key(self) -> str:
        return storage_key(self.partition_key)

    @property
    def request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.row.prompt,
            size=self.row.size or DEFAULT_SIZE,
            seed=self.seed,
            nsfw_check=bool(self.row.nsfw_check),
        )

    @property
    def fingerprint(self) -> str:
        return request_fingerprint(
            self.row.prompt, self.row.size, self.seed, bool(self.row.nsfw_check)
        )


@dataclass(frozen=True)
class ImageSuccess:
    """A stored image: its record (everything the metadata shows) and its thumbnail data URI."""

    job: ImageJob
    record: ImageRecord
    thumbnail: str | None


@dataclass(frozen=True)
class ImageFailure:
    """A partition that produced no image, with the provider's code and message.

    ``retryable`` is False for errors the user must fix (content policy, invalid parameters):
    retrying them as they are would fail (and may cost) again.
    """

    job: ImageJob
    code: str
    message: str
    retryable: bool
    task_id: str | None = None

    def describe(self) -> str:
        task = f" (task {self.task_id})" if self.task_id else ""
        return f"{self.job.partition_key}: {self.code}: {self.message}{task}"


@dataclass
class BatchReport:
    """What a batch did: successes and failures in the order they finished."""

    successes: list[ImageSuccess] = field(default_factory=list)
    failures: list[ImageFailure] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def all_retryable(self) -> bool:
        return all(f.retryable for f in self.failures)

    def summary(self) -> str:
        return (
            f"{len(self.successes)} stored, {len(self.failures)} failed in {self.elapsed_s:.1f} s"
        )

    def failure_report(self) -> str:
        return "\n".join(f"- {f.describe()}" for f in self.failures)


class _Log(Protocol):
    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class _Attempt:
    """The state of one partition while it is being worked on."""

    task: Task | None = None
    attempts: int = 0
    regenerated: bool = False
    reattached: bool = False
    previous: list[str] = field(default_factory=list)


class BatchGenerator:
    """Generates the images of many partitions concurrently (see the module docstring).

    Args:
        client: an open :class:`~zimage_dagster.api.AsyncZImageClient`.
        store: where images and provenance records go.
        ledger: where task IDs are written before any wait.
        asset: the asset key's parts (the folder under the store's root).
        concurrency: partitions in flight at once.
        max_resubmits: new tasks allowed per partition after retryable task failures or expiry.
        reuse_stored: reuse a stored image made from the identical request instead of paying again.
        retry_rejected: submit again a request the provider rejected before with a fixable error
            (by default the ledger's record of the rejection fails the partition at once).
        wait_deadline: seconds to wait for one task.
        on_success / on_failure: called (in the event loop's thread) as each partition finishes.
        run_id: recorded in the ledger.
        progress_interval: seconds between progress log lines.
    """

    def __init__(
        self,
        client: AsyncZImageClient,
        store: ImageStore,
        ledger: TaskLedger,
        asset: str | Sequence[str],
        *,
        concurrency: int = 8,
        max_resubmits: int = 2,
        reuse_stored: bool = True,
        retry_rejected: bool = False,
        wait_deadline: float | None = None,
        on_success: Callable[[ImageSuccess], Any] | None = None,
        on_failure: Callable[[ImageFailure], Any] | None = None,
        run_id: str | None = None,
        logger: _Log | None = None,
        progress_interval: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.client = client
        self.store = store
        self.ledger = ledger
        self.asset = asset_parts(asset)
        self.concurrency = concurrency
        self.max_resubmits = max_resubmits
        self.reuse_stored = reuse_stored
        self.retry_rejected = retry_rejected
        self.wait_deadline = wait_deadline
        self.on_success = on_success
        self.on_failure = on_failure
        self.run_id = run_id
        self.log: _Log = logger or log
        self.progress_interval = progress_interval
        self._live = asyncio.Semaphore(concurrency)

    # -- the batch -----------------------------------------------------------------------------

    async def run(self, jobs: Sequence[ImageJob]) -> BatchReport:
        """Generate every job; returns when all have succeeded or failed.

        A progress line (done, failed, remaining, ETA) is logged every ``progress_interval``
        seconds while work is in flight, whether or not a partition finished meanwhile, and once
        at the end.
        """
        report = BatchReport()
        started = time.monotonic()
        # Tasks alive at the provider are bounded by `concurrency`; partitions in any step
        # (download, store) by twice that, which bounds memory.
        self._live = asyncio.Semaphore(self.concurrency)
        limit = asyncio.Semaphore(2 * self.concurrency)

        async def one(job: ImageJob) -> ImageSuccess | ImageFailure:
            async with limit:
                return await self._generate(job)

        async def ticker() -> None:
            while True:
                await asyncio.sleep(self.progress_interval)
                self.log.info(_progress_line(report, len(jobs), time.monotonic() - started))

        pending = [asyncio.ensure_future(one(job)) for job in jobs]
        progress = asyncio.ensure_future(ticker()) if jobs and self.progress_interval > 0 else None
        try:
            for next_done in asyncio.as_completed(pending):
                outcome = await next_done
                if isinstance(outcome, ImageSuccess):
                    report.successes.append(outcome)
                    if self.on_success is not None:
                        self.on_success(outcome)
                else:
                    report.failures.append(outcome)
                    self.log.warning(f"partition {outcome.describe()}")
                    if self.on_failure is not None:
                        self.on_failure(outcome)
        finally:
            leftovers = [*pending, *([progress] if progress is not None else [])]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        report.elapsed_s = time.monotonic() - started
        self.log.info(_progress_line(report, len(jobs), report.elapsed_s))
        return report

    # -- one partition -------------------------------------------------------------------------

    async def _generate(self, job: ImageJob) -> ImageSuccess | ImageFailure:
        try:
            reused = await asyncio.to_thread(self._reuse_stored, job)
            if reused is not None:
                return reused
            state = _Attempt()
            rejected = await self._reattach(job, state)
            if rejected is not None:
                return rejected
            return await self._run_to_image(job, state)
        except ZImageError as exc:
            return self._failure_from_error(job, exc)
        except Exception as exc:  # one broken partition (disk full, a bug...) never sinks the batch
            self.log.warning(
                f"partition {job.partition_key}: unexpected {type(exc).__name__}: {exc}",
                exc_info=True,
            )
            return ImageFailure(
                job, "internal_error", f"{type(exc).__name__}: {exc}", retryable=True
            )

    def _reuse_stored(self, job: ImageJob) -> ImageSuccess | None:
        """The stored image, if it was made from the identical request and is intact.

        A stored file whose sha256 differs from its provenance record (damaged, replaced by
        hand) is not reused: the partition is generated again (same seed, so the same image).
        """
        if not self.reuse_stored:
            return None
        found = self.store.find(self.asset, job.storage_key)
        if found is None or found.provenance.get("fingerprint") != job.fingerprint:
            return None
        entry = self.ledger.get(self.asset, job.storage_key)
        if entry is not None and entry.is_open and entry.fingerprint != job.fingerprint:
            return None
        data = self.store.read_bytes_or_none(found.path)
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != found.sha256:
            self.log.warning(
                f"partition {job.partition_key}: the stored file {found.path} differs from its "
                "provenance record (sha256); generating it again"
            )
            return None
        record = replace(from_provenance(found.provenance), reused=True, regenerated=False)
        if entry is not None and entry.is_open and entry.task_id == record.task_id:
            # Stored, but the run stopped before the ledger said so.
            self.ledger.mark_collected(self.asset, job.storage_key, entry.task_id)
        return ImageSuccess(job, record, make_thumbnail(data))

    async def _reattach(self, job: ImageJob, state: _Attempt) -> ImageFailure | None:
        """Pick up the partition's task from the ledger, if it is still the same request.

        ``submitted`` / ``completed``: the live task is fetched and waited on (a completed one
        is just downloaded). ``failed`` with a fixable code: the partition fails at once (unless
        ``retry_rejected``). ``expired``: a new task is made and flagged ``regenerated``.
        ``failed`` (retryable) / ``abandoned``: a new task is made. Either way the attempt count
        and the earlier task IDs carry on from the ledger.
        """
        entry = await asyncio.to_thread(self.ledger.get, self.asset, job.storage_key)
        if entry is None or entry.fingerprint != job.fingerprint:
            return None
        state.attempts = entry.attempt
        state.previous = [p.task_id for p in entry.previous]
        if entry.status == LedgerStatus.FAILED and not self.retry_rejected:
            code = entry.error_code or "unknown_error"
            if not is_retryable_task_error_code(code, attempt=entry.attempt):
                return ImageFailure(
                    job,
                    code,
                    f"{entry.error_message or 'rejected'} (rejected before; change the prompt, "
                    "or pass retry_rejected=True to submit it again)",
                    retryable=False,
                    task_id=entry.task_id,
                )
        if not entry.is_open:
            state.previous.append(entry.task_id)
            state.regenerated = entry.status == LedgerStatus.EXPIRED
            return None
        # A task the deferred-mode sensor made to replace an expired one is still a regeneration.
        state.regenerated = bool(entry.extra.get("regenerated"))
        try:
            state.task = await self.client.get_task(entry.task_id)
            state.reattached = True
            self.log.info(
                f"partition {job.partition_key}: re-attached to task {entry.task_id} "
                f"({state.task.status}) from the ledger"
            )
        except NotFoundError:
            await self._ledger_update(job, entry.task_id, LedgerStatus.ABANDONED, "not found")
            state.previous.append(entry.task_id)
        return None

    async def _create(self, job: ImageJob, state: _Attempt) -> Task:
        if state.task is not None:
            state.previous.append(state.task.id)
        task = await self.client.create_task(job.request)
        state.attempts += 1
        state.reattached = False
        await asyncio.to_thread(
            self.ledger.record_submitted,
            self.asset,
            job.storage_key,
            task_id=task.id,
            request=job.request.to_wire(),
            fingerprint=job.fingerprint,
            run_id=self.run_id,
        )
        return task

    async def _run_to_image(self, job: ImageJob, state: _Attempt) -> ImageSuccess | ImageFailure:
        budget = self.max_resubmits + max(state.attempts, 1)
        while True:
            try:
                # The provider counts tasks from create to their end: hold a slot that long,
                # and let the next partition start while this one downloads and stores.
                async with self._live:
                    if state.task is None:
                        state.task = await self._create(job, state)
                    task = state.task
                    outcome = await self.client.wait(task, deadline=self.wait_deadline)
                await self._ledger_update(job, task.id, LedgerStatus.COMPLETED)
                started = time.monotonic()
                image = await self.client.download(_result_url(outcome.task), task_id=task.id)
                downloading_s = time.monotonic() - started
            except TaskFailedError as exc:
                await self._ledger_update(
                    job, task.id, LedgerStatus.FAILED, exc.message, code=str(exc.code)
                )
                retryable = is_retryable_task_error_code(exc.code, attempt=state.attempts)
                if retryable and state.attempts < budget:
                    self.log.info(
                        f"partition {job.partition_key}: task {task.id} failed with {exc.code}; "
                        "resubmitting with the same seed"
                    )
                    state.previous.append(task.id)
                    state.task = None
                    continue
                return ImageFailure(job, str(exc.code), exc.message, retryable, task.id)
            except ResultExpiredError:
                await self._ledger_update(job, task.id, LedgerStatus.EXPIRED)
                if state.attempts >= budget:
                    raise
                self.log.info(
                    f"partition {job.partition_key}: the result of task {task.id} expired; "
                    "regenerating with the same seed"
                )
                state.regenerated = True
                state.previous.append(task.id)
                state.task = None
                continue
            return await asyncio.to_thread(self._store, job, state, outcome, image, downloading_s)

    def _store(
        self,
        job: ImageJob,
        state: _Attempt,
        outcome: WaitOutcome,
        image: DownloadedImage,
        downloading_s: float,
    ) -> ImageSuccess:
        task = outcome.task
        path = self.store.image_path(self.asset, job.storage_key, image.extension.lstrip("."))
        record = ImageRecord(
            seed=job.seed,
            task_id=task.id,
            prompt=job.row.prompt,
            model=task.model or job.request.model,
            size_requested=job.request.size,
            nsfw_check=job.request.nsfw_check,
            width=image.width,
            height=image.height,
            path=str(path),
            sha256=image.sha256,
            bytes=image.bytes,
            format=image.format,
            credits_reserved=task.usage.credits_reserved if task.usage else None,
            queued_s=round(outcome.queued_s, 3),
            generating_s=round(outcome.generating_s, 3),
            downloading_s=round(downloading_s, 3),
            polls=outcome.polls,
            attempts=max(state.attempts, 1),
            reused=state.reattached,
            regenerated=state.regenerated,
            asset="/".join(self.asset),
            partition_key=job.partition_key,
            fingerprint=job.fingerprint,
            previous_task_ids=tuple(state.previous),
            created_at=float(task.created) if task.created else time.time(),
            extra=dict(job.row.extra),
        )
        self.store.save(
            self.asset,
            job.storage_key,
            image.data,
            image.extension.lstrip("."),
            to_provenance(record),
        )
        self.ledger.mark_collected(self.asset, job.storage_key, task.id)
        return ImageSuccess(job, record, make_thumbnail(image.data))

    async def _ledger_update(
        self,
        job: ImageJob,
        task_id: str,
        status: LedgerStatus,
        message: str | None = None,
        *,
        code: str | None = None,
    ) -> LedgerEntry:
        return await asyncio.to_thread(
            self.ledger.update,
            self.asset,
            job.storage_key,
            task_id,
            status,
            error_code=code,
            error_message=message,
        )

    def _failure_from_error(self, job: ImageJob, exc: ZImageError) -> ImageFailure:
        task_id = getattr(exc, "task_id", None)
        if isinstance(exc, CreateOutcomeUnknownError):
            code = "create_outcome_unknown"
        else:
            code = str(getattr(exc, "code", None) or type(exc).__name__)
        return ImageFailure(job, code, str(exc), _is_transient(exc), task_id)


def _is_transient(exc: ZImageError) -> bool:
    """Whether running the step again may succeed without changing anything."""
    if isinstance(exc, TaskFailedError):
        return exc.retryable
    permanent = (
        RequestValidationError,
        BadRequestError,
        AuthenticationError,
        InsufficientQuotaError,
        PermissionDeniedError,
        NotAnImageError,
    )
    return not isinstance(exc, permanent)


def _result_url(task: Task) -> str:
    if not task.results:
        raise DownloadError(f"task {task.id} completed without a result link")
    return task.results[0]


def _progress_line(report: BatchReport, total: int, elapsed: float) -> str:
    done, failed = len(report.successes), len(report.failures)
    remaining = total - done - failed
    finished = done + failed
    eta = f"{elapsed / finished * remaining:.0f} s" if finished and remaining else "-"
    return (
        f"images: {done} done, {failed} failed, {remaining} remaining of {total}; "
        f"elapsed {elapsed:.0f} s, ETA {eta}"
    )
