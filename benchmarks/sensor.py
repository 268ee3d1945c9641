"""Benchmark 5, sensor scale: one tick of the task-status sensor over 5,000 pending tasks.

Setup (not timed): 5,000 real tasks on the emulator (its own process; 10-minute latency, so all
are still pending/processing during the tick), submitted in deferred mode (``submit_jobs``: each
task ID in the ledger, flagged deferred), on a local store.

Timed: one evaluation of the sensor from :func:`zimage_dagster.sensors.build_task_status_sensor`
(``build_sensor_context`` with the resource; default settings: 32 status requests in flight,
30 s tick budget): it reads the ledger, polls every open task, answers. Baseline in the same run:
listing and reading the 5,000 ledger entries alone (``TaskLedger.iter_entries``), and one bare
``httpx`` GET of each of the 5,000 tasks with the same 32 in flight (what the polling itself costs
this machine's Python, with no plugin code).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

import dagster as dg
import httpx

from benchmarks._common import BenchResult, emulator, prompt_rows
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.engine.submit import submit_jobs
from zimage_dagster.prompts import load_prompts
from zimage_dagster.resource import ZImageResource
from zimage_dagster.sensors import build_task_status_sensor
from zimage_dagster.spec import ImageAssetSpec

NAME = "sensor"
TITLE = "5. Sensor scale (one task-status tick over 5,000 pending tasks)"
TARGET_S = 15.0
TICK_BUDGET_S = 30.0  # the sensor's default tick budget


async def _raw_polls(url: str, key: str, task_ids: list[str], concurrency: int = 32) -> float:
    """Seconds for one bare ``httpx`` GET of every task, ``concurrency`` in flight."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    source = iter(task_ids)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            for task_id in source:
                (await client.get(f"/v1/tasks/{task_id}")).raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 500 if quick else 5000
    res = BenchResult(NAME, TITLE)
    rows = prompt_rows(n, prefix="s")
    with (
        tempfile.TemporaryDirectory(prefix="zimage-bench-sensor-") as tmp,
        emulator(latency_s=600.0, render_on_create=False) as emu,
    ):
        root = os.path.join(tmp, "images")
        spec = ImageAssetSpec(asset_name="sensor_images", prompts=rows, storage=root)
        job_name = "sensor_images_job"
        resource = ZImageResource(api_key=emu.api_key, base_url=emu.url)
        store = ImageStore(root)
        ledger = TaskLedger(store)
        dataset = load_prompts(rows)
        jobs = [ImageJob.from_row(row, seed=i + 1) for i, row in enumerate(dataset.rows)]

        async def submit() -> int:
            async with resource.async_client() as client:
                report = await submit_jobs(
                    client, ledger, spec.asset_key.path, jobs, concurrency=32
                )
            return len(report.submitted)

        setup_start = time.perf_counter()
        submitted = asyncio.run(submit())
        setup_s = time.perf_counter() - setup_start

        read_start = time.perf_counter()
        entries = list(ledger.iter_entries(spec.asset_key.path))
        read_s = time.perf_counter() - read_start

        raw_s = asyncio.run(_raw_polls(emu.url, emu.api_key, [e.task_id for e in entries]))
        sensor = build_task_status_sensor(spec, job_name, tick_budget_s=TICK_BUDGET_S)
        before = emu.stats()["requests"].get("task", {})
        with (
            dg.instance_for_test() as instance,
            dg.build_sensor_context(
                instance=instance, resources={"zimage": resource}
            ) as sensor_context,
        ):
            tick_start = time.perf_counter()
            result = sensor(sensor_context)
            tick_s = time.perf_counter() - tick_start
        after = emu.stats()["requests"].get("task", {})
    polled = sum(after.values()) - sum(before.values())
    complete = isinstance(result, dg.SensorResult) and result.cursor is None
    res.add(
        f"One sensor tick, {n} pending tasks",
        tick_s,
        "s",
        read_s,
        f"list + read the {len(entries)} ledger entries alone",
        f"value < {TARGET_S:g} s and < budget {TICK_BUDGET_S:g} s",
        tick_s < TARGET_S and tick_s < TICK_BUDGET_S and complete,
        target_on="value",
    )
    res.add(
        f"One sensor tick vs bare httpx GETs of the {len(entries)} tasks (32 in flight)",
        tick_s,
        "s",
        raw_s,
        "bare httpx, no ledger, no parsing",
    )
    res.notes.append(
        f"{submitted} tasks submitted in deferred mode (setup, not timed: {setup_s:.1f} s). "
        f"The tick made {polled} status requests ({polled / tick_s:.0f}/s), "
        f"{'polled every open task (no cursor left)' if complete else 'left a cursor: not every task was polled in one tick'}; "
        f"reading the ledger alone took {read_s:.2f} s ({read_s / max(len(entries), 1) * 1e6:.0f} us/entry)."
    )
    res.details = {
        "n": n,
        "tick_s": tick_s,
        "ledger_read_s": read_s,
        "status_requests": polled,
        "complete": complete,
        "setup_s": setup_s,
        "raw_httpx_s": raw_s,
    }
    return res
