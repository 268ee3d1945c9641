"""The task watcher: the decisions of one task-status sensor tick in deferred mode.

After a deferred submit (:mod:`zimage_dagster.engine.submit`), each tick of the task-status sensor
(:mod:`zimage_dagster.sensors`) runs :meth:`TaskWatcher.tick`: it reads the asset's ledger in
bulk, polls the deferred tasks it does not know the end of (concurrently, within a time budget,
resuming from a cursor; a task a callback already settled is never polled), and decides:

- every partition with work for a run (a completed task to collect, a retryable failure to
  resubmit, an expired result to regenerate) goes into the tick's :class:`CollectBatch`: one
  per tick and asset, at most ``max_per_run`` partitions (those ready longest first; the rest
  wait for the next tick), so collect runs never outnumber the ticks that found work. The run
  (the asset's own job over the batch's partitions, tag ``zimage/collect=<batch ID>``) runs the normal blocking engine, which re-attaches to completed
  tasks and stores them, and creates the new tasks of resubmissions and regenerations: inside a
  run, so pools, retry policies and run attribution apply. The watcher never creates a task;
- a failure that resubmitting cannot fix (a fixable error, or the resubmission budget spent) is
  reported once (:class:`PermanentFailure`).

The batch ID is a digest of its task IDs (and of how many collect runs each has been through),
so a tick evaluated twice asks for the same run key, which Dagster launches once. A collect run
that ended (failed, canceled, or succeeded without storing a partition) leaves its partitions
uncollected: the next tick puts them into a new batch (a new run key), up to
``max_collect_runs`` times.

Nothing here imports Dagster: the watcher returns plain decisions (:class:`TickReport`) that
:mod:`zimage_dagster.sensors` turns into ``RunRequest`` and ``AssetObservation`` objects; the
state of earlier batches' runs comes from a ``batch_state`` function the sensor passes.

The workflow fields of deferred ledger entries (typed fields of
:class:`~zimage_dagster.engine.ledger.LedgerEntry`):

- ``deferred``: True (only such entries are watched: a blocking run's own tasks are its business).
- ``collect_batch``: the batch last asked to collect the entry; ``collect_requested_at``: when.
- ``collect_runs``: collect runs that ended without collecting the entry.
- ``resubmits``: tasks of the request before this one (the resubmission budget's count: failures
  and expiries go to a collect run only while :func:`~zimage_dagster.engine.decide.decide` says
  ``create``).
- ``regenerated``: the task replaces one whose result link expired.
- ``handled_at``: a failure was reported (reported once).
- ``completed_at`` / ``via``: when the task's end was first seen (a tick's poll, the callback);
  ``"callback"`` when the callback receiver recorded the result (:func:`record_end`, the one
  writer of a task's end). ``polls`` (kept in ``extra``): the status requests the sensor made of
  the task (none when a callback settled it).

Example:
    >>> import asyncio, tempfile
    >>> from zimage_dagster.api import AsyncZImageClient
    >>> from zimage_dagster.emulator import EmulatorConfig, EmulatorServer
    >>> from zimage_dagster.engine.ledger import TaskLedger
    >>> ledger = TaskLedger(tempfile.mkdtemp())
    >>> async def main(url: str, key: str) -> str:
    ...     async with AsyncZImageClient(api_key=key, base_url=url) as client:
    ...         return (await TaskWatcher(ledger, ("catalogue",)).tick(client)).summary()[:35]
    >>> with EmulatorServer(EmulatorConfig.for_tests()) as emulator:
    ...     asyncio.run(main(emulator.url, emulator.api_key))
    '0 deferred ledger entries, 0 awaiti'
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from zimage_dagster.api import (
    AsyncZImageClient,
    NotFoundError,
    RateLimitError,
    Task,
    ZImageError,
)
from zimage_dagster.engine.decide import Action, decide
from zimage_dagster.engine.ledger import LedgerConflictError, LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.engine.outcome import Log
from zimage_dagster.engine.provenance import ImageRecord
from zimage_dagster.engine.settings import GenerationPolicy, settings_of
from zimage_dagster.engine.store import AssetLike, asset_parts

__all__ = [
    "COLLECT_TAG",
    "DEFAULT_MAX_ACTIVE_RUNS",
    "DEFAULT_MAX_COLLECT_RUNS",
    "DEFAULT_MAX_PER_RUN",
    "DEFAULT_RESULT_TTL_S",
    "BatchState",
    "CollectBatch",
    "PermanentFailure",
    "TaskWatcher",
    "TickReport",
    "batch_partitions",
    "record_end",
]

log = logging.getLogger(__name__)

#: Tag of the collect runs launched by the task-status sensor (value: the batch ID).
COLLECT_TAG = "zimage/collect"
#: The provider keeps result links for 24 h.
DEFAULT_RESULT_TTL_S = 24 * 3600.0
#: Partitions per collect run.
DEFAULT_MAX_PER_RUN = 500
#: Collect runs a partition may go through without being collected before it is reported.
DEFAULT_MAX_COLLECT_RUNS = 3
#: Collect runs of one asset queued or running at once: while that many are, new work waits for
#: a later tick and goes into one bigger batch (fewer run starts).
DEFAULT_MAX_ACTIVE_RUNS = 2

#: The state of a batch's collect run: ``"active"`` (queued or running), ``"finished"``, or
#: ``None`` when no run with that batch's tag exists (yet).
BatchState = Callable[[str], Literal["active", "finished"] | None]


def _no_runs(batch_id: str) -> Literal["active", "finished"] | None:
    return None


@dataclass(frozen=True)
class CollectBatch:
    """Partitions for one collect run: completed tasks to store, failures to resubmit, expired
    results to regenerate. ``batch_id`` is a digest of the task IDs and collect-run counts."""

    batch_id: str
    partitions: tuple[str, ...]
    task_ids: tuple[str, ...]
    new_tasks: int = 0  # partitions whose run creates a task (resubmit or regenerate)

    @property
    def run_key(self) -> str:
        return f"collect:{self.batch_id}"


@dataclass(frozen=True)
class PermanentFailure:
    """A partition whose task failed for good (a fixable error, or the resubmit budget spent)."""

    partition_key: str
    task_id: str
    code: str
    message: str
    seed: int
    prompt: str
    attempts: int


@dataclass
class TickReport:
    """What one watcher tick decided and how far it got."""

    batches: list[CollectBatch] = field(default_factory=list)
    failures: list[PermanentFailure] = field(default_factory=list)
    scanned: int = 0  # deferred entries read from the ledger
    open_entries: int = 0  # of which still awaiting the provider (submitted)
    polled: int = 0
    poll_errors: int = 0
    waiting: int = 0  # entries whose collect run is queued or running
    active_runs: int = 0  # collect runs queued or running (or just asked for)
    held: int = 0  # entries ready, held for a later tick: max_active_runs reached
    cursor: str | None = None  # next tick polls the entries after this storage key
    complete: bool = True  # every submitted entry was polled this tick
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def to_collect(self) -> int:
        return sum(len(b.partitions) for b in self.batches)

    def summary(self) -> str:
        new = sum(b.new_tasks for b in self.batches)
        return (
            f"{self.scanned} deferred ledger entries, {self.open_entries} awaiting the provider; "
            f"polled {self.polled} ({self.poll_errors} errors); {self.to_collect} partition(s) "
            f"for {len(self.batches)} collect run(s) ({new} to resubmit or regenerate), "
            f"{self.waiting} in {self.active_runs} active collect run(s)"
            f"{f', {self.held} held for a later run' if self.held else ''}, "
            f"{len(self.failures)} failed for good; "
            f"{'all polled' if self.complete else f'resume after {self.cursor!r}'}; "
            f"{self.elapsed_s:.2f} s"
        )


@dataclass
class _Due:
    """An entry a collect run should take, and its collect-run count."""

    entry: LedgerEntry
    collect_runs: int
    new_task: bool


class TaskWatcher:
    """One asset's deferred tasks: the decisions of a task-status sensor tick.

    Args:
        ledger: the asset's ledger.
        asset: the asset key's parts.
        tick_budget_s: a tick stops launching polls when this is spent (minus a reserve for the
            ledger writes that follow), so it never overruns Dagster's sensor timeout (60 s
            unless ``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`` says otherwise).
        policy: the asset's :class:`~zimage_dagster.engine.settings.GenerationPolicy`: the one
            decision's options (:meth:`~zimage_dagster.engine.settings.GenerationPolicy.decision`),
            among them ``max_resubmits``, the resubmission budget of a request (after retryable
            failures and expiries; see :mod:`zimage_dagster.engine.decide`; the collect run
            creates them). Its ``concurrency`` (tasks in flight) is not the watcher's.
        concurrency: polls in flight at once.
        result_ttl_s: how long the provider keeps result links (24 h).
        expiry_margin_s: regenerate rather than collect when a link is this close to expiring.
        recollect_after_s: ask again (same run key) for a batch whose run does not exist this
            long after it was asked for (covers a tick whose run requests were lost).
        max_per_run: partitions per collect run (one run per tick; more wait for the next).
        max_collect_runs: collect runs a partition may go through uncollected before it is
            reported as failed for good.
        max_active_runs: collect runs queued or running at once; while that many are, ready
            partitions wait for a later tick (and a bigger batch).
        clock: unix seconds (tests pass a shifted clock to simulate a day passing).
        open_polls: status requests that found a task still open, by task ID; give the same
            mapping to every tick (the sensor keeps it) and the ledger records, when the task
            ends, how many polls it took (``extra["polls"]``): its image's ``polls`` metadata.
        max_resubmits: deprecated (a ``DeprecationWarning``): ``policy=GenerationPolicy(
            max_resubmits=...)``.
    """

    def __init__(
        self,
        ledger: TaskLedger,
        asset: AssetLike,
        policy: GenerationPolicy | None = None,
        *,
        tick_budget_s: float = 30.0,
        concurrency: int = 32,
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        expiry_margin_s: float = 3600.0,
        recollect_after_s: float = 600.0,
        max_per_run: int = DEFAULT_MAX_PER_RUN,
        max_collect_runs: int = DEFAULT_MAX_COLLECT_RUNS,
        max_active_runs: int = DEFAULT_MAX_ACTIVE_RUNS,
        clock: Callable[[], float] = time.time,
        logger: Log | None = None,
        open_polls: dict[str, int] | None = None,
        max_resubmits: int | None = None,
    ) -> None:
        loose = {} if max_resubmits is None else {"max_resubmits": max_resubmits}
        self.settings = settings_of(policy, None, loose, where="TaskWatcher")[0]
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if max_per_run < 1:
            raise ValueError("max_per_run must be >= 1")
        self.ledger = ledger
        self.asset = asset_parts(asset)
        self.tick_budget_s = tick_budget_s
        self.concurrency = concurrency
        self.policy = self.settings.decision()
        self.result_ttl_s = result_ttl_s
        self.expiry_margin_s = expiry_margin_s
        self.recollect_after_s = recollect_after_s
        self.max_per_run = max_per_run
        self.max_collect_runs = max_collect_runs
        self.max_active_runs = max_active_runs
        self.clock = clock
        self.log: Log = logger or log
        self.open_polls: dict[str, int] = {} if open_polls is None else open_polls
        self._asked: set[str] = set()  # batches asked for whose run does not exist yet

    async def tick(
        self,
        client: AsyncZImageClient,
        cursor: str | None = None,
        batch_state: BatchState = _no_runs,
    ) -> TickReport:
        """Read the ledger, poll what needs polling (from ``cursor`` on), decide; see the
        module doc. ``batch_state`` tells the state of an earlier batch's collect run."""
        started = time.monotonic()
        # No new polls after 80 % of the budget; calls in flight end by 90 %; the ledger writes
        # of the batches stop at 95 % (what is not written waits for the next tick).
        poll_deadline = started + self.tick_budget_s * 0.8
        call_deadline = started + self.tick_budget_s * 0.9
        write_deadline = started + self.tick_budget_s * 0.95
        report = TickReport()
        self._asked = set()
        states: dict[str, Literal["active", "finished"] | None] = {}

        def state_of(batch_id: str) -> Literal["active", "finished"] | None:
            if batch_id not in states:
                states[batch_id] = batch_state(batch_id)
            return states[batch_id]

        entries = await asyncio.to_thread(self._read)
        report.scanned = len(entries)
        due: list[_Due] = []
        awaiting: list[LedgerEntry] = []
        active: set[str] = set()
        for entry in entries:
            batch = entry.collect_batch
            if batch is not None and state_of(batch) == "active":
                report.waiting += 1  # its collect run is on it: no poll, no decision
                active.add(batch)
            elif entry.status == LedgerStatus.SUBMITTED:
                awaiting.append(entry)
            else:  # known (a callback, an earlier tick): no poll
                self._decide(entry, report, due, state_of)
        awaiting = _rotate(awaiting, cursor)
        report.open_entries = len(awaiting)
        queue = iter(awaiting)
        polled: list[LedgerEntry] = []
        stop = asyncio.Event()

        async def worker() -> None:
            for entry in queue:  # shared iterator: each worker takes the next entry
                if stop.is_set() or time.monotonic() >= poll_deadline:
                    stop.set()
                    return
                polled.append(entry)
                try:
                    known = await self._poll(client, entry, call_deadline, report, stop)
                    if known is not None:
                        self._decide(known, report, due, state_of)
                except Exception as exc:  # one bad entry never sinks the tick
                    report.errors.append(f"{entry.partition_key}: {type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(awaiting)))))
        report.complete = len(polled) >= len(awaiting)
        report.cursor = None if report.complete else polled[-1].partition_key if polled else cursor
        active.update(self._asked)
        report.active_runs = len(active)
        if len(active) >= self.max_active_runs:
            report.held, due = len(due), []  # next tick, in one bigger batch
        elif len(due) > self.max_per_run:  # one run per tick: those ready longest go first
            due = sorted(due, key=_ready_since)
            report.held, due = len(due) - self.max_per_run, due[: self.max_per_run]
        await asyncio.to_thread(self._write_batches, due, report, write_deadline)
        for failure in report.failures:
            await asyncio.to_thread(self._mark_handled, failure)
        report.elapsed_s = time.monotonic() - started
        return report

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> list[LedgerEntry]:
        watched = []
        for entry in self.ledger.iter_entries(self.asset):
            if not entry.deferred:
                continue
            if entry.status in _REPORTABLE and entry.handled_at is not None:
                continue
            if entry.status in _WATCHED:
                watched.append(entry)
        return watched

    # -- one entry -----------------------------------------------------------------------------

    async def _poll(
        self,
        client: AsyncZImageClient,
        entry: LedgerEntry,
        deadline: float,
        report: TickReport,
        stop: asyncio.Event,
    ) -> LedgerEntry | None:
        """Poll a submitted entry; the entry as written after it ended, else ``None``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            task = await asyncio.wait_for(client.get_task(entry.task_id), timeout=remaining)
        except NotFoundError:
            report.polled += 1
            self.open_polls.pop(entry.task_id, None)
            return await self._write(
                self.ledger.mark_failed,
                entry,
                "task_not_found",
                "the provider does not know this task",
            )
        except RateLimitError as exc:
            report.poll_errors += 1
            report.errors.append(f"{entry.task_id}: {exc}")
            stop.set()  # throttled: leave the rest to the next tick
            return None
        except (ZImageError, asyncio.TimeoutError) as exc:
            report.poll_errors += 1
            report.errors.append(f"{entry.task_id}: {type(exc).__name__}: {exc}")
            return None
        report.polled += 1
        if not task.is_terminal:
            self.open_polls[task.id] = self.open_polls.get(task.id, 0) + 1
            return None
        return await self._record_end(entry, task, polls=self.open_polls.pop(task.id, 0) + 1)

    async def _record_end(
        self, entry: LedgerEntry, task: Task, *, polls: int | None = None
    ) -> LedgerEntry | None:
        return await asyncio.to_thread(
            record_end,
            self.ledger,
            entry.asset,
            entry.partition_key,
            task,
            clock=self.clock,
            logger=self.log,
            polls=polls,
        )

    def _decide(
        self,
        entry: LedgerEntry,
        report: TickReport,
        due: list[_Due],
        state_of: Callable[[str], Literal["active", "finished"] | None],
    ) -> None:
        """A known entry (completed, failed, expired): into a batch, reported, or left."""
        runs = entry.collect_runs
        batch = entry.collect_batch
        if batch is not None:
            state = state_of(batch)
            if state == "finished":
                runs += 1  # its run ended and did not collect it
            else:
                asked = entry.collect_requested_at
                if asked is not None and self.clock() - asked < self.recollect_after_s:
                    report.waiting += 1  # asked for; the run is about to be created
                    self._asked.add(batch)
                    return
        if runs >= self.max_collect_runs:
            report.failures.append(
                self._failure(
                    entry,
                    "collect_failed",
                    f"{runs} collect run(s) ended without collecting it; see their logs",
                )
            )
            return
        if entry.status == LedgerStatus.COMPLETED and self._near_expiry(entry):
            entry = self.ledger.mark_expired(entry.asset, entry.partition_key, entry.task_id)
        if entry.status == LedgerStatus.COMPLETED:
            due.append(_Due(entry, runs, new_task=False))
            return
        # Failed or expired: the one decision, with the resubmission budget.
        decision = decide(entry, None, entry.fingerprint, self.policy, resubmitting=True)
        if decision.action == Action.CREATE:
            due.append(_Due(entry, runs, new_task=True))
        elif entry.status == LedgerStatus.EXPIRED:
            report.failures.append(
                self._failure(
                    entry,
                    "result_expired",
                    f"the result link expired before it was collected, {entry.resubmits + 1} "
                    "time(s); gave up (is the collect job running?)",
                )
            )
        elif decision.action == Action.REJECTED:
            code = decision.code or "unknown_error"
            report.failures.append(self._failure(entry, code, decision.failure_message))

    def _near_expiry(self, entry: LedgerEntry) -> bool:
        return self.clock() - _ready_at(entry) > self.result_ttl_s - self.expiry_margin_s

    def _failure(self, entry: LedgerEntry, code: str, message: str) -> PermanentFailure:
        return PermanentFailure(
            entry.partition_key,
            entry.task_id,
            code,
            message,
            entry.seed,
            str(entry.request.get("prompt", "")),
            entry.attempt,
        )

    # -- writing -------------------------------------------------------------------------------

    def _write_batches(self, due: Sequence[_Due], report: TickReport, deadline: float) -> None:
        """Record ``due`` (at most ``max_per_run`` entries) as one batch, until ``deadline``
        (monotonic): entries not written by then wait for the next tick."""
        batch_id = batch_digest((d.entry.task_id, d.collect_runs) for d in due)
        now = self.clock()
        written = [
            d
            for d in sorted(due, key=lambda d: d.entry.partition_key)
            if time.monotonic() < deadline
            and self._write_sync(
                self.ledger.update,
                d.entry,
                d.entry.status,
                error_code=d.entry.error_code,
                error_message=d.entry.error_message,
                collect_batch=batch_id,
                collect_requested_at=now,
                collect_runs=d.collect_runs,
            )
            is not None
        ]
        if written:
            report.batches.append(
                CollectBatch(
                    batch_id,
                    tuple(d.entry.partition_key for d in written),
                    tuple(d.entry.task_id for d in written),
                    sum(1 for d in written if d.new_task),
                )
            )

    def _mark_handled(self, failure: PermanentFailure) -> None:
        entry = self.ledger.get(self.asset, failure.partition_key)
        if entry is None or entry.task_id != failure.task_id:
            return
        status = entry.status if entry.status in _REPORTABLE else LedgerStatus.FAILED
        self._write_sync(
            self.ledger.update,
            entry,
            status,
            error_code=failure.code,
            error_message=failure.message,
            handled_at=self.clock(),
        )

    async def _write(self, method: Any, entry: LedgerEntry, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._write_sync, method, entry, *args, **kwargs)

    def _write_sync(self, method: Any, entry: LedgerEntry, *args: Any, **kwargs: Any) -> Any:
        """A ledger update of ``entry``'s current task; ``None`` if the entry has moved on."""
        return _write_entry(
            self.log, method, entry.asset, entry.partition_key, entry.task_id, *args, **kwargs
        )


def _write_entry(
    logger: Log, method: Any, asset: Any, partition_key: str, task_id: str, *args: Any, **kw: Any
) -> Any:
    """``method(asset, partition_key, task_id, ...)`` (a ledger update of that task's entry,
    itself a compare-and-set that never moves a status back); ``None`` if the entry has moved
    on to another task or is gone."""
    try:
        return method(asset, partition_key, task_id, *args, **kw)
    except (LedgerConflictError, KeyError) as exc:
        logger.info(f"partition {partition_key}: {exc}; leaving it")
        return None


def record_end(
    ledger: TaskLedger,
    asset: AssetLike,
    partition_key: str,
    task: Task,
    *,
    clock: Callable[[], float] = time.time,
    logger: Log = log,
    polls: int | None = None,
    via: str | None = None,
) -> LedgerEntry | None:
    """Write what a status answer showed of ``task``'s end to its ledger entry: ``completed``
    (with ``completed_at``, and ``extra["polls"]``, the status requests the task took, when the
    caller counted them) or ``failed`` (the task's error code and message); ``via`` says who saw
    it (``"callback"``). Returns the entry as written; ``None`` when the task has not ended, or
    the entry has moved on to another task. Safe against a concurrent writer (a sensor tick, the
    callback receiver): a compare-and-set that never moves a status back. The one writer of a
    task's end: the task watcher, the deferred submit's capacity follower
    (:mod:`zimage_dagster.engine.capacity`) and the callback receiver
    (:mod:`zimage_dagster.receiver`) all record what they saw here.

    >>> import tempfile
    >>> from zimage_dagster.engine.store import ImageStore
    >>> ledger = TaskLedger(ImageStore(tempfile.mkdtemp()))
    >>> _ = ledger.record_submitted("hero", "fox", task_id="task-1", request={"prompt": "a red fox", "seed": 7})
    >>> done = Task.model_validate({"id": "task-1", "status": "completed", "created": 1})
    >>> record_end(ledger, "hero", "fox", done).status.value
    'completed'
    """
    changes: dict[str, Any]
    if task.is_completed:
        status = LedgerStatus.COMPLETED
        changes = {"completed_at": clock(), "extra": None if polls is None else {"polls": polls}}
    elif task.is_failed:
        error = task.error
        status = LedgerStatus.FAILED
        changes = {
            "error_code": str(error.code) if error and error.code else "unknown_error",
            "error_message": (error.message if error else None) or "failed",
        }
    else:
        return None
    return _write_entry(
        logger, ledger.update, asset, partition_key, task.id, status, via=via, **changes
    )


def collected_record(
    record: ImageRecord, entry: LedgerEntry | None, created: int | None
) -> ImageRecord:
    """The record of an image a collect run stored for a deferred task, told as it happened.

    The collect run found the task already finished (it re-attached to it), so what its own
    wait saw (``reused``, no poll, a few milliseconds) is not the image's story: the task was
    made for this partition (``reused: false``), polled by the sensor (``entry.extra["polls"]``,
    plus any request of the run), and took from its creation (``created``, unix s) to its end as
    first seen (``completed_at``): ``generating_s``, queue included (``queued_s`` is unknown: no
    one saw it start). Any other record (a blocking run's, a reused image's) is returned as is.

    >>> entry = LedgerEntry(("a",), "fox", "t", 1, "f", {}, LedgerStatus.COLLECTED, 1000, 1010,
    ...                     extra={"polls": 2}, deferred=True, completed_at=1009.5)
    >>> r = collected_record(ImageRecord(seed=1, task_id="t", prompt="p", reused=True), entry, 1000)
    >>> r.reused, r.polls, r.queued_s, r.generating_s
    (False, 2, None, 9.5)
    """
    if entry is None or entry.task_id != record.task_id or not entry.deferred:
        return record
    if not record.reused:
        return record
    polls = entry.extra.get("polls")
    span = None
    if entry.completed_at is not None and created:
        span = round(max(entry.completed_at - created, 0.0), 3)
    return replace(
        record,
        reused=False,
        polls=record.polls + (polls if isinstance(polls, int) else 0),
        queued_s=None,
        generating_s=span,
    )


def batch_digest(items: Iterable[tuple[str, int]]) -> str:
    """The batch ID of ``(task ID, collect runs)`` pairs: the same set, the same ID.

    >>> batch_digest([("task-a", 0), ("task-b", 0)]) == batch_digest([("task-b", 0), ("task-a", 0)])
    True
    >>> batch_digest([("task-a", 0)]) == batch_digest([("task-a", 1)])
    False
    """
    text = "\n".join(sorted(f"{task_id}#{runs}" for task_id, runs in items))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def batch_partitions(ledger: TaskLedger, asset: AssetLike, batch_id: str) -> dict[str, str]:
    """``partition key -> task ID`` of the ledger entries a collect batch is asked to collect."""
    return {
        e.partition_key: e.task_id
        for e in ledger.iter_entries(asset)
        if e.collect_batch == batch_id
    }


_WATCHED = frozenset(
    {LedgerStatus.SUBMITTED, LedgerStatus.COMPLETED, LedgerStatus.FAILED, LedgerStatus.EXPIRED}
)
_REPORTABLE = frozenset({LedgerStatus.FAILED, LedgerStatus.EXPIRED})


def _ready_at(entry: LedgerEntry) -> float:
    """When an entry became ready: its task's completion as first seen, else its last write."""
    return entry.completed_at if entry.completed_at is not None else entry.updated_at


def _ready_since(due: _Due) -> tuple[float, str]:
    return _ready_at(due.entry), due.entry.partition_key


def _rotate(entries: Iterable[LedgerEntry], cursor: str | None) -> list[LedgerEntry]:
    """Entries sorted by key, starting after ``cursor`` and wrapping around."""
    ordered = sorted(entries, key=lambda e: e.partition_key)
    if not cursor:
        return ordered
    after = [e for e in ordered if e.partition_key > cursor]
    before = [e for e in ordered if e.partition_key <= cursor]
    return after + before
