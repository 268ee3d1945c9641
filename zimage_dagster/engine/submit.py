"""Deferred submit: create the tasks, write them to the ledger, and return without waiting.

Waiting for the provider inside a running step holds a worker for the whole generation. In
deferred mode a step only submits (:func:`submit_jobs`): one task per partition (bounded
concurrency, async client), each task ID written to the ledger with ``extra["deferred"] = True``
before anything else. The task watcher (:mod:`zimage_dagster.engine.watcher`, driven by the
task-status sensor) collects the images later.

Per partition, the same decisions as blocking mode (:mod:`zimage_dagster.engine.outcome`), in the
same order: an intact stored image of the identical request is reused (``successes``); an open
task for it is kept (``open_task``; a blocking run's live task is adopted, so the sensor watches
it); a fixable rejection of it fails at once (``failures``); otherwise a task is created
(``submitted``).

Example:
    >>> import asyncio, tempfile
    >>> from zimage_dagster.api import AsyncZImageClient
    >>> from zimage_dagster.emulator import EmulatorConfig, EmulatorServer
    >>> from zimage_dagster.engine.jobs import ImageJob
    >>> from zimage_dagster.engine.ledger import TaskLedger
    >>> from zimage_dagster.prompts import PromptRow
    >>> ledger = TaskLedger(tempfile.mkdtemp())
    >>> job = ImageJob.from_row(PromptRow("fox", "a red fox", None, 7, None), seed=7)
    >>> async def main(url: str, key: str) -> str:
    ...     async with AsyncZImageClient(api_key=key, base_url=url) as client:
    ...         first = await submit_jobs(client, ledger, ("catalogue",), [job])
    ...         again = await submit_jobs(client, ledger, ("catalogue",), [job])
    ...         return f"{len(first.submitted)} then {len(again.submitted)}"
    >>> with EmulatorServer(EmulatorConfig.for_tests()) as emulator:
    ...     asyncio.run(main(emulator.url, emulator.api_key))
    '1 then 0'
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence

from zimage_dagster.api import AsyncZImageClient, ZImageError
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerConflictError, LedgerEntry, TaskLedger
from zimage_dagster.engine.outcome import (
    BatchReport,
    Log,
    SubmittedTask,
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
) -> BatchReport:
    """Create a task for each job that needs one, record it in the ledger, and return.

    ``callback_url`` (default ``$ZIMAGE_CALLBACK_URL``) is sent with each task; it is never
    written to the ledger.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    parts = asset_parts(asset)
    out = logger or log
    callback = resolve_callback_url(callback_url)
    report = BatchReport()
    started = time.monotonic()
    limit = asyncio.Semaphore(concurrency)

    async def one(job: ImageJob) -> None:
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
        async with limit:
            request = job.request
            if callback is not None:
                request = request.model_copy(update={"callback_url": callback})
            try:
                task = await client.create_task(request)
            except ZImageError as exc:
                report.failures.append(failure_from_error(job, exc))
                return
            await asyncio.to_thread(
                ledger.record_submitted,
                parts,
                job.partition_key,
                task_id=task.id,
                request=job.request.to_wire(),
                fingerprint=job.fingerprint,
                run_id=run_id,
                extra={"deferred": True, "resubmits": 0},
            )
            report.submitted.append(SubmittedTask(job, task.id))

    await asyncio.gather(*(one(job) for job in jobs))
    report.elapsed_s = time.monotonic() - started
    out.info(f"deferred submit of {len(jobs)} partition(s): {report.summary()}")
    return report


def _adopt_open_task(
    ledger: TaskLedger, asset: tuple[str, ...], job: ImageJob
) -> LedgerEntry | None:
    """The partition's ledger entry for this identical request (``None`` for another request).

    An open entry of a blocking run is adopted (marked deferred) so that the sensor watches it.
    """
    entry = ledger.get(asset, job.partition_key)
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
