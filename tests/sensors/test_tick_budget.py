"""A task-status tick with thousands of pending tasks stays within its budget and resumes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import dagster as dg

from zimage_dagster.api import AsyncZImageClient, GenerationRequest
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.sensors import build_task_status_sensor

from ._support import ledger_of, make_resource, make_spec, tick

PENDING = 3000


async def _create_many(emulator: EmulatorServer, count: int) -> list[str]:
    limit = asyncio.Semaphore(64)
    async with AsyncZImageClient(emulator.api_key, base_url=emulator.url) as client:

        async def one(i: int) -> str:
            async with limit:
                task = await client.create_task(GenerationRequest(prompt=f"tile {i}", seed=i + 1))
                return task.id

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_tick_is_bounded_and_resumes_from_its_cursor(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    # Real tasks that stay pending for an hour; no image rendering, which this test is not about.
    emulator.configure(latency_s=3600, render_on_create=False)
    started = time.monotonic()
    task_ids = asyncio.run(_create_many(emulator, PENDING))
    created_s = time.monotonic() - started
    spec = make_spec(tmp_path)
    ledger = ledger_of(spec)
    for i, task_id in enumerate(task_ids):
        ledger.record_submitted(
            spec.asset_key.path,
            f"k{i:05d}",
            task_id=task_id,
            request={"prompt": f"tile {i}", "seed": i + 1},
            extra={"deferred": True, "partition_key": f"k{i:05d}"},
        )
    resource = make_resource(emulator)
    polls_before = emulator.stats()["requests"].get("task", {}).get("200", 0)

    # The budget covers the tick's own bulk read of the ledger (much slower on a loaded machine)
    # and about a second of polls.
    read_started = time.monotonic()
    assert sum(1 for _ in ledger.iter_entries(spec.asset_key.path)) == PENDING
    budget = round(1.0 + 2 * (time.monotonic() - read_started), 2)
    sensor = build_task_status_sensor(spec, "cards_job", tick_budget_s=budget, concurrency=32)
    with dg.instance_for_test() as instance:
        t0 = time.monotonic()
        first = tick(sensor, instance, resource)
        first_s = time.monotonic() - t0
        assert first.cursor is not None
        after_first = json.loads(first.cursor)["after"]
        polls_first = emulator.stats()["requests"]["task"]["200"] - polls_before
        assert 0 < polls_first < PENDING
        assert first_s < budget * 1.5, f"tick took {first_s:.2f} s for a {budget} s budget"

        second = tick(sensor, instance, resource, first.cursor)
        assert second.cursor is not None
        after_second = json.loads(second.cursor)["after"]
        assert after_second > after_first  # the next tick went on from where the first stopped
        polls_second = emulator.stats()["requests"]["task"]["200"] - polls_before - polls_first
        assert polls_second > 0

        # With room enough, one tick polls them all and the cursor resets. (On a loaded machine
        # a roomy tick may still run out of time: it then resumes, until one tick got them all.)
        roomy = build_task_status_sensor(spec, "cards_job", tick_budget_s=120, concurrency=32)
        cursor = second.cursor
        for _ in range(3):
            polls_start = emulator.stats()["requests"]["task"]["200"]
            t0 = time.monotonic()
            full = tick(roomy, instance, resource, cursor)
            full_s = time.monotonic() - t0
            polls_full = emulator.stats()["requests"]["task"]["200"] - polls_start
            if full.cursor is None:
                break
            cursor = full.cursor
    assert full.cursor is None
    assert polls_full == PENDING
    assert not full.run_requests
    print(
        f"\n{PENDING} pending tasks: created in {created_s:.1f} s; {budget} s-budget ticks "
        f"polled {polls_first} then {polls_second} ({first_s:.2f} s for the first); "
        f"a full tick polled all {PENDING} in {full_s:.2f} s"
    )
