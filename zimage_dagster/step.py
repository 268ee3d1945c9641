"""Running the engine inside a Dagster step (an asset or an op): one way, used by both.

:func:`run_in_step` is the one step: in blocking mode it builds the
:class:`~zimage_dagster.engine.batch.BatchGenerator` from the resource's settings, runs it on a
fresh event loop, and records an ``AssetMaterialization`` (with the image's metadata and
thumbnail) the moment each image is stored; in deferred mode (``StepOptions.deferred``) it runs a
deferred submit (:func:`submit_deferred`: :func:`~zimage_dagster.engine.submit.submit_jobs` from
synchronous code) and materializes the partitions whose identical image was already stored.
Either way the engine logs the credits the step spent (tasks created, credits reserved,
credits of failed tasks) once, and the step records them on a run-level ``AssetObservation`` of
the asset (:func:`~zimage_dagster.metadata.usage_metadata`); a blocking step also logs how many
images it generated, reused and failed to make (:func:`made_and_reused`).

Example::

    @dg.op(required_resource_keys={"zimage"})
    def make(context: dg.OpExecutionContext) -> None:
        report = run_in_step(
            context, context.resources.zimage, TaskLedger(store), dg.AssetKey("images"), jobs,
            StepOptions(GenerationPolicy.of(options, context.resources.zimage)),
        )
        context.log.info(report.summary())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.data_version import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)

from zimage_dagster.engine.batch import BatchGenerator
from zimage_dagster.engine.claims import RunAliveFn
from zimage_dagster.engine.create import CreateGate
from zimage_dagster.engine.credits import CreditBudget
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.outcome import BatchReport, ImageFailure, ImageSuccess, Log
from zimage_dagster.engine.reviews import current_verdicts
from zimage_dagster.engine.settings import GenerationPolicy, RunIdentity, settings_of
from zimage_dagster.engine.store import AssetLike, ImageStore
from zimage_dagster.engine.submit import submit_jobs
from zimage_dagster.gallery.links import materialization_url
from zimage_dagster.metadata import (
    candidates_metadata,
    candidates_version,
    image_metadata,
    usage_metadata,
)
from zimage_dagster.resource import ZImageResource

__all__ = [
    "Candidates",
    "StepOptions",
    "made_and_reused",
    "materialized_successes",
    "picks_of",
    "refused_in_step",
    "run_identity",
    "run_in_step",
    "submit_deferred",
]

StepContext = dg.AssetExecutionContext | dg.OpExecutionContext


def _record(
    context: StepContext, asset_key: dg.AssetKey, success: ImageSuccess, gallery: str | None
) -> None:
    """Materialize the partition, with its data version: the request's fingerprint, so a
    partition whose prompt, size or seed changed shows as changed; with a ``gallery`` base URL,
    its metadata links to the image's page there."""
    link = None
    if gallery is not None:
        link = materialization_url(
            gallery, asset_key.path, success.job.partition_key, success.record.task_id
        )
    context.log_event(
        dg.AssetMaterialization(
            asset_key=asset_key,
            partition=success.job.partition_key,
            metadata=image_metadata(success.record, success.thumbnail, gallery_url=link),
            tags={
                DATA_VERSION_TAG: success.job.fingerprint,
                DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
            },
        )
    )


def _record_candidates(
    context: StepContext,
    asset_key: dg.AssetKey,
    group: Sequence[ImageSuccess],
    current: int,
    gallery: str | None,
    replaced: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Materialize a partition of N candidates once: the preview strip first, then the current
    candidate's facts (its seed, task ID...: the same keys as a partition of one image) and
    every candidate (:func:`~zimage_dagster.metadata.candidates_metadata`). Its data version is
    the fingerprints of all of them."""
    chosen = next((s for s in group if s.job.candidate == current), group[0])
    partition = chosen.job.partition
    link = None
    if gallery is not None:
        link = materialization_url(gallery, asset_key.path, partition, chosen.record.task_id)
    metadata = candidates_metadata(group, chosen, gallery_url=link)
    if chosen.job.regeneration is not None:
        metadata["regenerated_for"] = dg.MetadataValue.text(chosen.job.regeneration)
    if replaced:
        metadata["replaced"] = dg.MetadataValue.json([dict(r) for r in replaced])
    context.log_event(
        dg.AssetMaterialization(
            asset_key=asset_key,
            partition=partition,
            metadata=metadata,
            tags={
                DATA_VERSION_TAG: candidates_version(group),
                DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
            },
        )
    )


class Candidates:
    """Groups the units of work of a step by partition: a partition of N candidates
    (``variants=N``) is materialized once, when the last of its N images is stored, with the
    current one (the reviewer's pick, else candidate 0) first. A partition of one image is
    passed on at once, as before.

    >>> from zimage_dagster.engine.jobs import ImageJob
    >>> from zimage_dagster.prompts import PromptRow
    >>> row = PromptRow("fox", "a fox", None, 7, None)
    >>> jobs = [ImageJob("fox", row, 7), ImageJob("fox...1", row, 8), ImageJob("owl", row, 9)]
    >>> units = Candidates(jobs)
    >>> units.grouped, units.expected("fox"), units.expected("owl")
    (True, 2, 1)
    """

    def __init__(self, jobs: Sequence[ImageJob], picks: Mapping[str, int] | None = None) -> None:
        self._expected = Counter(job.partition for job in jobs)
        self._done: dict[str, dict[int, ImageSuccess]] = {}
        self.picks = dict(picks or {})

    @property
    def grouped(self) -> bool:
        """True when some partition has more than one candidate."""
        return any(n > 1 for n in self._expected.values())

    def expected(self, partition: str) -> int:
        """How many units of ``partition`` the step works on."""
        return self._expected[partition]

    def add(self, success: ImageSuccess) -> list[ImageSuccess] | None:
        """The partition's candidates (by index) when ``success`` completes it, else ``None``."""
        partition = success.job.partition
        done = self._done.setdefault(partition, {})
        done[success.job.candidate] = success
        if len(done) < self._expected[partition]:
            return None
        return [done[i] for i in sorted(done)]

    def current(self, group: Sequence[ImageSuccess]) -> int:
        """The index of the group's current candidate: the pick, if stored, else the first."""
        picked = self.picks.get(group[0].job.partition)
        indexes = [s.job.candidate for s in group]
        return picked if picked in indexes else indexes[0]

    def materialized(self, report: BatchReport) -> list[ImageSuccess]:
        """The successes of the partitions whose every unit was stored (what the checks judge)."""
        failed = {f.job.partition for f in report.failures}
        counts = Counter(s.job.partition for s in report.successes)
        return [
            s
            for s in report.successes
            if s.job.partition not in failed
            and counts[s.job.partition] == self.expected(s.job.partition)
        ]


class _EventWriter:
    """Records the step's materializations in order on a thread of its own: the event log's
    write (with the default sqlite storage, a few commits and fsyncs per event) must not stall
    the engine's event loop, which meanwhile polls, downloads and frees slots for new tasks.
    :meth:`drain` waits for every write, then :meth:`check` raises the first error."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zimage-events")
        self._pending: list[Future[None]] = []

    def submit(self, write: Callable[[], None]) -> None:
        self._pending.append(self._pool.submit(write))

    def drain(self) -> None:
        self._pool.shutdown(wait=True)

    def check(self) -> None:
        for done in self._pending:
            done.result()


class _ToRunLog(logging.Handler):
    """Forwards the engine's own warnings (a damaged file moved aside, a claim taken over) to
    the run's log, where the user looks."""

    def __init__(self, context: StepContext) -> None:
        super().__init__(logging.WARNING)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        self.context.log.warning(record.getMessage())


@contextlib.contextmanager
def engine_warnings_in_run_log(context: StepContext) -> Iterator[None]:
    """While the step runs, warnings of ``zimage_dagster.engine`` also go to its run log."""
    engine_log = logging.getLogger("zimage_dagster.engine")
    handler = _ToRunLog(context)
    engine_log.addHandler(handler)
    try:
        yield
    finally:
        engine_log.removeHandler(handler)


def run_alive_fn(instance: dg.DagsterInstance) -> RunAliveFn:
    """``run_id -> alive?`` from the instance's run storage, for the partition claims: a claim
    of a finished run (failed, canceled, or marked failed by run monitoring after a kill) is
    taken over at once; a run this instance does not know is left to the claim's lease."""

    def is_run_alive(run_id: str) -> bool | None:
        run = instance.get_run_by_id(run_id)
        return None if run is None else not run.is_finished

    return is_run_alive


@dataclass(frozen=True)
class StepOptions:
    """What a step asks of the engine, the same for the factory, the component and the ops.

    ``policy``: how to generate (:class:`~zimage_dagster.engine.settings.GenerationPolicy`,
    usually ``GenerationPolicy.of(spec, resource)``; ``None``: the resource's settings and the
    defaults); ``gallery_url``: base URL of the gallery the materializations link to;
    ``deferred``: submit the tasks and end (deferred mode) instead of waiting for the images;
    ``ledger_extra``: written into the ledger entry of each task created (a collect run marks
    its resubmissions so that the task-status sensor keeps watching them); ``replaced``: per
    partition regenerated after a reject, the candidates it replaces (their seeds and task IDs,
    recorded in its materialization's ``replaced`` metadata).

    ``reuse_stored``, ``retry_rejected`` and ``budget`` are the loose fields of earlier versions:
    given, they go into the policy, with a ``DeprecationWarning``.

    >>> from zimage_dagster.engine.credits import CreditBudget
    >>> StepOptions(GenerationPolicy(budget=CreditBudget(max_credits_per_run=1.0))).policy.budget.limited
    True
    """

    policy: GenerationPolicy | None = None
    gallery_url: str | None = None
    deferred: bool = False
    ledger_extra: Mapping[str, Any] | None = None
    reuse_stored: bool | None = None
    retry_rejected: bool | None = None
    budget: CreditBudget | None = None
    replaced: Mapping[str, Sequence[Mapping[str, Any]]] | None = None

    def policy_for(self, resource: ZImageResource) -> GenerationPolicy:
        """The step's policy: ``policy``, else the resource's settings (tasks in flight,
        resubmissions, wait deadline) with the defaults; the loose fields go on top."""
        base = self.policy or GenerationPolicy(
            max_resubmits=resource.max_resubmits,
            concurrency=resource.concurrency,
            wait_deadline=resource.wait_deadline,
        )
        loose = {
            name: value
            for name in ("reuse_stored", "retry_rejected", "budget")
            if (value := getattr(self, name)) is not None
        }
        return settings_of(base, None, loose, where="StepOptions")[0]


def _record_usage(context: StepContext, asset_key: dg.AssetKey, report: BatchReport) -> None:
    """The step's spend as a run-level observation of the asset (the engine logs its line)."""
    usage = report.usage
    context.log_event(
        dg.AssetObservation(
            asset_key=asset_key,
            description="Credits spent by this step of the run",
            metadata=usage_metadata(usage),
        )
    )


def made_and_reused(report: BatchReport) -> str:
    """How many images a blocking step generated, reused and failed to make.

    >>> made_and_reused(BatchReport())
    '0 image(s) generated, 0 reused, 0 failed'
    """
    reused = sum(1 for s in report.successes if s.record.reused)
    made = len(report.successes) - reused
    return f"{made} image(s) generated, {reused} reused, {len(report.failures)} failed"


def run_identity(context: StepContext, asset_key: dg.AssetKey) -> RunIdentity:
    """Who the step's engine works for: the run, the asset, the run storage's liveness."""
    return RunIdentity(
        run_id=context.run.run_id,
        step=asset_key.to_user_string(),
        is_run_alive=run_alive_fn(context.instance),
    )


def refused_in_step(
    context: StepContext,
    resource: ZImageResource,
    ledger: TaskLedger,
    asset_key: dg.AssetKey,
    jobs: Sequence[ImageJob],
    options: StepOptions = StepOptions(),
) -> BatchReport | None:
    """The engine's budget check (:meth:`~zimage_dagster.engine.create.CreateGate.refused`)
    of ``jobs`` as one batch, before any of them runs: ``None`` when they may start, else the
    report failing every job with ``budget_refused``. A step that runs its jobs in windows
    (sharded mode) calls it first, so that ``over_budget="refuse"`` judges the whole run, not
    one window (the run's spend counter is already shared by its windows: it is the run's)."""
    policy = options.policy_for(resource)

    async def check() -> BatchReport | None:
        async with resource.async_client() as client:
            gate = CreateGate(
                client,
                ledger,
                asset_key.path,
                policy,
                run_identity(context, asset_key),
                logger=context.log,
            )
            return await gate.refused(jobs, policy.decision())

    return asyncio.run(check())


def run_in_step(
    context: StepContext,
    resource: ZImageResource,
    ledger: TaskLedger,
    asset_key: dg.AssetKey,
    jobs: Sequence[ImageJob],
    options: StepOptions = StepOptions(),
    *,
    on_outcome: Callable[[ImageSuccess | ImageFailure], None] | None = None,
) -> BatchReport:
    """Run ``jobs`` of ``asset_key`` (partition = the job's partition key) with the resource's
    client and settings, and record the step's spend.

    Blocking (default): generate them, materializing each image as it is stored (linking to its
    page in the gallery at ``options.gallery_url``, when given). Deferred
    (``options.deferred``): :func:`submit_deferred`, then materialize at once the partitions
    whose identical image was already stored.

    With ``on_outcome`` (blocking only; sharded mode), no image is materialized: each success
    and failure goes to ``on_outcome`` instead, in order, on the step's event thread (the
    caller materializes what the jobs make up, e.g. a shard).
    """
    events = _EventWriter()
    units = Candidates(jobs, picks_of(ledger.store, asset_key.path) if _grouped(jobs) else None)

    replaced = options.replaced or {}

    def record(success: ImageSuccess) -> Callable[[], None] | None:
        partition = success.job.partition
        if units.expected(partition) == 1 and success.job.regeneration is None:
            return lambda: _record(context, asset_key, success, options.gallery_url)
        group = units.add(success)
        if group is None:
            return None
        current = units.current(group)
        history = replaced.get(partition, ())
        return lambda: _record_candidates(
            context, asset_key, group, current, options.gallery_url, history
        )

    if on_outcome is not None and options.deferred:
        raise ValueError("on_outcome is for blocking mode")

    def on_success(success: ImageSuccess) -> None:
        if on_outcome is not None:
            events.submit(lambda: on_outcome(success))
            return
        write = record(success)
        if write is not None:
            events.submit(write)

    def on_failure(failure: ImageFailure) -> None:
        if on_outcome is not None:
            events.submit(lambda: on_outcome(failure))

    policy = options.policy_for(resource)
    identity = run_identity(context, asset_key)

    async def generate() -> BatchReport:
        async with resource.async_client() as client:
            engine = BatchGenerator(
                client,
                ledger.store,
                ledger,
                asset_key.path,
                policy,
                identity,
                on_success=on_success,
                on_failure=on_failure,
                logger=context.log,
                ledger_extra=options.ledger_extra,
            )
            return await engine.run(jobs)

    with engine_warnings_in_run_log(context):
        if options.deferred:
            report = submit_deferred(
                resource, ledger, asset_key.path, jobs, policy, identity, logger=context.log
            )
            for success in report.successes:
                write = record(success)
                if write is not None:
                    write()
        else:
            context.log.info(
                f"materializing {len(jobs)} partition(s) of {asset_key.to_user_string()}: "
                "images stored for the identical request are reused, the others generated with "
                f"up to {policy.concurrency} task(s) in flight"
            )
            try:
                report = asyncio.run(generate())
            finally:
                events.drain()
            events.check()
            context.log.info(f"{asset_key.to_user_string()}: {made_and_reused(report)}")
    _record_usage(context, asset_key, report)
    return report


def _grouped(jobs: Sequence[ImageJob]) -> bool:
    return any(job.candidate for job in jobs)


def picks_of(store: ImageStore, asset: AssetLike) -> dict[str, int]:
    """``{partition key: picked candidate}`` from the review records (the winning verdicts)."""
    return {
        key: verdict.candidate or 0
        for key, verdict in current_verdicts(store, asset).items()
        if verdict.verdict == "pick"
    }


def materialized_successes(jobs: Sequence[ImageJob], report: BatchReport) -> list[ImageSuccess]:
    """The stored units of the partitions the step materialized: a partition of N candidates
    only when all N are stored (see :class:`Candidates`)."""
    return Candidates(jobs).materialized(report)


def submit_deferred(
    resource: ZImageResource,
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
    """:func:`~zimage_dagster.engine.submit.submit_jobs` from synchronous code, with the
    resource's async client (``policy`` defaults to the resource's settings; the loose keyword
    arguments of earlier versions are still taken, with a ``DeprecationWarning``)."""
    settings, who = settings_of(
        policy or StepOptions().policy_for(resource), identity, loose, where="submit_deferred"
    )

    async def run() -> BatchReport:
        async with resource.async_client() as client:
            return await submit_jobs(
                client,
                ledger,
                asset,
                jobs,
                settings,
                who,
                callback_url=callback_url,
                logger=logger,
            )

    return asyncio.run(run())
