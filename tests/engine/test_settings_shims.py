"""``CreateGate`` and ``TaskWatcher`` take the settings objects (``GenerationPolicy``,
``RunIdentity``) as ``BatchGenerator`` does; their old keyword arguments still work, each with a
``DeprecationWarning``, and give the same gate or watcher."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest

from zimage_dagster.api import AsyncZImageClient
from zimage_dagster.engine.collect import TaskWatcher
from zimage_dagster.engine.create import CreateGate
from zimage_dagster.engine.credits import CreditBudget
from zimage_dagster.engine.decide import DecisionPolicy
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.settings import GenerationPolicy, RunIdentity

BUDGET = CreditBudget(max_credits_per_run=0.5, daily_credits=2.0)


def _limits(gate: CreateGate) -> list[tuple[str, str, str | None]]:
    return [
        (limit.name, limit.setting, str(limit.counter.path) if limit.counter.path else None)
        for limit in gate._limits
    ]


def test_the_create_gate_takes_the_settings_objects(tmp_path: Path) -> None:
    ledger = TaskLedger(str(tmp_path))
    client = AsyncZImageClient(api_key="sk-test", base_url="http://127.0.0.1:9")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            new = CreateGate(
                client, ledger, "imgs", GenerationPolicy(budget=BUDGET), RunIdentity(run_id="r1")
            )
        with pytest.warns(DeprecationWarning, match=r"CreateGate\(\).*budget, run_id"):
            old = CreateGate(client, ledger, "imgs", budget=BUDGET, run_id="r1")
        assert (old.budget, old.run_id) == (new.budget, new.run_id) == (BUDGET, "r1")
        assert _limits(old) == _limits(new)
        assert [name for name, _, _ in _limits(new)] == [
            "this run's budget",
            "the daily budget of imgs",
        ]
        assert "spend-run-r1" in str(_limits(new)[0][2])
        unlimited = CreateGate(client, ledger, "imgs")
        assert (unlimited.budget.limited, unlimited.budget.preflight, unlimited.run_id) == (
            False,
            False,
            None,
        )
        with pytest.raises(TypeError, match="budgett"):
            CreateGate(client, ledger, "imgs", budgett=BUDGET)
    finally:
        asyncio.run(client.aclose())


def test_the_watcher_takes_the_policy(tmp_path: Path) -> None:
    ledger = TaskLedger(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = TaskWatcher(ledger, "imgs", GenerationPolicy(max_resubmits=5), concurrency=3)
        default = TaskWatcher(ledger, "imgs")
    with pytest.warns(DeprecationWarning, match=r"TaskWatcher\(\).*max_resubmits"):
        old = TaskWatcher(ledger, "imgs", max_resubmits=5, concurrency=3)
    assert old.policy == new.policy == DecisionPolicy(max_resubmits=5)
    assert default.policy == DecisionPolicy()
    assert (old.concurrency, new.concurrency, default.concurrency) == (3, 3, 32)
