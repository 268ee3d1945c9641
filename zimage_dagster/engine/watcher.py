"""The task watcher: the decisions of one task-status sensor tick in deferred mode.

After a deferred submit (:mod:`zimage_dagster.engine.submit`), each tick of the task-status sensor
(:mod:`zimage_dagster.sensors`) runs :meth:`TaskWatcher.tick`: it reads the asset's ledger in
bulk, polls the deferred tasks it does not know the end of (concurrently, within a time budget,
resuming from a cursor), and decides: a completed task gets a short *collect run* (run key = task
ID, tag ``zimage/collect``) that runs the normal blocking engine, which re-attaches to the
completed task and stores it; a retryable failure is resubmitted with the same seed (bounded); a
permanent one is reported once; a completed task whose link has expired (24 h) is regenerated
with the same seed and flagged.

Nothing here imports Dagster: the watcher returns plain decisions (:class:`TickReport`) that
:mod:`zimage_dagster.sensors` turns into ``RunRequest`` and ``AssetObservation`` objects.

Ledger conventions (``LedgerEntry.extra``) of deferred entries:

- ``deferred``: True (only such entries are watched: a blocking run's own tasks are its business).
- ``resubmits``: tasks created by the watcher after retryable failures or expiry.
- ``regenerated``: the task replaces one whose result link expired.
- ``collect_requested_at``: when a collect run was requested (it is asked for once; again only
  after ``recollect_after_s``, with the same run key, which Dagster deduplicates).
- ``handled_at``: a failure was resubmitted or reported (reported once).
- ``via``: ``"callback"`` when the callback receiver recorded the result.

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
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from zimage_dagster.api import (
    AsyncZImageClient,
    GenerationRequest,
    NotFoundError,
    RateLimitError,
    Task,
    ZImageError,
    is_retryable_task_error_code,
)
from zimage_dagster.engine.claims import Owner, PartitionGate
from zimage_dagster.engine.create import CreateGate
from zimage_dagster.engine.ledger import LedgerConflictError, LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.engine.outcome import Log, error_code, is_transient
from zimage_dagster.engine.store import AssetLike, asset_parts
from zimage_dagster.engine.submit import resolve_callback_url

__all__ = [
    "COLLECT_TAG",
    "DEFAULT_RESULT_TTL_S",
    "CollectRequest",
    "PermanentFailure",
    "TaskWatcher",
    "TickReport",
]

log = logging.getLogger(__name__)

#: Tag of the collect runs launched by the task-status sensor (value: the task ID).
COLLECT_TAG = "zimage/collect"
#: The provider keeps result links for 24 h.
DEFAULT_RESULT_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class CollectRequest:
    """Launch a collect run for this partition's completed task (run key = ``task_id``)."""

    partition_key: str
    task_id: str


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

    collect: list[CollectRequest] = field(default_factory=list)
    failures: list[PermanentFailure] = field(default_factory=list)
    resubmitted: list[tuple[str, str, str]] = field(default_factory=list)  # key, old, new
    regenerated: list[tuple[str, str, str]] = field(default_factory=list)  # key, old, new
    scanned: int = 0  # deferred entries read from the ledger
    open_entries: int = 0  # of which still awaiting the provider (submitted)
    polled: int = 0
    poll_errors: int = 0
    cursor: str | None = None  # next tick polls the entries after this storage key
    complete: bool = True  # every submitted entry was polled this tick
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.scanned} deferred ledger entries, {self.open_entries} awaiting the provider; "
            f"polled {self.polled} ({self.poll_errors} errors); {len(self.collect)} to collect, "
            f"{len(self.resubmitted)} resubmitted, {len(self.regenerated)} regenerated, "
            f"{len(self.failures)} failed for good; "
            f"{'all polled' if self.complete else f'resume after {self.cursor!r}'}; "
            f"{self.elapsed_s:.2f} s"
        )


class TaskWatcher:
    """One asset's deferred tasks: the decisions of a task-status sensor tick.

    Args:
        ledger: the asset's ledger.
        asset: the asset key's parts.
        tick_budget_s: a tick stops launching polls when this is spent (minus a reserve for the
            ledger writes that follow), so it never overruns Dagster's sensor timeout (60 s
            unless ``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`` says otherwise).
        concurrency: polls in flight at once.
        max_resubmits: new tasks per partition after retryable failures (and expiries).
        result_ttl_s: how long the provider keeps result links (24 h).
        expiry_margin_s: regenerate rather than collect when a link is this close to expiring.
        recollect_after_s: ask again for a collect run (same run key) after this long without
            the entry being collected (covers a tick whose run requests were lost).
        callback_url: sent with resubmitted tasks (default ``$ZIMAGE_CALLBACK_URL``).
        clock: unix seconds (tests pass a shifted clock to simulate a day passing).
    """

    def __init__(
        self,
        ledger: TaskLedger,
        asset: AssetLike,
        *,
        tick_budget_s: float = 30.0,
        concurrency: int = 32,
        max_resubmits: int = 2,
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        expiry_margin_s: float = 3600.0,
        recollect_after_s: float = 600.0,
        callback_url: str | None = None,
        clock: Callable[[], float] = time.time,
        logger: Log | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.ledger = ledger
        self.asset = asset_parts(asset)
        self.tick_budget_s = tick_budget_s
        self.concurrency = concurrency
        self.max_resubmits = max_resubmits
        self.result_ttl_s = result_ttl_s
        self.expiry_margin_s = expiry_margin_s
        self.recollect_after_s = recollect_after_s
        self.callback_url = resolve_callback_url(callback_url)
        self.clock = clock
        self.log: Log = logger or log
        # Resubmissions take the partition's claim like any run (held for the create only).
        self._gate = PartitionGate(
            ledger.claim_book(),
            lambda key: ledger.claim_path(self.asset, key),
            Owner.here(step="task-status sensor"),
            logger=self.log,
        )

    async def tick(self, client: AsyncZImageClient, cursor: str | None = None) -> TickReport:
        """Read the ledger, poll what needs polling (from ``cursor`` on), act; see the module doc."""
        started = time.monotonic()
        # No new work after 80 % of the budget; calls in flight end by 90 %; the rest is left
        # for the ledger writes that follow them.
        poll_deadline = started + self.tick_budget_s * 0.8
        call_deadline = started + self.tick_budget_s * 0.9
        report = TickReport()
        # The one create path (402 stops the tick's creates; credits go to the ledger).
        self._creator = CreateGate(client, self.ledger, self.asset, logger=self.log)
        entries = await asyncio.to_thread(self._read)
        report.scanned = len(entries)
        # Entries whose state is known (completed, failed, expired) need no poll: act on them
        # first; then poll the submitted ones, from the cursor on.
        known = [e for e in entries if e.status != LedgerStatus.SUBMITTED]
        awaiting = _rotate((e for e in entries if e.status == LedgerStatus.SUBMITTED), cursor)
        report.open_entries = len(awaiting)
        queue = iter([*known, *awaiting])
        taken: list[LedgerEntry] = []
        stop = asyncio.Event()

        async def worker() -> None:
            for entry in queue:  # shared iterator: each worker takes the next entry
                if stop.is_set() or time.monotonic() >= poll_deadline:
                    stop.set()
                    return
                taken.append(entry)
                try:
                    if entry.status == LedgerStatus.SUBMITTED:
                        await self._poll(client, entry, call_deadline, report, stop)
                    else:
                        await self._act_on_known(client, entry, report)
                except Exception as exc:  # one bad entry never sinks the tick
                    report.errors.append(f"{entry.partition_key}: {type(exc).__name__}: {exc}")

        workers = min(self.concurrency, len(known) + len(awaiting))
        await asyncio.gather(*(worker() for _ in range(workers)))
        polled = [e for e in taken if e.status == LedgerStatus.SUBMITTED]
        report.complete = len(polled) >= len(awaiting)
        report.cursor = None if report.complete else polled[-1].partition_key if polled else cursor
        report.elapsed_s = time.monotonic() - started
        return report

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> list[LedgerEntry]:
        watched = []
        for entry in self.ledger.iter_entries(self.asset):
            if not entry.extra.get("deferred"):
                continue
            if entry.status == LedgerStatus.FAILED and entry.extra.get("handled_at"):
                continue
            if entry.status == LedgerStatus.EXPIRED and entry.extra.get("handled_at"):
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
    ) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            task = await asyncio.wait_for(client.get_task(entry.task_id), timeout=remaining)
        except NotFoundError:
            report.polled += 1
            await self._on_failed(
                client, entry, "task_not_found", "the provider does not know this task", report
            )
            return
        except RateLimitError as exc:
            report.poll_errors += 1
            report.errors.append(f"{entry.task_id}: {exc}")
            stop.set()  # throttled: leave the rest to the next tick
            return
        except (ZImageError, asyncio.TimeoutError) as exc:
            report.poll_errors += 1
            report.errors.append(f"{entry.task_id}: {type(exc).__name__}: {exc}")
            return
        report.polled += 1
        await self._act_on_task(client, entry, task, report)

    async def _act_on_task(
        self, client: AsyncZImageClient, entry: LedgerEntry, task: Task, report: TickReport
    ) -> None:
        if task.is_completed:
            now = self.clock()
            if now - entry.submitted_at > self.result_ttl_s - self.expiry_margin_s:
                await self._regenerate(client, entry, report)
                return
            updated = await self._write(
                self.ledger.update,
                entry,
                LedgerStatus.COMPLETED,
                extra={"completed_at": now, "collect_requested_at": now},
            )
            if updated is not None:
                report.collect.append(CollectRequest(entry.partition_key, entry.task_id))
        elif task.is_failed:
            code = str(task.error.code) if task.error and task.error.code else "unknown_error"
            message = (task.error.message if task.error else None) or "failed"
            await self._on_failed(client, entry, code, message, report)

    async def _act_on_known(
        self, client: AsyncZImageClient, entry: LedgerEntry, report: TickReport
    ) -> None:
        if entry.status == LedgerStatus.COMPLETED:
            await self._on_completed(client, entry, self.clock(), report)
        elif entry.status == LedgerStatus.FAILED:
            await self._on_failed(
                client, entry, entry.error_code, entry.error_message, report, write=False
            )
        elif entry.status == LedgerStatus.EXPIRED:
            await self._regenerate(client, entry, report)

    async def _on_completed(
        self, client: AsyncZImageClient, entry: LedgerEntry, now: float, report: TickReport
    ) -> None:
        """A completed entry (known from an earlier tick or a callback)."""
        completed_at = entry.extra.get("completed_at")
        since = float(completed_at) if isinstance(completed_at, int | float) else entry.updated_at
        if now - since > self.result_ttl_s - self.expiry_margin_s:
            await self._regenerate(client, entry, report)
            return
        asked = entry.extra.get("collect_requested_at")
        if isinstance(asked, int | float) and now - float(asked) < self.recollect_after_s:
            return  # a collect run was requested already
        updated = await self._write(
            self.ledger.update,
            entry,
            LedgerStatus.COMPLETED,
            extra={"collect_requested_at": now},
        )
        if updated is not None:
            report.collect.append(CollectRequest(entry.partition_key, entry.task_id))

    async def _on_failed(
        self,
        client: AsyncZImageClient,
        entry: LedgerEntry,
        code: str | None,
        message: str | None,
        report: TickReport,
        *,
        write: bool = True,
    ) -> None:
        """Resubmit a retryable failure within budget; else report it once."""
        code = code or "unknown_error"
        message = message or "failed"
        if write:
            entry = await self._write(self.ledger.mark_failed, entry, code, message) or entry
        resubmits = int(entry.extra.get("resubmits") or 0)
        attempt = resubmits + 1
        if is_retryable_task_error_code(code, attempt=attempt) and resubmits < self.max_resubmits:
            new = await self._create(client, entry, report, regenerated=False)
            if new is not None:
                report.resubmitted.append((entry.partition_key, entry.task_id, new))
                self.log.info(
                    f"partition {entry.partition_key}: task {entry.task_id} failed with {code}; "
                    f"resubmitted with the same seed: task {new}"
                )
            return
        if is_retryable_task_error_code(code, attempt=attempt):
            message = f"{message} (gave up after {resubmits} resubmission(s))"
        report.failures.append(self._failure(entry, code, message))
        await self._mark_handled(entry, code, message)

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

    async def _regenerate(
        self, client: AsyncZImageClient, entry: LedgerEntry, report: TickReport
    ) -> None:
        if entry.status != LedgerStatus.EXPIRED:
            entry = await self._write(self.ledger.mark_expired, entry) or entry
        resubmits = int(entry.extra.get("resubmits") or 0)
        if resubmits >= self.max_resubmits:
            message = (
                f"the result link expired before it was collected, {resubmits + 1} time(s); "
                "gave up (is the collect job running?)"
            )
            report.failures.append(self._failure(entry, "result_expired", message))
            await self._mark_handled(entry, "result_expired", message, status=LedgerStatus.EXPIRED)
            return
        new = await self._create(client, entry, report, regenerated=True)
        if new is not None:
            report.regenerated.append((entry.partition_key, entry.task_id, new))
            self.log.info(
                f"partition {entry.partition_key}: the result of task {entry.task_id} expired "
                f"before it was collected; regenerated with the same seed: task {new}"
            )

    async def _create(
        self,
        client: AsyncZImageClient,
        entry: LedgerEntry,
        report: TickReport,
        *,
        regenerated: bool,
    ) -> str | None:
        key = entry.partition_key
        attempt = await asyncio.to_thread(self._gate.try_take, key)
        if not attempt.acquired:
            self.log.info(
                f"partition {key}: being generated by {attempt.claim.owner.describe()}; "
                "not resubmitted"
            )
            return None
        try:
            current = await asyncio.to_thread(self.ledger.get, entry.asset, key)
            if current is None or current.task_id != entry.task_id:
                return None  # another run moved the partition on meanwhile
            return await self._create_claimed(client, entry, report, regenerated=regenerated)
        finally:
            await asyncio.to_thread(self._gate.release, key)

    async def _create_claimed(
        self,
        client: AsyncZImageClient,
        entry: LedgerEntry,
        report: TickReport,
        *,
        regenerated: bool,
    ) -> str | None:
        request = GenerationRequest(**dict(entry.request))
        if self.callback_url is not None:
            request = request.model_copy(update={"callback_url": self.callback_url})
        extra: dict[str, Any] = {
            "deferred": True,
            "resubmits": int(entry.extra.get("resubmits") or 0) + 1,
            "regenerated": regenerated or bool(entry.extra.get("regenerated")),
        }
        try:
            task = await self._creator.create(
                request,
                partition_key=entry.partition_key,
                fingerprint=entry.fingerprint,
                record=entry.request,
                run_id=entry.run_id,
                extra=extra,
            )
        except ZImageError as exc:
            report.errors.append(f"{entry.task_id}: resubmission failed: {exc}")
            if not is_transient(exc):
                # Do not try again blindly: report it (a task may exist; or the request is bad).
                code = error_code(exc)
                report.failures.append(self._failure(entry, code, str(exc)))
                await self._mark_handled(entry, code, str(exc), status=entry.status)
            return None  # transient: the entry stays as it is, the next tick tries again
        return task.id

    async def _mark_handled(
        self,
        entry: LedgerEntry,
        code: str,
        message: str,
        *,
        status: LedgerStatus = LedgerStatus.FAILED,
    ) -> None:
        if status not in (LedgerStatus.FAILED, LedgerStatus.EXPIRED):
            status = LedgerStatus.FAILED
        await self._write(
            self.ledger.update,
            entry,
            status,
            error_code=code,
            error_message=message,
            extra={"handled_at": self.clock()},
        )

    async def _write(self, method: Any, entry: LedgerEntry, *args: Any, **kwargs: Any) -> Any:
        """A ledger update of ``entry``'s current task; ``None`` if the entry has moved on."""
        try:
            return await asyncio.to_thread(
                method, entry.asset, entry.partition_key, entry.task_id, *args, **kwargs
            )
        except (LedgerConflictError, KeyError) as exc:
            self.log.info(f"partition {entry.partition_key}: {exc}; leaving it")
            return None


_WATCHED = frozenset(
    {LedgerStatus.SUBMITTED, LedgerStatus.COMPLETED, LedgerStatus.FAILED, LedgerStatus.EXPIRED}
)


def _rotate(entries: Iterable[LedgerEntry], cursor: str | None) -> list[LedgerEntry]:
    """Entries sorted by key, starting after ``cursor`` and wrapping around."""
    ordered = sorted(entries, key=lambda e: e.partition_key)
    if not cursor:
        return ordered
    after = [e for e in ordered if e.partition_key > cursor]
    before = [e for e in ordered if e.partition_key <= cursor]
    return after + before
