"""Benchmark 2, polling cost: status requests per task and detection lag.

For tasks of 2, 6 and 10 s (the emulator announces ``estimated_time`` 10, as the real API does),
``N`` tasks per policy are created (staggered over a second) and waited on with
``AsyncZImageClient.wait``:

- **adaptive**: the client's default :class:`~zimage_dagster.api.PollPolicy` (first poll at
  0.6 x the estimate, then progress ETA, then a growing interval);
- **fixed 0.5 s** and **fixed 5 s** (the baselines): a status request right after the create, then
  one every 0.5 s / 5 s.

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

LATENCIES = (2.0, 6.0, 10.0)
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
    )


POLICIES: dict[str, PollPolicy] = {
    "adaptive": PollPolicy(),
    "fixed 0.5 s": fixed(0.5),
    "fixed 5 s": fixed(5.0),
}


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


async def _measure(url: str, key: str, n: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(1)
    clients = {
        name: AsyncZImageClient(key, base_url=url, poll=policy) for name, policy in POLICIES.items()
    }
    try:
        jobs = {
            name: [_one(clients[name], name, i, rng.uniform(0.0, 1.0)) for i in range(n)]
            for name in POLICIES
        }
        done = await asyncio.gather(*(asyncio.gather(*js) for js in jobs.values()))
        return dict(zip(jobs, done, strict=True))
    finally:
        for client in clients.values():
            await client.aclose()


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 4 if quick else 16
    res = BenchResult(NAME, TITLE)
    table = [
        "| task latency | policy | status requests / task | detection lag, mean | lag, max "
        "| lag / latency | requests vs fixed 0.5 s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    details: dict[str, Any] = {}
    for latency in LATENCIES:
        with emulator(latency_s=latency, estimated_time=10, render_on_create=False) as emu:
            measured = asyncio.run(_measure(emu.url, emu.api_key, n))
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
        details[f"{latency:g}s"] = {**summary, "status_requests_served": served}
        if served != total_polls:
            res.notes.append(
                f"{latency:g} s: the emulator served {served} status requests, the clients "
                f"counted {total_polls}."
            )
        base = summary["fixed 0.5 s"]
        for name, s in summary.items():
            table.append(
                f"| {latency:g} s | {name} | {s['requests']:.2f} | {s['lag_mean']:.2f} s | "
                f"{s['lag_max']:.2f} s | {s['lag_mean'] / latency:.1%} | "
                f"{s['requests'] / base['requests']:.2f} |"
            )
        ours = summary["adaptive"]
        targeted = latency >= 6
        res.add(
            f"{latency:g} s tasks: status requests / task, adaptive",
            ours["requests"],
            "req",
            base["requests"],
            "fixed 0.5 s",
            f"value <= {TARGET_REQUESTS:g}" if targeted else "",
            (ours["requests"] <= TARGET_REQUESTS) if targeted else None,
            target_on="value",
        )
        res.add(
            f"{latency:g} s tasks: detection lag, adaptive (mean)",
            ours["lag_mean"],
            "s",
            latency,
            "task latency",
            f"<= {TARGET_LAG_SHARE:.0%} of latency" if targeted else "",
            (ours["lag_mean"] <= TARGET_LAG_SHARE * latency) if targeted else None,
        )
        res.add(
            f"{latency:g} s tasks: detection lag, fixed 5 s (mean)",
            summary["fixed 5 s"]["lag_mean"],
            "s",
            latency,
            "task latency",
        )
    res.sections.append("\n".join(table))
    res.notes.append(
        f"{n} tasks per policy and latency, created at random offsets within 1 s; all three "
        "policies run at once against one emulator process per latency."
    )
    res.notes.append(
        "With a fixed latency the adaptive first poll (0.6 x 10 s = 6 s) lands exactly on a 6 s "
        "task's end: 6 s is its best case; 2 s tasks announced as 10 s are its worst (seen ~4 s "
        "late: the provider's estimate is what it trusts first)."
    )
    res.details = details
    return res
