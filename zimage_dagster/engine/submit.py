"""Deferred submit: create the tasks, write them to the ledger, and return without waiting.

Waiting for the provider inside a running step holds a worker for the whole generation. In
deferred mode a step only submits (:func:`submit_jobs`): one task per partition (bounded
concurrency, async client), each task ID written to the ledger with ``extra["deferred"] = True``
before anything else. The task watcher (:mod:`zimage_dagster.engine.watcher`, driven by the
task-status sensor) collects the images later.

Per partition, the same decisions as blocking mode (:mod:`zimage_dagster.engine.outcome`), in the
same order, under the partition's claim (:mod:`zimage_dagster.engine.claims`): a partition another
run is generating right now is left to it and reported as such (``held``, not a failure); an
intact stored image of the identical request is reused (``successes``); an open
task for it is kept (``open_task``; a blocking run's live task is adopted, so the sensor watches
it); a fixable rejection of it fails at once (``failures``); otherwise a task is created
(``submitted``).

Example:
    >>> import asyncio, tempfile
    >>> from zimage_dagster import api, emulator
    >>> from zimage_dagster.prompts import PromptRow
    >>> from zimage_dagster.engine.ledger import TaskLedger
    >>> fox = ImageJob.from_row(PromptRow("fox", "a red fox", None, 7, None), seed=7)
    >>> async def twice(url: str, key: str, ledger: TaskLedger) -> str:
    ...     async with api.AsyncZImageClient(api_key=key, base_url=url) as client:
    ...         first = await submit_jobs(client, ledger, ("catalogue",), [fox])
    ...         again = await submit_jobs(client, ledger, ("catalogue",), [fox])
    ...         return f"{len(first.submitted)} then {len(again.submitted)}"
    >>> with emulator.EmulatorServer(emulator.EmulatorConfig.for_tests()) as server:
    ...     asyncio.run(twice(server.url, server.api_key, TaskLedger(tempfile.mkdtemp())))
    '1 then 0'
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence

from zimage_dagster.api import AsyncZImageClient, ZImageError
from zimage_dagster.engine.capacity import OwnSlots
from zimage_dagster.engine.claims import Owner, PartitionGate, RunAliveFn
from zimage_dagster.engine.create import CreateGate
from zimage_dagster.engine.credits import CreditBudget
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerConflictError, LedgerEntry, TaskLedger
from zimage_dagster.engine.outcome import (
    BatchReport,
    Log,
    SubmittedTask,
    failure_from_claim_error,
    failure_from_error,
    rejected_before,
    reusable_image,
)
from zimage_dagster.engine.store import AssetLike, asset_parts

__all__ = ["CALLBACK_URL_ENV", "resolve_callback_url", "submit_jobs"]

log = logging.getLogger(__name__)

#: Environment variable holding the callback URL (it carries the receiver's secret token).
CALLBACK_URL_ENV = "ZIMAGE_CALLBACK_URL"


def resolve_callback_url(callback_url: str | None) -> str | None:
    """The given URL, else ``$ZIMAGE_CALLBACK_URL``, else ``None`` (no callbacks)."""
    return callback_url or os.environ.get(CALLBACK_URL_ENV) or None


async def submit_jobs(
    client: AsyncZImageClient,
    ledger: TaskLedger,
    asset: AssetLike,
    jobs: Sequence[ImageJob],
    *,
    concurrency: int = 8,
    reuse_stored: bool = True,
    retry_rejected: bool = False,
    callback_url: str | None = None,
    run_id: str | None = None,
    logger: Log | None = None,
    step: str | None = None,
    is_run_alive: RunAliveFn | None = None,
    budget: CreditBudget | None = None,
) -> BatchReport:
    """Create a task for each job that needs one, record it in the ledger, and return.

    ``callback_url`` (default ``$ZIMAGE_CALLBACK_URL``) is sent with each task; it is never
    written to the ledger. ``run_id``, ``step``, ``is_run_alive`` and ``budget`` mean what they
    mean for :class:`~zimage_dagster.engine.batch.BatchGenerator`.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    parts = asset_parts(asset)
    out = logger or log
    callback = resolve_callback_url(callback_url)
    started = time.monotonic()
    limit = asyncio.Semaphore(concurrency)
    creator = CreateGate(client, ledger, parts, budget=budget, run_id=run_id, logger=out)
    slots = OwnSlots(client, ledger, parts, logger=out)
    refused = await creator.refused(jobs, reuse_stored=reuse_stored, retry_rejected=retry_rejected)
    if refused is not None:
        return refused
    report = BatchReport(usage=creator.usage)

    gate = PartitionGate(
        ledger.claim_book(is_run_alive=is_run_alive),
        lambda key: ledger.claim_path(parts, key),
        Owner.here(run_id=run_id, step=step),
        logger=out,
    )

    async def one(job: ImageJob) -> None:
        try:
            attempt = await asyncio.to_thread(gate.try_take, job.partition_key)
        except Exception as exc:  # the storage cannot arbitrate: never create blindly
            report.failures.append(failure_from_claim_error(job, exc))
            return
        if not attempt.acquired:
            holder = attempt.claim.owner.describe()
            out.info(f"partition {job.partition_key}: being generated by {holder}; left to it")
            report.held.append((job, holder))
            return
        try:
            await claimed(job)
        finally:
            await asyncio.to_thread(gate.release, job.partition_key)

    async def claimed(job: ImageJob) -> None:
        if reuse_stored:
            reused = await asyncio.to_thread(reusable_image, ledger.store, ledger, parts, job, out)
            if reused is not None:
                report.successes.append(reused)
                return
        entry = await asyncio.to_thread(_adopt_open_task, ledger, parts, job)
        if entry is not None and entry.is_open:
            report.open_task.append(SubmittedTask(job, entry.task_id))
            return
        rejected = rejected_before(job, entry, retry_rejected=retry_rejected)
        if rejected is not None:
            report.failures.append(rejected)
            return
        async with limit, slots.turn() as wait_for_capacity:
            request = job.request
            if callback is not None:
                request = request.model_copy(update={"callback_url": callback})
            try:
                task = await creator.create(
                    request,
                    partition_key=job.partition_key,
                    fingerprint=job.fingerprint,
                    record=job.request.to_wire(),
                    extra={"deferred": True, "resubmits": 0},
                    wait_for_capacity=wait_for_capacity,
                )
            except ZImageError as exc:
                report.failures.append(failure_from_error(job, exc))
                return
            slots.opened(task, job.partition_key)
            report.submitted.append(SubmittedTask(job, task.id))

    with gate:
        try:
            await asyncio.gather(*(one(job) for job in jobs))
        finally:
            await slots.aclose()  # the last create is made: open tasks are the sensor's
    report.elapsed_s = time.monotonic() - started
    out.info(f"deferred submit of {len(jobs)} partition(s): {report.summary()}")
    if slots.throttled:
        out.info(f"at the provider's concurrency cap: {slots.summary()}")
    out.info(f"credits of {'/'.join(parts)}: {report.usage.summary()}")
    return report


def _adopt_open_task(
    ledger: TaskLedger, asset: tuple[str, ...], job: ImageJob
) -> LedgerEntry | None:
    """The partition's ledger entry for this identical request (``None`` for another request).

    An open entry of a blocking run is adopted (marked deferred) so that the sensor watches it.
    """
    entry = ledger.get(asset, job.partition_key)
    if entry is not None and entry.extra.get("recovered_from") and not entry.fingerprint:
        try:  # re-made from a damaged file: it is this partition's task
            entry = ledger.restore_request(
                asset,
                job.partition_key,
                entry.task_id,
                request=job.request.to_wire(),
                fingerprint=job.fingerprint,
            )
        except (LedgerConflictError, KeyError):
            return None
    if entry is None or entry.fingerprint != job.fingerprint:
        return None
    if entry.is_open and not entry.extra.get("deferred"):
        try:
            return ledger.update(
                asset, job.partition_key, entry.task_id, entry.status, extra={"deferred": True}
            )
        except (LedgerConflictError, KeyError):
            return None
    return entry
