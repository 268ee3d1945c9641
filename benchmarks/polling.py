"""Benchmark 2, polling cost: status requests per task and detection lag.

For each latency regime (the emulator draws every task's latency uniformly in 1.5-3 s, 3-12 s or
6-10 s; it announces ``estimated_time`` 10 s for all, as the real API does), ``N`` tasks per
policy are created at random times over twice the longest latency (work arriving as it does in a
batch: later tasks are created while earlier ones finish) and waited on with
``AsyncZImageClient.wait``, one client per policy:

- **adaptive**: the client's default :class:`~zimage_dagster.api.PollPolicy`: learns the
  durations of the tasks it saw finish (seeded by the announcement), places the first poll just
  before the shortest usual task would end, then reads the task's progress;
- **fixed 1 s** (the hand-written loop's) and **fixed 5 s** (the baselines): a status request
  right after the create, then one every 1 s / 5 s.

Requests per task = the status requests ``wait`` made (checked against the emulator's count).
Detection lag = the wall-clock time at which the client received the terminal answer minus the
task's completion time (``end_at`` from the emulator's ``/_emulator/tasks``; same machine, same
clock).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from benchmarks._common import BenchResult, emulator
from zimage_dagster.api import AsyncZImageClient, GenerationRequest, PollPolicy, Task

NAME = "polling"
TITLE = "2. Polling cost (adaptive PollPolicy vs fixed intervals)"

REGIMES: tuple[tuple[float, float], ...] = ((1.5, 3.0), (3.0, 12.0), (6.0, 10.0))
TARGET_REQUESTS = 3.0
TARGET_LAG_SHARE = 0.10


def fixed(interval: float) -> PollPolicy:
    return PollPolicy(
        first_wait_fraction=0.0,
        min_interval=interval,
        initial_interval=interval,
        max_interval=interval,
        growth=1.0,
        use_progress_eta=False,
        learn=False,
    )


POLICIES: dict[str, PollPolicy] = {
    "adaptive": PollPolicy(),
    "fixed 1 s": fixed(1.0),
    "fixed 5 s": fixed(5.0),
}
BASELINE = "fixed 1 s"


async def _one(
    client: AsyncZImageClient, policy_name: str, index: int, delay: float
) -> dict[str, Any]:
    await asyncio.sleep(delay)
    task = await client.create_task(
        GenerationRequest(prompt=f"poll benchmark {policy_name} {index}", seed=index + 1)
    )
    seen: list[float] = []

    def on_poll(_: Task) -> None:
        seen.append(time.time())

    outcome = await client.wait(task, on_poll=on_poll)
    return {"id": task.id, "polls": outcome.polls, "detected_at": seen[-1] if seen else time.time()}


async def _measure(url: str, key: str, n: int, spread_s: float) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(1)
    clients = {
        name: AsyncZImageClient(key, base_url=url, poll=policy) for name, policy in POLICIES.items()
    }
    try:
        jobs = {
            name: [_one(clients[name], name, i, rng.uniform(0.0, spread_s)) for i in range(n)]
            for name in POLICIES
        }
        done = await asyncio.gather(*(asyncio.gather(*js) for js in jobs.values()))
        return dict(zip(jobs, done, strict=True))
    finally:
        for client in clients.values():
            await client.aclose()


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 8 if quick else 48
    res = BenchResult(NAME, TITLE)
    table = [
        "| task latency | policy | status requests / task | detection lag, mean | lag, max "
        f"| lag / mean latency | requests vs {BASELINE} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    details: dict[str, Any] = {}
    for regime in REGIMES:
        label = f"{regime[0]:g}-{regime[1]:g} s"
        mean_latency = (regime[0] + regime[1]) / 2
        with emulator(
            latency_range_s=list(regime), estimated_time=10, render_on_create=False
        ) as emu:
            measured = asyncio.run(_measure(emu.url, emu.api_key, n, spread_s=2 * regime[1]))
            end_at = {t["id"]: t["end_at"] for t in emu.tasks()}
            served = emu.stats()["requests"].get("task", {}).get("200", 0)
        summary: dict[str, dict[str, float]] = {}
        for name, items in measured.items():
            lags = [item["detected_at"] - end_at[item["id"]] for item in items]
            summary[name] = {
                "requests": statistics.mean(item["polls"] for item in items),
                "lag_mean": statistics.mean(lags),
                "lag_max": max(lags),
            }
        total_polls = sum(item["polls"] for items in measured.values() for item in items)
        details[label] = {**summary, "status_requests_served": served}
        if served != total_polls:
            res.notes.append(
                f"{label}: the emulator served {served} status requests, the clients "
                f"counted {total_polls}."
            )
        base = summary[BASELINE]
        for name, s in summary.items():
            table.append(
                f"| {label} | {name} | {s['requests']:.2f} | {s['lag_mean']:.2f} s | "
                f"{s['lag_max']:.2f} s | {s['lag_mean'] / mean_latency:.1%} | "
                f"{s['requests'] / base['requests']:.2f} |"
            )
        ours = summary["adaptive"]
        res.add(
            f"{label} tasks: status requests / task, adaptive",
            ours["requests"],
            "req",
            base["requests"],
            BASELINE,
            f"value <= {TARGET_REQUESTS:g}",
            ours["requests"] <= TARGET_REQUESTS,
            target_on="value",
        )
        res.add(
            f"{label} tasks: detection lag, adaptive (mean)",
            ours["lag_mean"],
            "s",
            mean_latency,
            "mean task latency",
            f"<= {TARGET_LAG_SHARE:.0%} of latency",
            ours["lag_mean"] <= TARGET_LAG_SHARE * mean_latency,
        )
        res.add(
            f"{label} tasks: detection lag, {BASELINE} (mean)",
            base["lag_mean"],
            "s",
            mean_latency,
            "mean task latency",
        )
    res.sections.append("\n".join(table))
    res.notes.append(
        f"{n} tasks per policy and regime, created at random times over twice the longest "
        "latency; all three policies run at once against one emulator process per regime. The "
        "adaptive client's first tasks are placed by the announcement alone (0.1 x 10 s), the "
        "later ones by what it learned."
    )
    res.details = details
    return res
