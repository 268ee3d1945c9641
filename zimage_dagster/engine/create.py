"""The one place tasks are created: budgets, the provider's 402, the ledger record, the spend.

Every path that creates a task (blocking batches, deferred submits, resubmissions of failed or
expired tasks) goes through :meth:`CreateGate.create`, so each one gets the same rules:

* **402 stops the run's creates.** Once the provider answers ``insufficient_quota``, no further
  create is sent by this gate (no hammering): every later one fails at once with the provider's
  message, while tasks already live are still collected by their callers.
* **Budgets hold.** Before each create the gate reserves the task's estimated price against
  each budget (:class:`~zimage_dagster.engine.credits.CreditBudget`: the run's, the asset's
  rolling daily one, and in ``fit`` mode the balance read at the start); when one does not fit,
  no task is created and the partition fails with ``budget_reached``, naming the budget and the
  spend. The reservation is then set to what the provider reserved (``usage.credits_reserved``).
* **Recorded before anything else.** The task's ID and its credits go to the ledger at once.

:meth:`CreateGate.preflight` estimates a batch before it starts (tasks it will create x price)
and checks it against the budgets and the balance (``GET /v1/credits``).

Example:
    >>> import asyncio, tempfile
    >>> from zimage_dagster import api, emulator
    >>> from zimage_dagster.engine.ledger import TaskLedger
    >>> from zimage_dagster.prompts import PromptRow
    >>> job = ImageJob.from_row(PromptRow("fox", "a red fox", None, 7, None), seed=7)
    >>> async def main(url: str, key: str) -> str:
    ...     ledger = TaskLedger(tempfile.mkdtemp())
    ...     async with api.AsyncZImageClient(api_key=key, base_url=url) as client:
    ...         policy = GenerationPolicy(budget=CreditBudget(max_credits_per_run=0.03))
    ...         gate = CreateGate(client, ledger, "catalogue", policy, RunIdentity(run_id="r1"))
    ...         print(await gate.preflight(2, estimate=2))
    ...         await gate.create(job.request, partition_key="fox", fingerprint=job.fingerprint)
    ...         try:
    ...             await gate.create(job.request, partition_key="fox", fingerprint=job.fingerprint)
    ...         except BudgetError as exc:
    ...             print(exc.code)
    ...         return gate.usage.summary()
    >>> with emulator.EmulatorServer(emulator.EmulatorConfig.for_tests()) as server:
    ...     asyncio.run(main(server.url, server.api_key))  # doctest: +ELLIPSIS
    this run's budget (max_credits_per_run 0.03 credits; 0 spent so far) cannot cover 2 task(s) x 0.026 = 0.052 credits...
    budget_reached
    '1 task(s) created, 0.026 credits reserved; 0 task(s) failed (0 credits)'
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zimage_dagster.api import (
    APIUnreachableError,
    AsyncZImageClient,
    CapacityHook,
    GenerationRequest,
    Task,
    ZImageError,
)
from zimage_dagster.api.errors import CreateOutcomeUnknownError, InsufficientQuotaError
from zimage_dagster.engine import credits, outcome
from zimage_dagster.engine.credits import CreditBudget, SpendCounter, Usage, from_micro, to_micro
from zimage_dagster.engine.decide import DEFAULT_POLICY, Action, DecisionPolicy, decide
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.outcome import BudgetError, Log
from zimage_dagster.engine.settings import GenerationPolicy, RunIdentity, settings_of
from zimage_dagster.engine.store import AssetLike, asset_parts

__all__ = ["CreateGate", "CreditBudget", "tasks_to_create"]

log = logging.getLogger(__name__)


@dataclass
class _Limit:
    """One budget the gate checks: its counter and its cap in micro-credits."""

    counter: SpendCounter
    cap: int
    name: str  # "this run's budget"
    setting: str  # "max_credits_per_run 0.1 credits"

    def describe(self, spent: int) -> str:
        return f"{self.name} ({self.setting}; {from_micro(spent):g} spent so far)"


class CreateGate:
    """Creates tasks for one asset within its budgets (see the module docstring).

    Args:
        client: an open :class:`~zimage_dagster.api.AsyncZImageClient`.
        ledger: where each task is recorded, and where the budget counters live.
        asset: the asset key's parts.
        policy: the run's :class:`~zimage_dagster.engine.settings.GenerationPolicy`; the gate
            reads its ``budget`` (``None``: no budget, no preflight).
        identity: the run's :class:`~zimage_dagster.engine.settings.RunIdentity`; the gate reads
            its ``run_id``: the asset's budget counter for the run is shared by all the run's
            steps (a step retry finds what the earlier attempts spent); without one the counter
            is this gate's alone.
        logger: where the gate says what it refused.

    The loose keyword arguments of earlier versions (``budget=``, ``run_id=``) are still taken,
    with a ``DeprecationWarning``.
    """

    def __init__(
        self,
        client: AsyncZImageClient,
        ledger: TaskLedger,
        asset: AssetLike,
        policy: GenerationPolicy | None = None,
        identity: RunIdentity | None = None,
        *,
        logger: Log | None = None,
        **loose: Any,
    ) -> None:
        self.settings, self.identity = settings_of(policy, identity, loose, where="CreateGate")
        budget, run_id = self.settings.budget, self.identity.run_id
        self.client = client
        self.ledger = ledger
        self.asset = asset_parts(asset)
        self.budget = budget or CreditBudget(preflight=False)
        self.run_id = run_id
        self.log: Log = logger or log
        self.usage = Usage()
        self._price = (
            to_micro(self.budget.credits_per_task)
            if self.budget.credits_per_task is not None
            else None
        )
        self._stopped: str | None = None
        self._limits: list[_Limit] = []
        name = self.asset_name
        if self.budget.max_credits_per_run is not None:
            path = ledger.state_path(self.asset, f"spend-run-{run_id}") if run_id else None
            self._limits.append(
                _Limit(
                    self._counter(path),
                    to_micro(self.budget.max_credits_per_run),
                    "this run's budget",
                    f"max_credits_per_run {self.budget.max_credits_per_run:g} credits",
                )
            )
        if self.budget.daily_credits is not None:
            self._limits.append(
                _Limit(
                    self._counter(
                        ledger.state_path(self.asset, "spend-daily"), window_s=credits.DAY_S
                    ),
                    to_micro(self.budget.daily_credits),
                    f"the daily budget of {name}",
                    f"daily_credits {self.budget.daily_credits:g} credits in any 24 h",
                )
            )

    @property
    def asset_name(self) -> str:
        return "/".join(self.asset)

    def _counter(self, path: Any, window_s: float | None = None) -> SpendCounter:
        files = self.ledger.files if path is not None else None
        return SpendCounter(files, path, window_s=window_s)

    @property
    def price(self) -> float:
        """The price the gate estimates with (configured, else learned, else the default)."""
        return (
            from_micro(self._price) if self._price is not None else credits.DEFAULT_CREDITS_PER_TASK
        )

    # -- before the batch ------------------------------------------------------------------------

    async def preflight(self, jobs: int, *, estimate: int) -> str | None:
        """Check the batch's estimate (``estimate`` tasks to create for ``jobs`` partitions)
        against every budget and the balance. Returns why the run is refused (``refuse`` mode),
        else ``None``; in ``fit`` mode the balance becomes one more cap and creates stop where
        the money does."""
        if estimate == 0 or not (self.budget.limited or self.budget.preflight):
            return None
        need = estimate * to_micro(self.price)
        short: list[str] = []
        for limit in self._limits:
            spent = await asyncio.to_thread(limit.counter.spent)
            if spent + need > limit.cap:
                short.append(limit.describe(spent))
        if self.budget.preflight:
            balance = await self._balance()
            if balance is not None and need > balance:
                short.append(f"the account's balance ({from_micro(balance):g} credits)")
                if self.budget.over_budget == "fit":
                    self._limits.append(
                        _Limit(
                            SpendCounter(None, None),
                            balance,
                            "the account's balance",
                            f"{from_micro(balance):g} credits at the start of the batch",
                        )
                    )
        if not short:
            return None
        what = (
            f"{estimate} task(s) x {self.price:g} = {from_micro(need):g} credits "
            f"for {jobs} partition(s) of {self.asset_name}"
        )
        if self.budget.over_budget == "fit":
            self.log.warning(
                f"{' and '.join(short)} cannot cover {what}: creating only what fits "
                "(over_budget='fit'); the rest fail with budget_reached"
            )
            return None
        return (
            f"{' and '.join(short)} cannot cover {what}; run refused before creating any task "
            "(raise the budget, top up, or set over_budget='fit' to create what fits)"
        )

    async def refused(
        self, jobs: Sequence[ImageJob], policy: DecisionPolicy = DEFAULT_POLICY
    ) -> outcome.BatchReport | None:
        """Preflight a batch (:func:`tasks_to_create`, then :meth:`preflight`): ``None`` when it
        may start, else the report that fails every job with ``budget_refused``, saying why, or
        with the :class:`~zimage_dagster.api.APIUnreachableError` of the balance read (nothing
        listens at the base URL: every create would fail the same way, one by one)."""
        estimate = await asyncio.to_thread(tasks_to_create, self.ledger, self.asset, jobs, policy)
        try:
            reason = await self.preflight(len(jobs), estimate=estimate)
        except APIUnreachableError as exc:
            return outcome.BatchReport(failures=[outcome.failure_from_error(j, exc) for j in jobs])
        if reason is None:
            return None
        self.log.warning(reason)
        error = BudgetError("budget_refused", reason)
        return outcome.BatchReport(failures=[outcome.failure_from_error(j, error) for j in jobs])

    async def _balance(self) -> int | None:
        try:
            balance = await self.client.get_credits()
        except APIUnreachableError:
            raise
        except ZImageError as exc:
            self.log.warning(
                f"could not read the account's balance before submitting ({exc}); going on: "
                "the provider's 402 still stops the run"
            )
            return None
        return None if balance.unlimited else to_micro(balance.remaining)

    # -- the create ------------------------------------------------------------------------------

    async def create(
        self,
        request: GenerationRequest,
        *,
        partition_key: str,
        fingerprint: str | None = None,
        record: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        wait_for_capacity: CapacityHook | None = None,
        resubmits: int = 0,
        regenerated: bool = False,
        deferred: bool | None = None,
    ) -> Task:
        """Create the task for ``request`` within the budgets and record it in the ledger.

        ``record`` is the request as the ledger keeps it (default: ``request``'s wire form);
        ``run_id`` the run recorded on the entry (default: the gate's); ``resubmits``,
        ``regenerated`` and ``deferred`` are the entry's workflow fields (see
        :class:`~zimage_dagster.engine.ledger.LedgerEntry`). Raises
        :class:`~zimage_dagster.engine.outcome.BudgetError` (no task created), the provider's
        :class:`~zimage_dagster.api.InsufficientQuotaError` (then no further create is sent), or
        any error of the client. ``wait_for_capacity`` is the client's hook for a create
        answered 429 (see :meth:`~zimage_dagster.api.AsyncZImageClient.create_task`).
        """
        if self._stopped is not None:
            raise InsufficientQuotaError(
                402,
                "insufficient_quota",
                f"{self._stopped} (no further task created after the provider's first 402)",
            )
        estimate = to_micro(self.price)
        taken = await asyncio.to_thread(self._reserve, estimate)
        try:
            task = await self.client.create_task(request, wait_for_capacity=wait_for_capacity)
        except InsufficientQuotaError as exc:
            self._stopped = exc.message
            await asyncio.to_thread(self._adjust, taken, -estimate)
            self.log.warning(
                f"the provider answered 402 {exc.code}: {exc.message}; no further task is "
                "created in this run, live tasks are still collected"
            )
            raise
        except CreateOutcomeUnknownError:
            raise  # a task may exist and be billed: its reservation stays
        except BaseException:
            await asyncio.to_thread(self._adjust, taken, -estimate)
            raise
        actual = to_micro(task.credits_reserved) if task.credits_reserved is not None else estimate
        # The ledger first: between the provider's answer and this write, a kill leaves a task
        # the ledger does not know, so nothing else comes before it. The task exists and is
        # billed whatever the write does, so the budget and the usage count it either way.
        try:
            await asyncio.to_thread(
                self.ledger.record_submitted,
                self.asset,
                partition_key,
                task_id=task.id,
                request=record if record is not None else request.to_wire(),
                fingerprint=fingerprint,
                run_id=run_id or self.run_id,
                extra=extra,
                credits_reserved=from_micro(actual),
                resubmits=resubmits,
                regenerated=regenerated,
                deferred=deferred,
            )
        finally:
            if actual != estimate:
                await asyncio.to_thread(self._adjust, taken, actual - estimate)
            if self.budget.credits_per_task is None and task.credits_reserved is not None:
                self._price = actual  # the provider's own answer is the best estimate
            self.usage.created(from_micro(actual))
        return task

    def task_failed(self, task: Task) -> None:
        """Count a task that failed (what it reserved goes to the run's failure credits)."""
        self.usage.failed(task.credits_reserved)

    def _reserve(self, amount: int) -> list[_Limit]:
        taken: list[_Limit] = []
        for limit in self._limits:
            before = limit.counter.try_add(amount, limit.cap)
            if before is None:
                self._adjust(taken, -amount)
                spent = limit.counter.spent()
                raise BudgetError(
                    "budget_reached",
                    f"{limit.describe(spent)} reached: a task costs {from_micro(amount):g} "
                    "credits; no task created for this partition",
                )
            taken.append(limit)
        return taken

    @staticmethod
    def _adjust(taken: Sequence[_Limit], amount: int) -> None:
        for limit in taken:
            limit.counter.add(amount)


def tasks_to_create(
    ledger: TaskLedger,
    asset: AssetLike,
    jobs: Sequence[ImageJob],
    policy: DecisionPolicy = DEFAULT_POLICY,
) -> int:
    """How many of ``jobs`` the one decision (:func:`~zimage_dagster.engine.decide.decide`)
    sends to ``create``, from the ledger alone: not those with an open task of the identical
    request, or a collected one (re-attached or reused), nor those rejected before for good.
    An estimate: stored images are not read (a damaged one costs one more, one stored without
    a ledger entry one less)."""
    parts = asset_parts(asset)
    count = 0
    for job in jobs:
        try:
            entry = ledger.get(parts, job.partition_key)
        except Exception:  # the partition fails on its own later (a bad key...): count it
            entry = None
        if decide(entry, None, job.fingerprint, policy).action == Action.CREATE:
            count += 1
    return count
