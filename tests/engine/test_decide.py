"""The decision table of :func:`zimage_dagster.engine.decide.decide`, row by row.

Pure: no emulator, no storage. Each row of the table in the module doc has its case here; the
behaviour tests (tests/dagster/test_batch.py, tests/sensors, tests/cost...) check the callers.
"""

from __future__ import annotations

import pytest

from zimage_dagster.engine.decide import Action, DecisionPolicy, budget_spent, decide
from zimage_dagster.engine.ledger import LedgerEntry, LedgerStatus
from zimage_dagster.engine.provenance import ImageRecord

FP = "a" * 16
OTHER = "b" * 16


def entry(
    status: LedgerStatus,
    *,
    fingerprint: str = FP,
    code: str | None = None,
    resubmits: int = 0,
    recovered_from: str | None = None,
) -> LedgerEntry:
    return LedgerEntry(
        asset=("imgs",),
        partition_key="fox",
        task_id="task-1",
        seed=7,
        fingerprint=fingerprint,
        request={"prompt": "a fox", "seed": 7},
        status=status,
        submitted_at=0.0,
        updated_at=0.0,
        error_code=code,
        error_message="boom" if code else None,
        resubmits=resubmits,
        recovered_from=recovered_from,
    )


def stored(fingerprint: str = FP) -> ImageRecord:
    return ImageRecord(seed=7, task_id="task-0", prompt="a fox", fingerprint=fingerprint)


POLICY = DecisionPolicy(max_resubmits=2)


# -- reuse ---------------------------------------------------------------------------------------


def test_a_stored_image_of_the_identical_request_is_reused() -> None:
    assert decide(None, stored(), FP, POLICY).action == Action.REUSE
    collected = entry(LedgerStatus.COLLECTED)
    assert decide(collected, stored(), FP, POLICY).action == Action.REUSE


def test_a_stored_image_is_not_reused_when_reuse_is_off_or_the_request_changed() -> None:
    assert decide(None, stored(), FP, DecisionPolicy(reuse_stored=False)).action == Action.CREATE
    assert decide(None, stored(OTHER), FP, POLICY).action == Action.CREATE


def test_a_stored_image_is_not_reused_while_another_requests_task_is_open() -> None:
    other_open = entry(LedgerStatus.SUBMITTED, fingerprint=OTHER)
    assert decide(other_open, stored(), FP, POLICY).action == Action.CREATE


def test_a_recovered_entry_does_not_block_reuse() -> None:
    recovered = entry(LedgerStatus.SUBMITTED, fingerprint="", recovered_from="p.json.bad")
    assert decide(recovered, stored(), FP, POLICY).action == Action.REUSE


# -- re-attach -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [LedgerStatus.SUBMITTED, LedgerStatus.COMPLETED])
def test_an_open_task_of_the_identical_request_is_reattached(status: LedgerStatus) -> None:
    decision = decide(entry(status), None, FP, POLICY)
    assert decision.action == Action.REATTACH
    assert decision.entry is not None
    assert decision.entry.task_id == "task-1"


def test_a_recovered_entry_is_reattached_as_this_requests_task() -> None:
    recovered = entry(LedgerStatus.SUBMITTED, fingerprint="", recovered_from="p.json.bad")
    assert decide(recovered, None, FP, POLICY).action == Action.REATTACH


def test_a_collected_task_whose_image_is_gone_is_fetched_again_or_made_again() -> None:
    collected = entry(LedgerStatus.COLLECTED)
    assert decide(collected, None, FP, POLICY).action == Action.REATTACH
    deferred = DecisionPolicy(refetch_collected=False)
    assert decide(collected, None, FP, deferred).action == Action.CREATE
    regenerate = decide(collected, None, FP, DecisionPolicy(reuse_stored=False))
    assert (regenerate.action, regenerate.resubmits) == (Action.CREATE, 0)


# -- rejected before -----------------------------------------------------------------------------


def test_a_fixable_rejection_is_kept_unless_retry_rejected() -> None:
    rejected = entry(LedgerStatus.FAILED, code="content_policy_violation")
    decision = decide(rejected, None, FP, POLICY)
    assert (decision.action, decision.code, decision.budget_spent) == (
        Action.REJECTED,
        "content_policy_violation",
        False,
    )
    again = decide(rejected, None, FP, DecisionPolicy(retry_rejected=True))
    assert (again.action, again.resubmits) == (Action.CREATE, 0)
    # Inside a run, a fixable failure is never resubmitted, even with retry_rejected.
    inside = decide(rejected, None, FP, DecisionPolicy(retry_rejected=True), resubmitting=True)
    assert inside.action == Action.REJECTED


def test_an_unknown_code_gets_the_benefit_of_the_doubt_once() -> None:
    first = entry(LedgerStatus.FAILED, code="brand_new_code", resubmits=0)
    assert decide(first, None, FP, POLICY, resubmitting=True).action == Action.CREATE
    second = entry(LedgerStatus.FAILED, code="brand_new_code", resubmits=1)
    assert decide(second, None, FP, POLICY, resubmitting=True).action == Action.REJECTED


def test_a_rejection_of_another_request_does_not_count() -> None:
    other = entry(LedgerStatus.FAILED, fingerprint=OTHER, code="content_policy_violation")
    decision = decide(other, None, FP, POLICY)
    assert (decision.action, decision.entry) == (Action.CREATE, None)


# -- the resubmission budget ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [LedgerStatus.FAILED, LedgerStatus.EXPIRED])
def test_automatic_resubmissions_stop_when_the_budget_is_spent(status: LedgerStatus) -> None:
    code = "service_error" if status == LedgerStatus.FAILED else None
    within = decide(entry(status, code=code, resubmits=1), None, FP, POLICY, resubmitting=True)
    assert (within.action, within.resubmits) == (Action.CREATE, 2)
    assert within.regenerated == (status == LedgerStatus.EXPIRED)
    spent = decide(entry(status, code=code, resubmits=2), None, FP, POLICY, resubmitting=True)
    assert (spent.action, spent.budget_spent) == (Action.REJECTED, True)
    assert "gave up after 2 resubmission(s)" in spent.failure_message


def test_a_run_asked_for_again_makes_one_task_whatever_the_count() -> None:
    spent = entry(LedgerStatus.FAILED, code="service_error", resubmits=5)
    decision = decide(spent, None, FP, POLICY)
    assert (decision.action, decision.resubmits) == (Action.CREATE, 6)


def test_an_abandoned_task_is_replaced_and_counted() -> None:
    decision = decide(entry(LedgerStatus.ABANDONED, resubmits=1), None, FP, POLICY)
    assert (decision.action, decision.resubmits) == (Action.CREATE, 2)


def test_the_budget_counting_rule() -> None:
    assert not budget_spent(0, DecisionPolicy(max_resubmits=1))
    assert budget_spent(1, DecisionPolicy(max_resubmits=1))
    assert budget_spent(0, DecisionPolicy(max_resubmits=0))


# -- create --------------------------------------------------------------------------------------


def test_nothing_known_means_create() -> None:
    decision = decide(None, None, FP, POLICY)
    assert (decision.action, decision.resubmits, decision.entry) == (Action.CREATE, 0, None)


def test_another_requests_entry_means_a_fresh_create() -> None:
    collected = entry(LedgerStatus.COLLECTED, fingerprint=OTHER, resubmits=3)
    decision = decide(collected, stored(OTHER), FP, POLICY)
    assert (decision.action, decision.resubmits) == (Action.CREATE, 0)
