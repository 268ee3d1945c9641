"""Deferred submit: create the tasks, write them to the ledger, and return without waiting.

Waiting for the provider inside a running step holds a worker for the whole generation. In
deferred mode a step only submits (:func:`submit_jobs`): one task per partition (bounded
concurrency, async client), each task ID written to the ledger (``deferred``: watched by the
sensor) before anything else. The task watcher (:mod:`zimage_dagster.engine.collect`, driven by the
task-status sensor) collects the images later.

Per partition, the one decision of blocking mode (:func:`~zimage_dagster.engine.decide.decide`,
through :func:`~zimage_dagster.engine.outcome.look_up`), under the partition's claim (:mod:`zimage_dagster.engine.claims`): a partition another
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
from typing import Any

from zimage_dagster.api import AsyncZImageClient, ZImageError
from zimage_dagster.engine.capacity import OwnSlots
from zimage_dagster.engine.claims import Owner, PartitionGate
from zimage_dagster.engine.create import CreateGate
from zimage_dagster.engine.decide import Action
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerConflictError, LedgerEntry, TaskLedger
from zimage_dagster.engine.outcome import (
    BatchReport,
    ImageFailure,
    Log,
    SubmittedTask,
    failure_from_claim_error,
    failure_from_error,
    look_up,
    rejected_failure,
)
from zimage_dagster.engine.settings import GenerationPolicy, RunIdentity, settings_of
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
    policy: GenerationPolicy | None = None,
    identity: RunIdentity | None = None,
    *,
    callback_url: str | None = None,
    logger: Log | None = None,
    **loose: Any,
) -> BatchReport:
    """Create a task for each job that needs one, record it in the ledger, and return.

    ``policy`` and ``identity`` mean what they mean for
    :class:`~zimage_dagster.engine.batch.BatchGenerator` (the loose keyword arguments of
    earlier versions are still taken, with a ``DeprecationWarning``). ``callback_url``
    (default ``$ZIMAGE_CALLBACK_URL``) is sent with each task; it is never written to the
    ledger.
    """
    settings, who = settings_of(policy, identity, loose, where="submit_jobs")
    parts = asset_parts(asset)
    out = logger or log
    callback = resolve_callback_url(callback_url)
    decisions = settings.decision(deferred=True)
    started = time.monotonic()
    limit = asyncio.Semaphore(settings.concurrency)
    creator = CreateGate(client, ledger, parts, settings, who, logger=out)
    slots = OwnSlots(client, ledger, parts, logger=out)
    refused = await creator.refused(jobs, decisions)
    if refused is not None:
        return refused
    report = BatchReport(usage=creator.usage)

    gate = PartitionGate(
        ledger.claim_book(is_run_alive=who.is_run_alive),
        lambda key: ledger.claim_path(parts, key),
        Owner.here(run_id=who.run_id, step=who.step),
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
        for _ in range(2):  # again once if the open task moved on while we adopted it
            decision, reused = await asyncio.to_thread(
                look_up, ledger.store, ledger, parts, job, decisions, out
            )
            if reused is not None:
                report.successes.append(reused)
                return
            if decision.action != Action.REATTACH or decision.entry is None:
                break
            kept = await asyncio.to_thread(_adopt, ledger, decision.entry)
            if kept is not None:
                report.open_task.append(SubmittedTask(job, kept.task_id))
                return
        if decision.action == Action.REJECTED:
            report.failures.append(rejected_failure(job, decision))
            return
        if decision.action != Action.CREATE:  # moved on twice under our claim: the next run's
            report.failures.append(
                ImageFailure(job, "internal_error", "its ledger entry kept changing", True)
            )
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
                    extra=job.ledger_extra or None,
                    wait_for_capacity=wait_for_capacity,
                    resubmits=decision.resubmits,
                    regenerated=decision.regenerated,
                    deferred=True,
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


def _adopt(ledger: TaskLedger, entry: LedgerEntry) -> LedgerEntry | None:
    """Keep the open task of the identical request: an open entry of a blocking run is adopted
    (marked ``deferred``) so that the sensor watches it. ``None`` when the entry has moved on
    (or is no longer open)."""
    if not entry.is_open:
        return None
    if entry.deferred:
        return entry
    try:
        kept = ledger.update(
            entry.asset, entry.partition_key, entry.task_id, entry.status, deferred=True
        )
    except (LedgerConflictError, KeyError):
        return None
    return kept if kept.is_open else None
