"""The wait schedule, driven against a simulated task clock (FakeAPI on a FakeClock)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from zimage_dagster.api import (
    GenerationRequest,
    LatencyModel,
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


def run_sequence(
    latencies: list[float], pending_share: float, trip_s: float = 0.0, **client_kw: object
) -> list[tuple[int, float]]:
    """One client waits on tasks of these latencies, one after the other; (polls, lag) of each
    (``trip_s``: one-way network time of every call)."""
    api = FakeAPI(FakeClock(), trip_s=trip_s)
    out: list[tuple[int, float]] = []
    with client_for(api, **client_kw) as client:
        for latency in latencies:
            api.pending_s, api.processing_s = latency * pending_share, latency * (1 - pending_share)
            task = client.create_task(REQ)
            outcome = client.wait(task)
            assert outcome.task.is_completed
            out.append((outcome.polls, api.clock.now - api.tasks[task.id].finishes_at))
        assert api.count("GET") == sum(polls for polls, _ in out)
    return out


def shuffled(values: list[float], seed: int, times: int = 2) -> list[float]:
    out = values * times
    random.Random(seed).shuffle(out)
    return out


@pytest.mark.parametrize("pending_share", [0.0, 0.15, 0.3])
def test_a_client_that_has_seen_tasks_finds_typical_ones_in_two_or_three_polls(
    pending_share: float,
) -> None:
    latencies = shuffled(LATENCIES, seed=3)
    results = run_sequence(latencies, pending_share)
    cold_polls, cold_lag = results[0]
    assert cold_polls <= 5  # nothing learned yet: seeded by the announced 10 s
    assert 0 <= cold_lag < 0.1 * latencies[0]
    for (polls, lag), latency in zip(results[3:], latencies[3:], strict=True):
        assert 1 <= polls <= 3, (latency, polls)
        assert 0 <= lag < 0.05 * latency, (latency, lag)
    late = results[len(results) // 2 :]
    assert sum(lag for _, lag in late) / len(late) < 0.1


def test_benchmark_figures_over_the_range() -> None:
    """Mean over the 6-10 s range, once learned: about 2 status requests, lag about 1 %."""
    polls_total, lag_share, count = 0, 0.0, 0
    for share in (0.0, 0.1, 0.15, 0.2, 0.3):
        latencies = shuffled(LATENCIES, seed=int(share * 100))
        for (polls, lag), latency in list(
            zip(run_sequence(latencies, share), latencies, strict=True)
        )[3:]:
            polls_total += polls
            lag_share += lag / latency
            count += 1
    assert 1.5 <= polls_total / count <= 2.5
    assert lag_share / count < 0.02


def test_fast_tasks_are_found_fast_though_the_estimate_says_10_s() -> None:
    """Tasks of 1.5-3 s announced as 10 s: seen finished within ~0.1 s once a few were seen."""
    rng = random.Random(7)
    latencies = [rng.uniform(1.5, 3.0) for _ in range(30)]
    results = run_sequence(latencies, 0.15)
    assert results[0][1] < 0.5  # the first, cold, is looked at after 1 s (0.1 x 10 s)
    warm = results[3:]
    assert max(lag for _, lag in warm) < 0.15
    assert sum(polls for polls, _ in warm) / len(warm) <= 2.5


@pytest.mark.parametrize("trip_s", [0.05, 0.1])
def test_readings_are_timed_at_the_middle_of_their_round_trip(trip_s: float) -> None:
    """A status answer tells the task's state when the server made it, half a round trip before
    it arrives. Timed at its arrival, every estimate of the finish is late by about a trip (and
    more, scaled up from an early reading): then the final look is wasted time on every task.
    The final poll is sent ``eta_margin`` after the estimated finish; it reaches the server one
    trip later and its answer comes back after another: that, and no more, is the lag."""
    rng = random.Random(11)
    latencies = [rng.uniform(1.5, 3.0) for _ in range(30)]
    margin = PollPolicy().eta_margin
    warm = run_sequence(latencies, 0.15, trip_s=trip_s)[3:]
    mean_lag = sum(lag for _, lag in warm) / len(warm)
    assert mean_lag < margin + 2 * trip_s + 0.025, mean_lag
    assert sum(polls for polls, _ in warm) / len(warm) <= 2.5


def test_a_reading_whose_estimate_already_passed_gets_one_quick_look() -> None:
    """A first reading at 99 % can place the finish before its own answer came back. The task
    is all but done: look again once its progress should have moved a point, not after a blind
    interval (0.8 s here, half the task's length)."""
    model = LatencyModel()
    for duration in (1.6, 2.0, 2.4):
        model.record(duration=duration, pending_share=0.15)
    policy = PollPolicy()
    schedule = PollSchedule(policy, estimated_time=10, origin=0.0, model=model)
    schedule.observe(0.0, Task.model_validate({"id": "t", "status": "pending"}))
    assert schedule.next_delay(0.0) > 1.0  # the first look, placed by the durations learned
    schedule.observe(1.51, Task.model_validate({"id": "t", "status": "processing", "progress": 99}))
    eta = schedule.eta()
    assert eta is not None
    assert eta + policy.eta_margin < 1.61
    assert schedule.next_delay(1.61) == policy.min_interval


def test_first_poll_is_seeded_by_the_estimate_then_placed_by_what_was_seen() -> None:
    api = FakeAPI(FakeClock(), pending_s=1.0, processing_s=7.0)
    seen: list[float] = []
    with client_for(api) as client:
        for i in range(10):
            seen.clear()
            task = client.create_task(REQ)
            created = api.clock.now
            client.wait(task, on_poll=lambda t, c=created: seen.append(api.clock.now - c))  # type: ignore[misc]
            if i == 0:
                assert seen[0] == pytest.approx(1.0)  # 0.1 x estimated_time (10 s)
    # learned from 9 tasks of 8 s: the first look at 0.9 x 8 s (x 9/10, few samples), then done
    assert seen[0] == pytest.approx(0.9 * 8.0 * 9 / 10, abs=0.1)
    assert len(seen) == 2
    policy = PollPolicy(first_wait_fraction=0.3)
    api = FakeAPI(FakeClock(), pending_s=1.0, processing_s=8.0)
    seen.clear()
    with client_for(api, poll=policy) as client:
        task = client.create_task(REQ)
        created = api.clock.now
        client.wait(task, on_poll=lambda t: seen.append(api.clock.now - created))
    assert seen[0] == pytest.approx(3.0)


def test_a_policy_that_does_not_learn_keeps_the_seeded_first_poll() -> None:
    api = FakeAPI(FakeClock(), pending_s=1.0, processing_s=7.0)
    firsts: list[float] = []
    with client_for(api, poll=PollPolicy(learn=False, first_wait_fraction=0.6)) as client:
        for _ in range(3):
            task = client.create_task(REQ)
            created = api.clock.now
            polls: list[float] = []
            client.wait(task, on_poll=lambda t, c=created, p=polls: p.append(api.clock.now - c))  # type: ignore[misc]
            firsts.append(polls[0])
    assert firsts == pytest.approx([6.0, 6.0, 6.0])


def test_first_wait_reads_estimated_time_from_the_task() -> None:
    clock = FakeClock()
    schedule = PollSchedule(PollPolicy(), estimated_time=20, origin=clock())
    assert schedule.next_delay(clock()) == pytest.approx(2.0)
    schedule = PollSchedule(PollPolicy(), estimated_time=None, origin=clock())
    assert schedule.next_delay(clock()) == pytest.approx(1.0)


def test_without_progress_the_interval_grows_by_half_under_the_cap() -> None:
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=40.0, report_progress=False)
    times: list[float] = []
    with client_for(api) as client:
        task = client.create_task(REQ)
        start = api.clock.now
        client.wait(task, on_poll=lambda t: times.append(api.clock.now - start))
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert times[0] == pytest.approx(1.0)
    assert gaps[:5] == [1.0, 1.5, 2.25, 3.375, 5.0]
    assert set(gaps[5:]) == {5.0}
    assert times[-1] - 40.0 <= 5.0


def test_without_progress_learned_durations_place_the_next_look() -> None:
    """A server that reports no progress: the durations seen still tell when to look."""
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=12.0, report_progress=False)
    results: list[tuple[int, float]] = []
    with client_for(api) as client:
        for _ in range(4):
            task = client.create_task(REQ)
            outcome = client.wait(task)
            results.append((outcome.polls, api.clock.now - api.tasks[task.id].finishes_at))
    cold_lag, learned_lag = results[0][1], results[-1][1]
    assert results[-1][0] <= 4  # the first look near 12 s, then the usual durations
    assert learned_lag < 1.0 < cold_lag


def test_long_task_costs_bounded_polls() -> None:
    api = FakeAPI(FakeClock(), pending_s=5.0, processing_s=115.0)
    task, polls, lag = run_wait(api)
    assert task.is_completed
    # never more often than the cap once it is far (a cold client also looks at 1, 2 and 3.5 s,
    # and once more within the last point of progress)
    assert polls <= 120 / PollPolicy().max_interval + 5
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
