"""Benchmark 5, sensor scale: one tick of the task-status sensor over 20,000 deferred tasks.

Setup (not timed): 20,000 real tasks on the emulator (its own process; 10-minute latency, so all
are still pending/processing during the tick), made with bare ``httpx`` and written to a local
ledger as a deferred submit writes them (task ID, request, flagged deferred). A quarter of them are then recorded
as completed in the ledger, as the callback receiver does when a callback arrives.

Timed: one evaluation of the sensor from :func:`zimage_dagster.sensors.build_task_status_sensor`
(``build_sensor_context`` with the resource; default settings: 32 status requests in flight,
30 s tick budget): it reads the ledger, polls the open tasks until 80 % of its budget is spent
(the rest resume from its cursor next tick), puts the settled ones into collect batches, answers.
Figures: its wall time (within the budget), its status requests (none for a task a callback
settled), and the ticks a full pass over the open tasks takes at that pace. Baselines in the
same run: listing and reading the ledger entries alone (``TaskLedger.iter_entries``), and one
bare ``httpx`` GET of each open task with the same 32 in flight (what the polling itself costs
this machine's Python, with no plugin code).
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time
from typing import Any

import dagster as dg
import httpx

from benchmarks._common import BenchResult, emulator, prompt_rows
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import load_prompts
from zimage_dagster.resource import ZImageResource
from zimage_dagster.sensors import build_task_status_sensor
from zimage_dagster.spec import ImageAssetSpec

NAME = "sensor"
TITLE = "5. Sensor scale (one task-status tick over 20,000 deferred tasks)"
TICK_BUDGET_S = 30.0  # the sensor's default tick budget
SETTLED_SHARE = 4  # one task in this many is settled by a "callback" before the tick


async def _raw_creates(
    url: str, key: str, jobs: list[ImageJob], concurrency: int = 32
) -> list[str]:
    """Create each job's task with a bare ``httpx`` POST; their IDs, in the jobs' order."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ids: list[str] = [""] * len(jobs)
    source = iter(enumerate(jobs))
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            for i, job in source:
                answer = await client.post("/v1/images/generations", json=job.request.to_wire())
                ids[i] = str(answer.raise_for_status().json()["id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


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
    n = 2000 if quick else 20_000
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

        setup_start = time.perf_counter()
        # Real tasks made with bare httpx and written to the ledger as a deferred submit writes
        # them (the submit's own pace, claims included, is not what this measures).
        task_ids = asyncio.run(_raw_creates(emu.url, emu.api_key, jobs))
        for job, task_id in zip(jobs, task_ids, strict=True):
            ledger.record_submitted(
                spec.asset_key.path,
                job.partition_key,
                task_id=task_id,
                request=job.request.to_wire(),
                fingerprint=job.fingerprint,
                extra={"deferred": True},
            )
        submitted = len(task_ids)
        # What the callback receiver writes when a task's callback arrives.
        entries = sorted(ledger.iter_entries(spec.asset_key.path), key=lambda e: e.partition_key)
        for entry in entries[::SETTLED_SHARE]:
            ledger.update(
                entry.asset,
                entry.partition_key,
                entry.task_id,
                LedgerStatus.COMPLETED,
                extra={"completed_at": time.time(), "via": "callback"},
            )
        settled = len(entries[::SETTLED_SHARE])
        open_ids = [e.task_id for i, e in enumerate(entries) if i % SETTLED_SHARE]
        setup_s = time.perf_counter() - setup_start

        read_start = time.perf_counter()
        read = len(list(ledger.iter_entries(spec.asset_key.path)))
        read_s = time.perf_counter() - read_start

        raw_s = asyncio.run(_raw_polls(emu.url, emu.api_key, open_ids))
        sensor = build_task_status_sensor(spec, job_name, tick_budget_s=TICK_BUDGET_S)
        before = _task_requests(emu)
        with dg.instance_for_test() as instance:
            with dg.build_sensor_context(
                instance=instance, resources={"zimage": resource}
            ) as sensor_context:
                tick_start = time.perf_counter()
                result = sensor(sensor_context)
                tick_s = time.perf_counter() - tick_start
            polled = _task_requests(emu) - before
    ticks = math.ceil(len(open_ids) / max(polled, 1))  # at this tick's pace
    assert isinstance(result, dg.SensorResult)
    batches = len(result.run_requests or [])
    res.add(
        f"One sensor tick, {n} deferred tasks ({settled} settled by callbacks)",
        tick_s,
        "s",
        read_s,
        f"list + read the {read} ledger entries alone",
        f"value < budget {TICK_BUDGET_S:g} s",
        tick_s < TICK_BUDGET_S,
        target_on="value",
    )
    res.add(
        "Status requests of that tick (none for a settled task)",
        float(polled),
        "requests",
        float(len(open_ids)),
        "open tasks",
        "<= open tasks",
        polled <= len(open_ids),
        target_on="value",
    )
    res.add(
        "Ticks a pass over every open task takes, at that tick's pace",
        float(ticks),
        "ticks",
        raw_s,
        f"s: bare httpx GETs of the {len(open_ids)} open tasks (32 in flight)",
    )
    res.notes.append(
        f"{submitted} tasks submitted in deferred mode, {settled} then recorded completed as a "
        f"callback would (setup, not timed: {setup_s:.1f} s). The first tick made {polled} "
        f"status requests ({polled / tick_s:.0f}/s) in {tick_s:.1f} s and asked for {batches} "
        f"collect run(s) for the {settled} settled tasks (a cursor takes the next tick on from "
        f"where it stopped: a pass over the {len(open_ids)} open tasks takes {ticks} tick(s) at "
        f"this pace). Reading the ledger alone took {read_s:.2f} s "
        f"({read_s / max(read, 1) * 1e6:.0f} us/entry)."
    )
    res.details = {
        "n": n,
        "settled_by_callback": settled,
        "tick_s": tick_s,
        "ledger_read_s": read_s,
        "status_requests": polled,
        "ticks_full_pass_estimate": ticks,
        "collect_runs_requested": batches,
        "setup_s": setup_s,
        "raw_httpx_s": raw_s,
    }
    return res


def _task_requests(emu: Any) -> int:
    return sum(emu.stats()["requests"].get("task", {}).values())
