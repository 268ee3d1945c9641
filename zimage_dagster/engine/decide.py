"""The one decision on a unit of work: reuse, re-attach, rejected before, or create.

A unit of work is one request planned for one slot of storage: today a partition (one
:class:`~zimage_dagster.engine.jobs.ImageJob`); a candidate of a partition or a row of a shard
is the same question. :func:`decide` answers it from what is known of the unit, and nothing
else (no I/O: callers read, then act):

* the ledger's entry of the unit (its current task, how it ended, how often it was resubmitted),
* the provenance record of the image stored for it,
* the planned request (its fingerprint: :func:`~zimage_dagster.dataset.request.request_fingerprint`),
* the :class:`DecisionPolicy` (the options that change the answer).

Blocking batches, deferred submits, the create gate's estimate and the prompt-dataset sensor all
call it, so they cannot disagree. The table, in order (``same`` = the entry is for the identical
request, or was recovered from a damaged file and its request is not known yet):

======================================================  =================================
what is known                                           decision
======================================================  =================================
stored image of the identical request, reuse allowed,   ``reuse`` (the caller checks the
and no open task of *another* request                   bytes; damaged: decide again
                                                        without the record)
``same``, task open (submitted, completed)              ``reattach``
``same``, collected, reuse allowed, ``refetch``         ``reattach`` (its image is gone:
                                                        fetch the result again)
``same``, failed with a fixable code                    ``rejected`` (unless
                                                        ``retry_rejected``: ``create``)
``same``, failed (retryable) or expired, automatic      ``rejected`` (budget spent)
resubmission, budget spent
``same``, failed (retryable), expired, abandoned        ``create`` (a resubmission)
anything else (no entry, another request, collected     ``create`` (a fresh request)
and a regeneration asked for)
======================================================  =================================

The resubmission budget (one unit, one counting rule, one option): ``max_resubmits`` bounds the
tasks made *automatically* for one request after its first one failed with a retryable error or
its result expired. The count is the ledger's ``resubmits`` of the request: it follows the request
for its whole life, across runs, step retries and collect runs, and starts again at 0 when the
request changes (new prompt, size, seed) or a regeneration is asked for. *Automatic* is the engine
resubmitting inside a run, and the task-status sensor deciding whether a failure deserves a
collect run; a run asked for by a person, a schedule or Dagster's ``RetryPolicy`` is a new request
for the unit and may make one task (``resubmitting=False``), whose own failures are then bounded
by the same count. Why: the only count that survives a crash and is the same for blocking and
deferred mode is the ledger's, and a person (or a retry policy they wrote) asking again must not
be refused by an earlier run's spend; unknown error codes keep their benefit of the doubt once
(:func:`~zimage_dagster.api.is_retryable_task_error_code`, attempt = resubmits + 1). The client's
own ``max_task_attempts`` (:meth:`~zimage_dagster.api.ZImageClient.generate`) is for callers of
the bare client, which has no ledger.

>>> from zimage_dagster.engine.ledger import LedgerEntry, LedgerStatus
>>> failed = LedgerEntry(("hero",), "fox", "t-1", 7, "fp", {}, LedgerStatus.FAILED, 0.0, 0.0,
...                      error_code="service_error", resubmits=2)
>>> decide(failed, None, "fp", DecisionPolicy(max_resubmits=2)).action
<Action.CREATE: 'create'>
>>> decide(failed, None, "fp", DecisionPolicy(max_resubmits=2), resubmitting=True).action
<Action.REJECTED: 'rejected'>
>>> decide(None, None, "fp", DecisionPolicy()).describe()
'create: no task of this request in the ledger'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from zimage_dagster.api import is_retryable_task_error_code
from zimage_dagster.engine.ledger import LedgerEntry, LedgerStatus
from zimage_dagster.engine.provenance import ImageRecord, from_provenance

__all__ = [
    "DEFAULT_POLICY",
    "Action",
    "Decision",
    "DecisionPolicy",
    "budget_spent",
    "decide",
    "stored_record",
]


class Action(str, Enum):
    """What to do with a unit of work."""

    REUSE = "reuse"  # the stored image of the identical request: no task, no cost
    REATTACH = "reattach"  # the ledger's task of the identical request: wait on it, collect it
    REJECTED = "rejected"  # the ledger says it failed for good: fail at once, at no cost
    CREATE = "create"  # a new task


@dataclass(frozen=True)
class DecisionPolicy:
    """The options that change a decision.

    ``reuse_stored``: reuse a stored image of the identical request; ``retry_rejected``: submit
    again a request rejected with a fixable error, or whose resubmission budget is spent;
    ``max_resubmits``: the resubmission budget (see the module doc); ``refetch_collected``: a
    collected task whose stored image is gone is fetched again (blocking mode: it downloads
    the result while its link lives; deferred mode cannot: its sensor does not watch collected
    tasks, so a new task is made).

    >>> DecisionPolicy().max_resubmits
    2
    """

    reuse_stored: bool = True
    retry_rejected: bool = False
    max_resubmits: int = 2
    refetch_collected: bool = True


#: Reuse stored images, keep rejections, resubmit twice, fetch collected tasks again.
DEFAULT_POLICY = DecisionPolicy()


@dataclass(frozen=True)
class Decision:
    """The decision on one unit of work (see :func:`decide`).

    ``entry``: the ledger entry of the identical request the decision read (``None``: no entry,
    or one for another request); ``resubmits``: with ``create``, the new task's count (0 for a
    fresh request); ``regenerated``: with ``create``, the task replaces an expired result;
    ``code`` / ``message``: with ``rejected``, the provider's code and message (or
    ``result_expired``), and ``budget_spent`` whether it is the budget, not the code, that
    refuses.
    """

    action: Action
    reason: str
    entry: LedgerEntry | None = None
    resubmits: int = 0
    regenerated: bool = False
    code: str | None = None
    message: str | None = None
    budget_spent: bool = False

    def describe(self) -> str:
        """``<action>: <reason>``."""
        return f"{self.action.value}: {self.reason}"

    @property
    def failure_message(self) -> str:
        """With ``rejected``: the provider's message, saying when the budget is what refuses.

        >>> Decision(Action.REJECTED, "", message="boom", budget_spent=True).failure_message
        'boom (gave up after 0 resubmission(s))'
        """
        message = self.message or "rejected"
        if self.budget_spent:
            spent = self.entry.resubmits if self.entry is not None else 0
            return f"{message} (gave up after {spent} resubmission(s))"
        return message


def budget_spent(resubmits: int, policy: DecisionPolicy) -> bool:
    """Whether a request resubmitted ``resubmits`` times may not be resubmitted again (the one
    counting rule of the resubmission budget).

    >>> budget_spent(1, DecisionPolicy(max_resubmits=2)), budget_spent(2, DecisionPolicy(max_resubmits=2))
    (False, True)
    """
    return resubmits >= policy.max_resubmits


def is_same_request(entry: LedgerEntry | None, fingerprint: str) -> bool:
    """Whether ``entry`` is the ledger's record of the request ``fingerprint`` (an entry
    recovered from a damaged file, whose request is not known yet, counts as it).

    >>> is_same_request(None, "fp")
    False
    """
    if entry is None:
        return False
    return entry.fingerprint == fingerprint or (
        bool(entry.recovered_from) and not entry.fingerprint
    )


def stored_record(provenance: Mapping[str, Any] | None) -> ImageRecord | None:
    """The stored image's record as :func:`decide` reads it: ``None`` when there is none or it
    cannot be read (then the unit is decided as if nothing were stored).

    >>> stored_record({"seed": 7}) is None, stored_record({"seed": 7, "task_id": "t", "prompt": "p"}).seed
    (True, 7)
    """
    if provenance is None:
        return None
    try:
        return from_provenance(provenance)
    except (ValueError, TypeError):
        return None


def decide(
    entry: LedgerEntry | None,
    stored: ImageRecord | None,
    fingerprint: str,
    policy: DecisionPolicy,
    *,
    resubmitting: bool = False,
) -> Decision:
    """The decision on a unit of work whose planned request is ``fingerprint`` (the table in the
    module doc). ``resubmitting``: asked after a task of the request failed or expired inside
    this run, or by the task-status sensor (the budget applies); otherwise a run asks for the
    unit (a failed or expired request may make one task).
    """
    same = is_same_request(entry, fingerprint)
    open_other = entry is not None and entry.is_open and not same
    if (
        policy.reuse_stored
        and stored is not None
        and stored.fingerprint == fingerprint
        and not open_other  # the other request's task would overwrite it when collected
    ):
        return Decision(Action.REUSE, f"image of this request stored (task {stored.task_id})")
    if entry is None or not same:
        reason = "no task of this request in the ledger" if entry is None else "a new request"
        return Decision(Action.CREATE, reason)
    if entry.is_open:
        return Decision(Action.REATTACH, f"task {entry.task_id} is {entry.status.value}", entry)
    if entry.status == LedgerStatus.COLLECTED:
        if policy.reuse_stored and policy.refetch_collected:
            return Decision(
                Action.REATTACH,
                f"task {entry.task_id} was collected but its image is gone: fetching it again",
                entry,
            )
        return Decision(Action.CREATE, f"task {entry.task_id} was collected; a new image", entry)
    return _after_an_end(entry, policy, resubmitting)


def _after_an_end(entry: LedgerEntry, policy: DecisionPolicy, resubmitting: bool) -> Decision:
    """The request's task failed, expired or was abandoned."""
    if entry.status == LedgerStatus.ABANDONED:  # we gave up on it (lost, superseded)
        return Decision(
            Action.CREATE, f"task {entry.task_id} was abandoned", entry, entry.resubmits + 1
        )
    expired = entry.status == LedgerStatus.EXPIRED
    code = "result_expired" if expired else entry.error_code or "unknown_error"
    message = (
        "the result link expired before it was collected"
        if expired
        else entry.error_message or "failed"
    )
    fixable = not expired and not is_retryable_task_error_code(code, entry.resubmits + 1)
    if fixable and (resubmitting or not policy.retry_rejected):
        return Decision(Action.REJECTED, f"rejected with {code}", entry, code=code, message=message)
    if fixable:  # retry_rejected: submitted again as a new request
        return Decision(Action.CREATE, f"{code}: submitted again as asked", entry)
    if resubmitting and budget_spent(entry.resubmits, policy):
        return Decision(
            Action.REJECTED,
            f"resubmission budget spent ({entry.resubmits} of {policy.max_resubmits})",
            entry,
            code=code,
            message=message,
            budget_spent=True,
        )
    return Decision(
        Action.CREATE, f"{code}: resubmitted", entry, entry.resubmits + 1, regenerated=expired
    )
