"""The wait schedule, driven against a simulated task clock (FakeAPI on a FakeClock)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from zimage_dagster.api import (
    GenerationRequest,
    PollPolicy,
    PollSchedule,
    RetryPolicy,
    Task,
    TaskFailedError,
    UnknownTaskStatusError,
    WaitTimeoutError,
    ZImageClient,
)

from ._fakes import API, CANARY_KEY, FakeAPI, FakeClock
from .test_retries import async_client_for, client_for

REQ = GenerationRequest(prompt="a lighthouse at dusk", seed=11)


def run_wait(api: FakeAPI, **wait_kw: object) -> tuple[Task, int, float]:
    """Create a task, wait for it; return (task, polls, detection lag)."""
    with client_for(api) as client:
        task = client.create_task(REQ)
        outcome = client.wait(task, **wait_kw)  # type: ignore[arg-type]
    fake = api.tasks[task.id]
    return outcome.task, outcome.polls, api.clock.now - fake.finishes_at


LATENCIES = [6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0]


@pytest.mark.parametrize("latency", LATENCIES)
@pytest.mark.parametrize("pending_share", [0.0, 0.15, 0.3])
def test_typical_tasks_cost_two_or_three_polls_and_little_lag(
    latency: float, pending_share: float
) -> None:
    api = FakeAPI(
        FakeClock(), pending_s=latency * pending_share, processing_s=latency * (1 - pending_share)
    )
    task, polls, lag = run_wait(api)
    assert task.is_completed
    assert 1 <= polls <= 3, polls
    assert 0 <= lag < 0.1 * latency, lag
    assert api.count("GET") == polls


def test_benchmark_figures_over_the_range() -> None:
    """Mean over the 6-10 s range: about 2-3 status requests, lag well under 10 %."""
    polls_total, lag_share = 0, 0.0
    cases = [(lat, share) for lat in LATENCIES for share in (0.0, 0.1, 0.15, 0.2, 0.3)]
    for latency, share in cases:
        api = FakeAPI(FakeClock(), pending_s=latency * share, processing_s=latency * (1 - share))
        _, polls, lag = run_wait(api)
        polls_total += polls
        lag_share += lag / latency
    assert 2.0 <= polls_total / len(cases) <= 3.0
    assert lag_share / len(cases) < 0.05


def test_first_poll_is_a_fraction_of_the_estimated_time_after_create() -> None:
    api = FakeAPI(FakeClock(), pending_s=1.0, processing_s=8.0)
    seen: list[float] = []
    with client_for(api) as client:
        task = client.create_task(REQ)
        created = api.clock.now
        client.wait(task, on_poll=lambda t: seen.append(api.clock.now))
    assert seen[0] - created == pytest.approx(6.0)  # 0.6 x estimated_time (10 s)
    policy = PollPolicy(first_wait_fraction=0.3)
    api = FakeAPI(FakeClock(), pending_s=1.0, processing_s=8.0)
    seen.clear()
    with client_for(api, poll=policy) as client:
        task = client.create_task(REQ)
        created = api.clock.now
        client.wait(task, on_poll=lambda t: seen.append(api.clock.now))
    assert seen[0] - created == pytest.approx(3.0)


def test_first_wait_reads_estimated_time_from_the_task() -> None:
    clock = FakeClock()
    schedule = PollSchedule(PollPolicy(), estimated_time=20, origin=clock())
    assert schedule.next_delay(clock()) == pytest.approx(12.0)
    schedule = PollSchedule(PollPolicy(), estimated_time=None, origin=clock())
    assert schedule.next_delay(clock()) == pytest.approx(6.0)


def test_without_progress_the_interval_grows_by_half_under_the_cap() -> None:
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=40.0, report_progress=False)
    times: list[float] = []
    with client_for(api) as client:
        task = client.create_task(REQ)
        start = api.clock.now
        client.wait(task, on_poll=lambda t: times.append(api.clock.now - start))
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert times[0] == pytest.approx(6.0)
    assert gaps[:5] == [1.0, 1.5, 2.25, 3.375, 5.0]
    assert set(gaps[5:]) == {5.0}
    assert times[-1] - 40.0 <= 5.0


def test_long_task_costs_bounded_polls() -> None:
    api = FakeAPI(FakeClock(), pending_s=5.0, processing_s=115.0)
    task, polls, lag = run_wait(api)
    assert task.is_completed
    assert (
        polls <= 120 / PollPolicy().max_interval + 3
    )  # never more often than the cap once it is far
    assert lag <= 1.0


def test_stalled_progress_does_not_hammer_the_api() -> None:
    """Progress stuck at 99 %: the ETA passes, the schedule falls back to growing intervals."""
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=8.0)
    stuck_until = api.clock.now + 60.0
    real = api.task_json

    def stuck(task):  # type: ignore[no-untyped-def]
        out = real(task)
        if api.clock.now < stuck_until and out["status"] != "pending":
            out.update(status="processing", progress=99)
            out.pop("results", None)
        return out

    api.task_json = stuck  # type: ignore[method-assign]
    _, polls, _ = run_wait(api)
    assert polls <= 20


def test_wait_by_id_polls_at_once_then_follows_the_schedule() -> None:
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=8.0)
    with client_for(api) as client:
        task = client.create_task(REQ)
        api.clock.advance(2.0)
        times: list[float] = []
        outcome = client.wait(task.id, on_poll=lambda t: times.append(api.clock.now))
    assert times[0] == pytest.approx(1002.0)  # no creation time known: look at once
    assert outcome.task.is_completed
    assert outcome.polls <= 5


def test_on_poll_sees_every_status_request() -> None:
    api = FakeAPI(FakeClock(), pending_s=1.0, processing_s=8.0)
    seen: list[Task] = []
    with client_for(api) as client:
        task = client.create_task(REQ)
        outcome = client.wait(task, on_poll=seen.append)
    assert len(seen) == outcome.polls == api.count("GET")
    assert seen[-1].is_completed


def test_unknown_status_raises_instead_of_looping() -> None:
    api = FakeAPI(FakeClock(), status_override="paused")
    with client_for(api) as client:
        task = client.create_task(REQ)
        with pytest.raises(UnknownTaskStatusError) as info:
            client.wait(task)
    assert info.value.task_id == task.id
    assert info.value.status == "paused"
    assert api.count("GET") == 1


def test_deadline_raises_wait_timeout_with_task_id_and_last_status() -> None:
    api = FakeAPI(FakeClock(), pending_s=1.0, processing_s=1000.0)
    times: list[float] = []
    with client_for(api) as client:
        task = client.create_task(REQ)
        start = api.clock.now
        with pytest.raises(WaitTimeoutError) as info:
            client.wait(task, deadline=30.0, on_poll=lambda t: times.append(api.clock.now - start))
    err = info.value
    assert err.task_id == task.id
    assert err.last_status == "processing"
    assert err.elapsed == pytest.approx(30.0)
    assert times[-1] == pytest.approx(30.0)  # one last look at the deadline
    assert task.id in str(err)


def test_policy_deadline_is_the_default() -> None:
    api = FakeAPI(FakeClock(), pending_s=100.0, processing_s=10.0)
    with client_for(api, poll=PollPolicy(deadline=20.0)) as client:
        task = client.create_task(REQ)
        with pytest.raises(WaitTimeoutError) as info:
            client.wait(task)
    assert info.value.last_status == "pending"


def test_wait_outcome_splits_queued_and_generating_time() -> None:
    api = FakeAPI(FakeClock(), pending_s=2.0, processing_s=6.0)
    with client_for(api) as client:
        task = client.create_task(REQ)
        start = api.clock.now
        outcome = client.wait(task)
    elapsed = api.clock.now - start
    assert outcome.queued_s + outcome.generating_s == pytest.approx(elapsed)
    assert outcome.queued_s == pytest.approx(2.0, abs=0.5)
    assert outcome.generating_s == pytest.approx(6.0, abs=1.0)


def test_already_terminal_task_returns_without_polling() -> None:
    api = FakeAPI(FakeClock())
    done = Task.model_validate(
        {"id": "task-unified-1-abcdefgh", "status": "completed", "results": ["https://x/y.png"]}
    )
    with client_for(api) as client:
        outcome = client.wait(done)
    assert outcome.polls == 0
    assert api.requests == []


# --- failed tasks ------------------------------------------------------------------------------


def test_fixable_failure_is_raised_and_not_resubmitted() -> None:
    api = FakeAPI(
        FakeClock(), failures=[("content_policy_violation", "Blocked by safety filters.")]
    )
    with client_for(api) as client, pytest.raises(TaskFailedError) as info:
        client.generate(REQ)
    err = info.value
    assert (err.code, err.retryable) == ("content_policy_violation", False)
    assert "Blocked by safety filters." in str(err)
    assert api.count("POST") == 1
    assert err.task_id in api.tasks


def test_retryable_failure_is_resubmitted_with_the_same_seed() -> None:
    api = FakeAPI(FakeClock(), failures=[("service_error", "busy")])
    with client_for(api) as client:
        result = client.generate(REQ)
    assert result.attempts == 2
    assert len(result.task_ids) == 2
    assert api.count("POST") == 2
    seeds = {t.request["seed"] for t in api.tasks.values()}
    assert seeds == {11}


def test_unknown_failure_code_is_retried_once_only() -> None:
    api = FakeAPI(
        FakeClock(),
        failures=[("brand_new_code", "?"), ("brand_new_code", "?"), ("brand_new_code", "?")],
    )
    retry = RetryPolicy(jitter=False, max_task_attempts=5)
    with client_for(api, retry=retry) as client, pytest.raises(TaskFailedError) as info:
        client.generate(REQ)
    assert info.value.retryable is False
    assert api.count("POST") == 2


def test_wait_alone_marks_failures_for_a_first_attempt() -> None:
    api = FakeAPI(FakeClock(), failures=[("generation_timeout", "slow")])
    with client_for(api) as client:
        task = client.create_task(REQ)
        with pytest.raises(TaskFailedError) as info:
            client.wait(task)
    assert info.value.retryable is True
    assert info.value.task is not None


def test_async_wait_matches_sync() -> None:
    async def main() -> tuple[int, float]:
        api = FakeAPI(FakeClock(), pending_s=1.2, processing_s=6.8)
        async with async_client_for(api) as client:
            task = await client.create_task(REQ)
            outcome = await client.wait(task)
        return outcome.polls, api.clock.now - api.tasks[task.id].finishes_at

    api = FakeAPI(FakeClock(), pending_s=1.2, processing_s=6.8)
    _, polls, lag = run_wait(api)
    assert asyncio.run(main()) == (polls, pytest.approx(lag))


def test_real_sleep_is_the_default() -> None:
    """No injected clock: a tiny real wait still works (policy shrunk to milliseconds)."""
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=0.0)
    policy = PollPolicy(
        min_interval=0.01, initial_interval=0.01, max_interval=0.02, default_estimated_time=0.05
    )
    with ZImageClient(CANARY_KEY, base_url=API, transport=api.transport(), poll=policy) as client:
        outcome = client.wait(client.create_task(REQ).id)
    assert outcome.task.is_completed
