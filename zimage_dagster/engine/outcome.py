"""One outcome model for blocking and deferred mode: results, errors, and the decisions on them.

* :class:`ImageSuccess` / :class:`ImageFailure`: how one partition ended; :class:`BatchReport`:
  the one report of a batch (blocking: stored and failed; deferred submit: also submitted and
  skipped because a task is open).
* :func:`failure_from_error`: the one classification of an error as retryable or not. A create
  whose outcome is unknown (``create_outcome_unknown``) is *not* retryable anywhere: a task may
  exist that we do not know of, and retrying blindly may pay twice. An API that cannot be
  reached at all (refused, or a host name that does not resolve) is not retryable either: the
  base URL is wrong or nothing runs there, and the error says so.
* :func:`look_up`: read a unit's ledger entry and stored record, take the one decision on it
  (:func:`~zimage_dagster.engine.decide.decide`) and act on what needs no task: an intact
  stored image of the identical request (its sha256 matches the provenance record) is reused;
  :func:`rejected_failure` is what a ``rejected`` decision reports, at no cost.

>>> from zimage_dagster.api import CreateOutcomeUnknownError
>>> from zimage_dagster.engine.jobs import ImageJob
>>> from zimage_dagster.prompts import PromptRow
>>> job = ImageJob.from_row(PromptRow("fox", "a fox", None, None, None), seed=7)
>>> f = failure_from_error(job, CreateOutcomeUnknownError("no answer"))
>>> (f.code, f.retryable)
('create_outcome_unknown', False)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from zimage_dagster.api import (
    APIUnreachableError,
    AuthenticationError,
    BadRequestError,
    CreateOutcomeUnknownError,
    InsufficientQuotaError,
    NotAnImageError,
    PermissionDeniedError,
    RequestValidationError,
    TaskFailedError,
    ZImageError,
)
from zimage_dagster.engine.atomic import AtomicWritesUnsupportedError
from zimage_dagster.engine.claims import ClaimLostError
from zimage_dagster.engine.credits import Usage
from zimage_dagster.engine.decide import Action, Decision, DecisionPolicy, decide, stored_record
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.keys import describe_unit
from zimage_dagster.engine.ledger import LedgerConflictError, LedgerEntry, TaskLedger
from zimage_dagster.engine.provenance import ImageRecord, from_provenance
from zimage_dagster.engine.store import ImageStore, StoredImage
from zimage_dagster.engine.thumbnails import make_thumbnail

__all__ = [
    "BatchReport",
    "BudgetError",
    "ImageFailure",
    "ImageSuccess",
    "Log",
    "SubmittedTask",
    "error_code",
    "failure_from_claim_error",
    "failure_from_error",
    "is_transient",
    "look_up",
    "rejected_before",
    "rejected_failure",
    "reusable_image",
]

log = logging.getLogger(__name__)


class Log(Protocol):
    """What the engine logs through (a ``logging.Logger`` or Dagster's ``context.log``)."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class ImageSuccess:
    """A stored image: its record (everything the metadata shows) and its thumbnail data URI."""

    job: ImageJob
    record: ImageRecord
    thumbnail: str | None


@dataclass(frozen=True)
class ImageFailure:
    """A partition that produced no image, with the provider's code and message.

    ``retryable`` is False for errors the user must fix (content policy, invalid parameters) and
    for a create whose outcome is unknown: retrying them as they are would fail, or may pay, again.

    >>> from zimage_dagster.prompts import PromptRow
    >>> job = ImageJob.from_row(PromptRow("fox", "a fox", None, None, None), seed=7)
    >>> ImageFailure(job, "content_policy_violation", "no", False, "t-1").describe()
    'fox: content_policy_violation: no (task t-1)'
    >>> ImageFailure(replace(job, partition_key="fox...2"), "timeout", "late", True).describe()
    'fox (candidate 3): timeout: late'
    """

    job: ImageJob
    code: str
    message: str
    retryable: bool
    task_id: str | None = None

    def describe(self) -> str:
        """``<partition>: <code>: <message> (task <id>)``; a candidate after the first one is
        named with its partition, ``<partition> (candidate <n>): ...``, counted from 1 as in the
        gallery (:func:`~zimage_dagster.engine.keys.describe_unit`)."""
        task = f" (task {self.task_id})" if self.task_id else ""
        return f"{describe_unit(self.job.partition_key)}: {self.code}: {self.message}{task}"


@dataclass(frozen=True)
class SubmittedTask:
    """A partition whose task was created (or found open) in deferred mode."""

    job: ImageJob
    task_id: str


@dataclass
class BatchReport:
    """What a batch did, per partition, in the order partitions finished.

    Blocking mode fills ``successes`` and ``failures``; a deferred submit also fills
    ``submitted`` (tasks created), ``open_task`` (a task for the identical request was
    already open) and ``held`` (another run holds the partition's claim), and puts reused
    stored images in ``successes``.

    >>> BatchReport().summary()
    '0 stored, 0 failed in 0.0 s'
    """

    successes: list[ImageSuccess] = field(default_factory=list)
    failures: list[ImageFailure] = field(default_factory=list)
    submitted: list[SubmittedTask] = field(default_factory=list)
    open_task: list[SubmittedTask] = field(default_factory=list)
    #: ``(job, holder)``: partitions another run was generating (its claim was live): not
    #: submitted again, and not a failure of this run.
    held: list[tuple[ImageJob, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: Tasks this batch created and the credits they reserved (see :class:`Usage`).
    usage: Usage = field(default_factory=Usage)

    @property
    def all_retryable(self) -> bool:
        """True when running again (unchanged) may fix every failure."""
        return all(f.retryable for f in self.failures)

    def summary(self) -> str:
        """One line: counts and elapsed time."""
        deferred = (
            f", {len(self.submitted)} submitted, {len(self.open_task)} skipped (open task)"
            if self.submitted or self.open_task
            else ""
        )
        if self.held:
            deferred += f", {len(self.held)} being generated by other runs"
        return (
            f"{len(self.successes)} stored, {len(self.failures)} failed{deferred} "
            f"in {self.elapsed_s:.1f} s"
        )

    def failure_report(self) -> str:
        """The failures, one a line."""
        return "\n".join(f"- {f.describe()}" for f in self.failures)


class BudgetError(ZImageError):
    """No task was created because a credit budget, or the account's balance, does not allow it.

    ``code`` is ``budget_refused`` (the run's estimate did not fit before it started) or
    ``budget_reached`` (the budget ran out during the run). Never retryable: a retry would meet
    the same budget.

    >>> str(BudgetError("budget_reached", "max_credits_per_run 0.05 credits reached"))
    'budget_reached: max_credits_per_run 0.05 credits reached'
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


_PERMANENT = (
    BudgetError,
    RequestValidationError,
    BadRequestError,
    AuthenticationError,
    InsufficientQuotaError,
    PermissionDeniedError,
    NotAnImageError,
    CreateOutcomeUnknownError,
    # Nothing listens at the base URL, or its host does not resolve: a setup problem. A step
    # retry would only wait longer before saying the same; tasks already made are in the ledger.
    APIUnreachableError,
)


def is_transient(exc: ZImageError) -> bool:
    """Whether running again without changing anything may succeed (and cannot pay twice).

    >>> from zimage_dagster.api import CreateOutcomeUnknownError, ZImageError
    >>> is_transient(ZImageError("connection reset")), is_transient(CreateOutcomeUnknownError("?"))
    (True, False)
    """
    if isinstance(exc, TaskFailedError):
        return exc.retryable
    return not isinstance(exc, _PERMANENT)


def error_code(exc: ZImageError) -> str:
    """The code reported for an error: the provider's, else the error's class name.

    >>> from zimage_dagster.api import CreateOutcomeUnknownError
    >>> error_code(CreateOutcomeUnknownError("no answer"))
    'create_outcome_unknown'
    """
    if isinstance(exc, CreateOutcomeUnknownError):
        return "create_outcome_unknown"
    return str(getattr(exc, "code", None) or type(exc).__name__)


def failure_from_error(job: ImageJob, exc: ZImageError) -> ImageFailure:
    """The failure of ``job`` for an error of the client (the one classification)."""
    task_id = getattr(exc, "task_id", None)
    message = exc.message if isinstance(exc, BudgetError) else str(exc)
    return ImageFailure(job, error_code(exc), message, is_transient(exc), task_id)


def failure_from_claim_error(job: ImageJob, exc: Exception) -> ImageFailure:
    """The failure of ``job`` when its claim could not be taken or was lost (no task created).

    A storage without atomic writes is a setup error (not retryable); a lost claim (we looked
    dead and another run took the partition over) is retryable, and anything else is an
    ``internal_error`` like any unexpected error of a partition.
    """
    if isinstance(exc, AtomicWritesUnsupportedError):
        return ImageFailure(job, "storage_unsupported", str(exc), False)
    if isinstance(exc, ClaimLostError):
        return ImageFailure(job, "claim_lost", str(exc), True)
    return ImageFailure(job, "internal_error", f"{type(exc).__name__}: {exc}", True)


def rejected_before(
    job: ImageJob, entry: LedgerEntry | None, *, retry_rejected: bool = False
) -> ImageFailure | None:
    """The failure to report at once when the ledger holds a fixable rejection of this request
    (:func:`~zimage_dagster.engine.decide.decide` says ``rejected``).

    ``None`` when there is none, when the failure was retryable, or with ``retry_rejected``.
    """
    decision = decide(entry, None, job.fingerprint, DecisionPolicy(retry_rejected=retry_rejected))
    return rejected_failure(job, decision) if decision.action == Action.REJECTED else None


def rejected_failure(job: ImageJob, decision: Decision) -> ImageFailure:
    """The failure of ``job`` that a ``rejected`` decision reports, at no cost. A spent
    resubmission budget stays retryable: a run asked for again (or Dagster's retry policy)
    may make one task (see :mod:`zimage_dagster.engine.decide`)."""
    code = decision.code or "unknown_error"
    if decision.budget_spent:
        return ImageFailure(job, code, decision.failure_message, True, _task(decision))
    return ImageFailure(
        job,
        code,
        f"{decision.failure_message} (rejected before; change the prompt, "
        "or pass retry_rejected=True to submit it again)",
        retryable=False,
        task_id=_task(decision),
    )


def _task(decision: Decision) -> str | None:
    return decision.entry.task_id if decision.entry is not None else None


def look_up(
    store: ImageStore,
    ledger: TaskLedger,
    asset: Sequence[str],
    job: ImageJob,
    policy: DecisionPolicy,
    logger: Log | None = None,
    *,
    thumbnail: bool = True,
) -> tuple[Decision, ImageSuccess | None]:
    """Read what is known of ``job`` (its ledger entry, its stored image's record), decide
    (:func:`~zimage_dagster.engine.decide.decide`) and act on what needs no task:

    * ``reuse``: the stored file is read and checked against its record's sha256; intact, it is
      returned (and a ledger entry still open for its task is marked collected); damaged or
      gone, the decision is taken again without it (same seed, so the same image);
    * an entry recovered from a damaged file gets the job's request when the decision uses it.

    ``thumbnail``: a reused image comes with its thumbnail (made from the file read).
    """
    parts = tuple(asset)
    entry = ledger.get(parts, job.partition_key)
    found = store.find(parts, job.partition_key) if policy.reuse_stored else None
    record = stored_record(found.provenance if found is not None else None)
    decision = decide(entry, record, job.fingerprint, policy)
    if decision.action == Action.REUSE and found is not None:
        reused = _intact(store, ledger, parts, job, found, entry, logger, thumbnail)
        if reused is not None:
            return decision, reused
        decision = decide(entry, None, job.fingerprint, policy)
    if (
        decision.entry is not None
        and decision.entry.recovered_from
        and not entry_has_request(decision.entry)
    ):
        restored: LedgerEntry | None
        try:  # re-made from a damaged file: it is this partition's task
            restored = ledger.restore_request(
                parts,
                job.partition_key,
                decision.entry.task_id,
                request=job.request.to_wire(),
                fingerprint=job.fingerprint,
            )
        except (LedgerConflictError, KeyError):  # moved on meanwhile: decide on what it is now
            restored = ledger.get(parts, job.partition_key)
        decision = decide(restored, None, job.fingerprint, policy)
    return decision, None


def entry_has_request(entry: LedgerEntry) -> bool:
    """Whether the entry knows its request (an entry recovered from a damaged file does not)."""
    return bool(entry.fingerprint)


def _intact(
    store: ImageStore,
    ledger: TaskLedger,
    asset: tuple[str, ...],
    job: ImageJob,
    found: StoredImage,
    entry: LedgerEntry | None,
    logger: Log | None,
    thumbnail: bool = True,
) -> ImageSuccess | None:
    data = store.read_bytes_or_none(found.path)
    if data is None:
        return None
    if hashlib.sha256(data).hexdigest() != found.sha256:
        (logger or log).warning(
            f"partition {describe_unit(job.partition_key)}: the stored file {found.path} differs from its "
            "provenance record (sha256); generating it again"
        )
        return None
    record = replace(from_provenance(found.provenance), reused=True, regenerated=False)
    if entry is not None and entry.is_open and entry.task_id == record.task_id:
        ledger.mark_collected(asset, job.partition_key, entry.task_id)
    return ImageSuccess(job, record, make_thumbnail(data) if thumbnail else None)


def reusable_image(
    store: ImageStore,
    ledger: TaskLedger,
    asset: Sequence[str],
    job: ImageJob,
    logger: Log | None = None,
) -> ImageSuccess | None:
    """The stored image of ``job`` when it was made from the identical request and is intact
    (:func:`look_up` with reuse allowed)."""
    return look_up(store, ledger, asset, job, DecisionPolicy(reuse_stored=True), logger)[1]
