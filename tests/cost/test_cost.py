"""Cost you can see and cap (issue 15), against the emulator's billing and with real Dagster runs.

Budgets (run, daily, balance preflight), the provider's 402 mid-batch, the usage metadata and its
sums against ``/_emulator/stats`` and ``/v1/credits``, the balance asset and its check, and the
resource used directly. Every test counts the emulator's tasks: a refused run must create none.
"""

import asyncio
import multiprocessing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from dagster.components.testing import create_defs_folder_sandbox
from upath import UPath

from tests.component._support import loaded, write_component
from tests.dagster import _support as support
from tests.dagster._support import make_fast, materializations, resource_for, rows, values
from zimage_dagster import build_image_assets
from zimage_dagster.api import AsyncZImageClient, GenerationRequest
from zimage_dagster.balance import BALANCE_CHECK
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.atomic import conditional_files
from zimage_dagster.engine.batch import BatchGenerator
from zimage_dagster.engine.collect import TaskWatcher
from zimage_dagster.engine.credits import DAY_S, CreditBudget, SpendCounter, to_micro
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.submit import submit_jobs
from zimage_dagster.ops import build_generate_images_op
from zimage_dagster.prompts import PromptRow
from zimage_dagster.resource import ZImageResource

PRICE = 0.026  # the emulator's credits_reserved per task (the provider's documented example)


def _used_credits(emulator: EmulatorServer) -> float:
    answer = httpx.get(
        f"{emulator.url}/v1/credits",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        trust_env=False,
    )
    used: float = answer.json()["data"]["token"]["used_credits"]
    return used


def _usage_events(instance: dg.DagsterInstance, key: str) -> list[dict[str, Any]]:
    """The run-level usage observations of the asset (one per step)."""
    records = instance.fetch_observations(dg.AssetKey(key), limit=100).records
    out = []
    for record in records:
        observation = record.asset_observation
        assert observation is not None
        if "zimage.tasks_created" in observation.metadata:
            out.append(values(observation.metadata))
    return out


def _failed(result: dg.ExecuteInProcessResult) -> Mapping[str, str]:
    """``partition -> "code: message"`` of the step's failure."""
    failure = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][-1]
    data = failure.step_failure_data
    assert data.user_failure_data is not None
    failed: Mapping[str, str] = data.user_failure_data.metadata["failed_partitions"].value  # type: ignore[assignment]
    return failed


def _retries(result: dg.ExecuteInProcessResult) -> int:
    return sum(
        1 for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    )


# -- budgets ----------------------------------------------------------------------------------------


def test_a_balance_too_small_refuses_the_run_before_any_task(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, initial_credits=0.05)  # 4 tasks need 0.104
    asset = support.image_asset(build_image_assets("imgs", rows(4), storage=tmp_path))
    with dg.DagsterInstance.ephemeral() as instance:
        result = support.run_range(asset, instance, resource_for(emulator), "p0", "p3")
        assert not result.success
        assert emulator.stats()["tasks_created"] == 0
        message = support.failure_message(result)
        assert "budget_refused" in message
        assert "the account's balance (0.05 credits)" in message
        assert "4 task(s) x 0.026 = 0.104 credits" in message
        assert _retries(result) == 0  # not retryable, though the asset has a retry policy
        assert materializations(instance, "imgs") == {}


@pytest.mark.parametrize("mode", ["blocking", "deferred"])
def test_a_budget_of_n_tasks_creates_exactly_n_and_fails_the_rest(
    emulator: EmulatorServer, tmp_path: Path, mode: str
) -> None:
    make_fast(emulator)
    asset = support.image_asset(
        build_image_assets(
            "imgs",
            rows(5),
            storage=tmp_path,
            mode=mode,
            max_credits_per_run=3 * PRICE,
            over_budget="fit",
        )
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = support.run_range(asset, instance, resource_for(emulator), "p0", "p4")
        assert not result.success
        assert emulator.stats()["tasks_created"] == 3
        failed = _failed(result)
        assert len(failed) == 2
        for message in failed.values():
            assert message.startswith("budget_reached: this run's budget")
            assert "max_credits_per_run 0.078 credits; 0.078 spent so far" in message
        assert _retries(result) == 0
        (usage,) = _usage_events(instance, "imgs")
        assert usage["zimage.tasks_created"] == 3
        assert to_micro(usage["zimage.credits_reserved"]) == to_micro(3 * PRICE)
        if mode == "blocking":
            assert len(materializations(instance, "imgs")) == 3
        # The run's budget is the run's: a step retry in it would find it spent (the counter
        # lives in the ledger's storage, keyed by run).
        ledger = TaskLedger(tmp_path)
        assert sum(1 for e in ledger.iter_entries("imgs") if e.credits_reserved == PRICE) == 3


def test_the_daily_budget_holds_across_runs(emulator: EmulatorServer, tmp_path: Path) -> None:
    make_fast(emulator)
    asset = support.image_asset(
        build_image_assets(
            "imgs", rows(3), storage=tmp_path, daily_credits=2 * PRICE, over_budget="fit"
        )
    )
    with dg.DagsterInstance.ephemeral() as instance:
        assert support.run_range(asset, instance, resource_for(emulator), "p0", "p0").success
        second = support.run_range(asset, instance, resource_for(emulator), "p1", "p2")
        assert not second.success
    assert emulator.stats()["tasks_created"] == 2
    (message,) = _failed(second).values()
    assert "the daily budget of imgs (daily_credits 0.052 credits in any 24 h" in message


def test_the_op_refuses_a_run_over_its_budget(emulator: EmulatorServer, tmp_path: Path) -> None:
    make_fast(emulator)
    op = build_generate_images_op(asset_key="op_imgs", storage=tmp_path, max_credits_per_run=0.05)

    @dg.job(resource_defs={"zimage": resource_for(emulator)})
    def images() -> None:
        op(dg.op(name="rows", out=dg.Out(list))(lambda: rows(3))())

    result = images.execute_in_process(raise_on_error=False)
    assert not result.success
    assert emulator.stats()["tasks_created"] == 0
    assert "max_credits_per_run 0.05 credits" in support.failure_message(result)


# -- the provider's 402 ---------------------------------------------------------------------------


def test_402_mid_batch_stops_creating_collects_the_live_tasks_and_is_not_retried(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, latency_s=0.5, initial_credits=0.06)  # two tasks, then 402
    asset = support.image_asset(
        build_image_assets("imgs", rows(6), storage=tmp_path, credits_preflight=False)
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = support.run_range(
            asset, instance, resource_for(emulator, concurrency=3), "p0", "p5"
        )
        assert not result.success
        stats = emulator.stats()
        assert stats["tasks_created"] == 2
        # One create answered 402; none was sent after it (the three first went at once).
        assert stats["requests"]["create"] == {"200": 2, "402": 1}
        assert len(materializations(instance, "imgs")) == 2  # the live tasks were collected
        failed = _failed(result)
        assert len(failed) == 4
        assert all("insufficient_quota" in m for m in failed.values())
        assert all("top up" in m for m in failed.values())  # the provider's message
        assert _retries(result) == 0


# -- usage metadata = the emulator's billing --------------------------------------------------------


def test_usage_metadata_sums_equal_the_emulators_billing_failed_and_resubmitted_included(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    # p0: its first task fails (service_error) and is resubmitted; p1 is refused by moderation
    # (no draw). The emulator refunds failed tasks.
    make_fast(
        emulator,
        failure_rates={"service_error": 0.5},
        random_seed=support.seed_failing_then_passing(0.5, [True, False]),
    )
    dataset = [
        {"key": "p0", "prompt": "a lighthouse in the fog", "size": "376x376"},
        {"key": "p1", "prompt": "a forbidden thing", "size": "376x376"},
    ]
    asset = support.image_asset(
        build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=None)
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = support.run_range(asset, instance, resource_for(emulator), "p0", "p1")
        assert not result.success
        (p0,) = materializations(instance, "imgs")["p0"]
        md = values(p0)
        assert md["zimage.tasks"] == 2
        assert md["zimage.credits_image"] == PRICE
        assert md["zimage.credits_earlier_tasks"] == PRICE
        (usage,) = _usage_events(instance, "imgs")
    stats = emulator.stats()
    assert stats["tasks_created"] == usage["zimage.tasks_created"] == 3
    failed_p1 = TaskLedger(tmp_path).get("imgs", "p1")
    assert failed_p1 is not None
    assert failed_p1.credits_reserved == PRICE
    reserved = to_micro(md["zimage.credits_total"]) + to_micro(failed_p1.credits_reserved)
    assert reserved == to_micro(usage["zimage.credits_reserved"]) == 3 * to_micro(PRICE)
    assert usage["zimage.tasks_failed"] == 2
    billed = to_micro(usage["zimage.credits_reserved"]) - to_micro(usage["zimage.credits_failed"])
    assert billed == to_micro(_used_credits(emulator)) == to_micro(stats["credits_used"])


def test_the_resource_used_directly_records_the_same_usage(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)

    @dg.asset
    def hero(context: dg.AssetExecutionContext, zimage: ZImageResource) -> None:
        with zimage.metered_client(context) as client:
            for seed in (1, 2):
                client.generate(GenerationRequest(prompt="a lighthouse", size="376x376", seed=seed))

    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(
            [hero], instance=instance, resources={"zimage": resource_for(emulator)}
        ).success
        (record,) = instance.fetch_materializations(dg.AssetKey("hero"), limit=5).records
        assert record.asset_materialization is not None
        md = values(record.asset_materialization.metadata)
    assert md["zimage.tasks_created"] == emulator.stats()["tasks_created"] == 2
    assert to_micro(md["zimage.credits_reserved"]) == to_micro(_used_credits(emulator))


# -- the balance as data ----------------------------------------------------------------------------


def test_the_balance_asset_records_the_credits_and_warns_below_the_threshold(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, initial_credits=1.0)
    defs = build_image_assets(
        "imgs", rows(1), storage=tmp_path, balance_asset=True, balance_warn_below=0.99
    )
    job = dg.Definitions.merge(
        defs, dg.Definitions(resources={"zimage": resource_for(emulator)})
    ).resolve_job_def("imgs_credits_job")  # what the balance sensor launches
    with dg.DagsterInstance.ephemeral() as instance:
        first = job.execute_in_process(instance=instance)
        images = next(
            a
            for a in defs.assets or ()
            if isinstance(a, dg.AssetsDefinition) and dg.AssetKey("imgs") in a.keys
        )
        assert support.run_range(images, instance, resource_for(emulator), "p0", "p0").success
        second = job.execute_in_process(instance=instance)
        observations = instance.fetch_observations(dg.AssetKey("imgs_credits"), limit=10).records
    checks = [
        [(e.check_name, e.passed, e.severity) for e in r.get_asset_check_evaluations()]
        for r in (first, second)
    ]
    assert checks == [
        [(BALANCE_CHECK, True, dg.AssetCheckSeverity.WARN)],
        [(BALANCE_CHECK, False, dg.AssetCheckSeverity.WARN)],
    ]
    remaining = sorted(
        values(r.asset_observation.metadata)["zimage.credits_remaining"]  # type: ignore[union-attr]
        for r in observations
    )
    assert [to_micro(x) for x in remaining] == [to_micro(1.0 - PRICE), to_micro(1.0)]
    assert sorted(s.name for s in defs.sensors or ()) == [
        "imgs_credits_sensor",
        "imgs_review_sensor",
    ]


def test_budget_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="over_budget"):
        CreditBudget(over_budget="maybe")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="balance_warn_below needs balance_asset"):
        build_image_assets("imgs", ["a fox"], balance_warn_below=5)


def test_the_component_caps_a_run_like_the_factory(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_fast(emulator)
    monkeypatch.setenv("COST_BASE_URL", emulator.url)
    monkeypatch.setenv("COST_API_KEY", emulator.api_key)
    attributes = {
        "asset_name": "posters",
        "prompts": "prompts.csv",
        "default_size": "376x376",
        "storage": str(tmp_path / "images"),
        "retry": None,
        "max_credits_per_run": 2 * PRICE,
        "over_budget": "fit",
        "resource": {"api_key": "{{ env.COST_API_KEY }}", "base_url": "{{ env.COST_BASE_URL }}"},
    }
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, attributes, requirements=["COST_API_KEY"])
        with loaded(sandbox, path) as (_, defs), dg.instance_for_test() as instance:
            result = defs.resolve_job_def("posters_job").execute_in_process(
                instance=instance,
                raise_on_error=False,
                tags={
                    "dagster/asset_partition_range_start": "fox",
                    "dagster/asset_partition_range_end": "poster",
                },
            )
    assert emulator.stats()["tasks_created"] == 2
    (message,) = _failed(result).values()
    assert message.startswith("budget_reached: this run's budget (max_credits_per_run 0.052")


def test_a_resubmission_past_the_budget_is_refused_mid_run(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    # The estimate (one task) fits; the task fails with a retryable error, and the resubmission
    # would pass the budget: no second task, the partition fails "budget reached".
    make_fast(emulator, failure_rates={"service_error": 1.0})
    asset = support.image_asset(
        build_image_assets("imgs", rows(1), storage=tmp_path, max_credits_per_run=PRICE)
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = support.run_range(asset, instance, resource_for(emulator), "p0", "p0")
    assert emulator.stats()["tasks_created"] == 1
    (message,) = _failed(result).values()
    assert "budget_reached" in message
    assert "0.026 spent so far" in message
    assert _retries(result) == 0


def _spend(root: str, n: int) -> int:
    """``n`` tries to spend 1 micro-credit of a shared daily budget of 25; how many succeeded."""
    files = conditional_files(UPath(root))
    counter = SpendCounter(files, UPath(root) / "spend.json", window_s=DAY_S)
    return sum(counter.try_add(1, limit=25) is not None for _ in range(n))


def test_a_shared_budget_holds_across_processes(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        won = pool.starmap(_spend, [(str(tmp_path), 10)] * 4)
    assert sum(won) == 25
    counter = SpendCounter(conditional_files(UPath(tmp_path)), UPath(tmp_path) / "spend.json")
    assert counter.spent() == 25


def test_the_collect_runs_resubmissions_stop_at_the_first_402(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Deferred mode: the task-status tick creates nothing (it hands the failed tasks to a collect
    run); the collect run's resubmissions go through the one create gate, so the provider's
    first 402 stops them."""
    make_fast(emulator, failure_rates={"service_error": 1.0})
    ledger = TaskLedger(tmp_path)
    jobs = [
        ImageJob.from_row(
            PromptRow(f"p{i}", f"a kite, number {i}", "376x376", i + 1, None), seed=i + 1
        )
        for i in range(3)
    ]

    async def go() -> Any:
        async with AsyncZImageClient(api_key=emulator.api_key, base_url=emulator.url) as client:
            submitted = await submit_jobs(client, ledger, "imgs", jobs)
            assert len(submitted.submitted) == 3
            emulator.advance_clock(5)  # every task has failed (and been refunded)
            emulator.configure(initial_credits=0.0, failure_rates={})
            tick = await TaskWatcher(ledger, "imgs", concurrency=1).tick(client)
            assert emulator.stats()["requests"]["create"] == {"200": 3}  # the tick made none
            (batch,) = tick.batches
            assert sorted(batch.partitions) == ["p0", "p1", "p2"]
            collect = BatchGenerator(
                client,
                ledger.store,
                ledger,
                "imgs",
                concurrency=1,
                ledger_extra={"deferred": True, "collect_batch": batch.batch_id},
            )
            return await collect.run(jobs)

    report = asyncio.run(go())
    assert emulator.stats()["requests"]["create"] == {"200": 3, "402": 1}
    assert len(report.failures) == 3
    assert all(f.code == "insufficient_quota" for f in report.failures)
    assert all(e.credits_reserved == PRICE for e in ledger.iter_entries("imgs"))
