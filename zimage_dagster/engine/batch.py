"""Many images in one run: submit concurrently, poll together, store each one as it finishes.

:class:`BatchGenerator` is the engine under the image assets and ops. For each :class:`ImageJob`
(one partition) it:

0. takes the partition's claim (:mod:`zimage_dagster.engine.claims`), so that of several runs
   working on the same partition at once only one creates its task; the others wait for that
   run to store the image and then reuse it (it is the same image), paying nothing;
1. reuses the stored image when the identical request was already generated (optional);
2. re-attaches to the partition's live task from the ledger (a retried step, a re-run after a
   crash) instead of creating a new one; a completed but uncollected task is collected;
3. otherwise creates a task and writes its ID to the ledger *before* waiting on it;
4. waits (adaptive polling), downloads, stores the image and its provenance atomically, and marks
   the ledger entry collected (temp files that a writer killed mid-write left in the asset's
   folders are removed when a batch starts, once they are an hour old);
5. resubmits a task that failed with a retryable provider error (same seed) within the
   resubmission budget, regenerates one whose result link expired (same seed, flagged
   ``regenerated``), and reports a fixable error (content policy...) as a failure of that
   partition alone.

Steps 1-3 and the resubmissions of step 5 are the one decision
(:func:`~zimage_dagster.engine.decide.decide`, shared with deferred mode, the create gate's
estimate and the prompt-dataset sensor); the error classification is the outcome model's
(:mod:`zimage_dagster.engine.outcome`). Nothing here knows Dagster:
callers get an ``on_success`` callback per stored image (the asset logs an
``AssetMaterialization`` there) and a :class:`~zimage_dagster.engine.outcome.BatchReport` at the
end.

Example:
    >>> import asyncio, tempfile
    >>> from zimage_dagster.api import AsyncZImageClient
    >>> from zimage_dagster.emulator import EmulatorConfig, EmulatorServer
    >>> from zimage_dagster.engine.ledger import TaskLedger
    >>> from zimage_dagster.engine.store import ImageStore
    >>> from zimage_dagster.prompts import PromptRow
    >>> store = ImageStore(tempfile.mkdtemp())
    >>> async def main(url: str, key: str) -> str:
    ...     async with AsyncZImageClient(api_key=key, base_url=url) as client:
    ...         engine = BatchGenerator(client, store, TaskLedger(store), ("catalogue",),
    ...                                 progress_interval=0)
    ...         row = PromptRow("fox", "a red fox", "1:1", 7, None)
    ...         return (await engine.run([ImageJob.from_row(row, seed=7)])).summary()
    >>> with EmulatorServer(EmulatorConfig.for_tests()) as emulator:
    ...     asyncio.run(main(emulator.url, emulator.api_key)).startswith("1 stored, 0 failed")
    True
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from zimage_dagster.api import (
    AsyncZImageClient,
    DownloadedImage,
    DownloadError,
    NotFoundError,
    ResultExpiredError,
    Task,
    TaskFailedError,
    WaitOutcome,
    ZImageError,
)
from zimage_dagster.engine.atomic import remove_stale_temp_files
from zimage_dagster.engine.claims import ClaimLostError, Owner, PartitionClaim, PartitionGate
from zimage_dagster.engine.collect import collected_record
from zimage_dagster.engine.create import CreateGate
from zimage_dagster.engine.credits import from_micro, to_micro
from zimage_dagster.engine.decide import Action, Decision, decide
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.engine.outcome import (
    BatchReport,
    ImageFailure,
    ImageSuccess,
    Log,
    failure_from_claim_error,
    failure_from_error,
    look_up,
    rejected_failure,
)
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.settings import GenerationPolicy, RunIdentity, settings_of
from zimage_dagster.engine.store import AssetLike, ImageStore, asset_parts
from zimage_dagster.engine.thumbnails import make_thumbnail

__all__ = ["BatchGenerator"]

log = logging.getLogger(__name__)


@dataclass
class _Attempt:
    """The state of one partition while it is being worked on."""

    task: Task | None = None
    attempts: int = 0
    regenerated: bool = False
    reattached: bool = False
    resubmits: int = 0  # the ledger's count for the task made next (see engine.decide)
    previous: list[str] = field(default_factory=list)


class BatchGenerator:
    """Generates the images of many partitions concurrently (see the module docstring).

    Args:
        client: an open :class:`~zimage_dagster.api.AsyncZImageClient`.
        store: where images and provenance records go.
        ledger: where task IDs are written before any wait.
        asset: the asset key's parts (the folder under the store's root).
        policy: how to generate (:class:`~zimage_dagster.engine.settings.GenerationPolicy`:
            reuse, rejections, the resubmission budget, tasks in flight, the wait deadline, the
            credit budgets).
        identity: who is generating (:class:`~zimage_dagster.engine.settings.RunIdentity`: the
            run recorded in the ledger and the claims, the step, whether a run is alive).
        on_success / on_failure: called (in the event loop's thread) as each partition finishes.
        progress_interval: seconds between progress log lines.
        claim_lease_s: lease of the partition claims (renewed while working).
        ledger_extra: written into the ledger entry of each task created (workflow keys such as
            ``deferred`` go to the entry's typed fields).

    The loose keyword arguments of earlier versions (``concurrency=``, ``run_id=``, ...) are
    still taken, with a ``DeprecationWarning``.
    """

    def __init__(
        self,
        client: AsyncZImageClient,
        store: ImageStore,
        ledger: TaskLedger,
        asset: AssetLike,
        policy: GenerationPolicy | None = None,
        identity: RunIdentity | None = None,
        *,
        on_success: Callable[[ImageSuccess], Any] | None = None,
        on_failure: Callable[[ImageFailure], Any] | None = None,
        logger: Log | None = None,
        progress_interval: float = 5.0,
        claim_lease_s: float | None = None,
        ledger_extra: Mapping[str, Any] | None = None,
        **loose: Any,
    ) -> None:
        self.settings, self.identity = settings_of(policy, identity, loose, where="BatchGenerator")
        self.client = client
        self.store = store
        self.ledger = ledger
        self.asset = asset_parts(asset)
        self.concurrency = self.settings.concurrency
        self.policy = self.settings.decision()
        self.wait_deadline = self.settings.wait_deadline
        self.on_success = on_success
        self.on_failure = on_failure
        self.run_id = self.identity.run_id
        self.log: Log = logger or log
        self.progress_interval = progress_interval
        self.ledger_extra = dict(ledger_extra or {})
        self._live = asyncio.Semaphore(self.concurrency)
        self._gate = PartitionGate(
            ledger.claim_book(lease_s=claim_lease_s, is_run_alive=self.identity.is_run_alive),
            lambda key: ledger.claim_path(self.asset, key),
            Owner.here(run_id=self.run_id, step=self.identity.step),
            logger=self.log,
        )
        self.creator = CreateGate(
            client, ledger, self.asset, self.settings, self.identity, logger=self.log
        )

    # -- the batch -----------------------------------------------------------------------------

    async def run(self, jobs: Sequence[ImageJob]) -> BatchReport:
        """Generate every job; returns when all have succeeded or failed.

        A progress line (done, failed, remaining, ETA) is logged every ``progress_interval``
        seconds while work is in flight, whether or not a partition finished meanwhile, and once
        at the end.
        """
        if self.store.is_local:  # temp files of writers killed mid-write (hours old)
            for folder in (self.store.asset_dir(self.asset), self.ledger.folder(self.asset)):
                await asyncio.to_thread(remove_stale_temp_files, folder.path)
        refused = await self.creator.refused(jobs, self.policy)
        if refused is not None:
            return refused
        with self._gate:
            report = await self._run(jobs)
        report.usage = self.creator.usage
        self.log.info(f"credits of {'/'.join(self.asset)}: {report.usage.summary()}")
        return report

    async def _run(self, jobs: Sequence[ImageJob]) -> BatchReport:
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
        key = job.partition_key

        def waiting(holder: PartitionClaim) -> None:
            self.log.info(
                f"partition {key}: being generated by {holder.owner.describe()}; "
                "waiting for its image instead of paying for another"
            )

        try:
            waited = await self._gate.take(key, on_wait=waiting)
        except Exception as exc:  # the storage cannot arbitrate: never create blindly
            return failure_from_claim_error(job, exc)
        try:
            decision, reused = await asyncio.to_thread(self._decide, job, waited)
            if reused is not None:
                return reused
            state = _Attempt()
            rejected = await self._start(job, decision, state)
            if rejected is not None:
                return rejected
            return await self._run_to_image(job, state)
        except ZImageError as exc:
            return failure_from_error(job, exc)
        except ClaimLostError as exc:
            return failure_from_claim_error(job, exc)
        except Exception as exc:  # one broken partition (disk full, a bug...) never sinks the batch
            self.log.warning(
                f"partition {job.partition_key}: unexpected {type(exc).__name__}: {exc}",
                exc_info=True,
            )
            return ImageFailure(
                job, "internal_error", f"{type(exc).__name__}: {exc}", retryable=True
            )
        finally:
            await asyncio.to_thread(self._gate.release, key)

    def _decide(self, job: ImageJob, waited: bool) -> tuple[Decision, ImageSuccess | None]:
        # Having waited for another run, reuse what it stored even if asked to regenerate:
        # both runs asked for the same image at the same time.
        policy = replace(self.policy, reuse_stored=True) if waited else self.policy
        return look_up(
            self.store,
            self.ledger,
            self.asset,
            job,
            policy,
            self.log,
            thumbnail=self.settings.thumbnails,
        )

    async def _start(
        self, job: ImageJob, decision: Decision, state: _Attempt
    ) -> ImageFailure | None:
        """Act on the decision taken for the partition (see
        :func:`~zimage_dagster.engine.decide.decide`): ``rejected`` fails it at once;
        ``reattach`` fetches the ledger's task (a completed one is just downloaded; a collected
        one whose image is gone is fetched again); ``create`` of a resubmission carries the
        attempt count and the earlier task IDs on from the ledger (an expired one is flagged
        ``regenerated``)."""
        if decision.action == Action.REJECTED:
            return rejected_failure(job, decision)
        entry = decision.entry
        if entry is None:
            return None
        state.attempts = entry.attempt
        state.previous = [p.task_id for p in entry.previous]
        if decision.action == Action.CREATE:
            state.previous.append(entry.task_id)
            state.regenerated = decision.regenerated
            state.resubmits = decision.resubmits
            return None
        if entry.status == LedgerStatus.COLLECTED:
            self.log.warning(
                f"partition {job.partition_key}: task {entry.task_id} was collected but its "
                "stored image is missing or unreadable; fetching its result again"
            )
        state.regenerated = entry.regenerated
        state.resubmits = entry.resubmits
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
            state.resubmits += 1
        return None

    async def _create(self, job: ImageJob, state: _Attempt) -> Task:
        if state.task is not None:
            state.previous.append(state.task.id)
        # Still ours? (A run that looked dead may have had its claim taken over.) In memory, so
        # checked here: a hop through the thread pool, busy with fsyncs, delayed every create.
        self._gate.check(job.partition_key)
        task = await self.creator.create(
            job.request,
            partition_key=job.partition_key,
            fingerprint=job.fingerprint,
            extra={**self.ledger_extra, **job.ledger_extra} or None,
            resubmits=state.resubmits,
            regenerated=state.regenerated,
        )
        state.attempts += 1
        state.reattached = False
        return task

    def _resubmit(self, job: ImageJob, entry: LedgerEntry, state: _Attempt) -> Decision:
        """After the task of ``entry`` failed or expired in this run: the one decision, with the
        resubmission budget (``create``: the state is ready for the new task)."""
        decision = decide(entry, None, job.fingerprint, self.policy, resubmitting=True)
        if decision.action == Action.CREATE:
            state.previous.append(entry.task_id)
            state.resubmits = decision.resubmits
            state.regenerated = state.regenerated or decision.regenerated
            state.task = None
        return decision

    async def _run_to_image(self, job: ImageJob, state: _Attempt) -> ImageSuccess | ImageFailure:
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
                image = await self.client.download(
                    _result_url(outcome.task),
                    task_id=task.id,
                    derive=make_thumbnail if self.settings.thumbnails else None,
                    check=self.settings.image_check,
                )
                downloading_s = time.monotonic() - started
            except TaskFailedError as exc:
                self.creator.task_failed(task)
                entry = await self._ledger_update(
                    job, task.id, LedgerStatus.FAILED, exc.message, code=str(exc.code)
                )
                decision = self._resubmit(job, entry, state)
                if decision.action == Action.CREATE:
                    self.log.info(
                        f"partition {job.partition_key}: task {task.id} failed with {exc.code}; "
                        "resubmitting with the same seed"
                    )
                    continue
                retryable = decision.action != Action.REJECTED or decision.budget_spent
                return ImageFailure(job, str(exc.code), exc.message, retryable, task.id)
            except ResultExpiredError:
                entry = await self._ledger_update(job, task.id, LedgerStatus.EXPIRED)
                if self._resubmit(job, entry, state).action != Action.CREATE:
                    raise
                self.log.info(
                    f"partition {job.partition_key}: the result of task {task.id} expired; "
                    "regenerating with the same seed"
                )
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
        entry = self.ledger.get(self.asset, job.partition_key)
        earlier = None
        if entry is not None and entry.task_id == task.id:
            earlier = from_micro(sum(to_micro(p.credits_reserved or 0) for p in entry.previous))
        path = self.store.image_path(self.asset, job.partition_key, image.extension.lstrip("."))
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
            partition_key=job.partition,  # a candidate's index is in its file name
            fingerprint=job.fingerprint,
            previous_task_ids=tuple(state.previous),
            credits_earlier_tasks=earlier,
            created_at=float(task.created) if task.created else time.time(),
            extra=dict(job.row.extra),
        )
        record = collected_record(record, entry, task.created)  # a deferred task's own story
        self.store.save(
            self.asset,
            job.partition_key,
            image.data,
            image.extension.lstrip("."),
            to_provenance(record),
        )
        self.ledger.mark_collected(self.asset, job.partition_key, task.id)
        # Made from the download's decode check, in its thread: no second decode, and no
        # image's pixels held while it waits here for a thread (peak memory bounded by those).
        return ImageSuccess(job, record, image.derived)

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
            job.partition_key,
            task_id,
            status,
            error_code=code,
            error_message=message,
        )


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
