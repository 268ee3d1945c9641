"""Benchmark 10, the emulator's load mode: its CPU per task with and without it.

One emulator process (0.2 s tasks, 1 s estimate, 1024x1024 WebP, the defaults otherwise). A bare
``httpx.AsyncClient`` drives ``N`` tasks per round, 32 in flight, each with its own prompt and seed:
create, wait, poll to the end, download the image. Rounds alternate between the realistic default
(each image rendered from its prompt and seed) and load mode (``load_mode=True``: a pool of
stock images per size), switched on the running emulator (``POST /_emulator/config``), so both
see the same load on this shared machine. The emulator's CPU (user + system, from ``/proc``) over
each round, divided by its tasks, is the figure; the client's CPU is not counted.

    python -m benchmarks.run emulator_load
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from benchmarks._common import BenchResult, emulator, process_cpu_s
from zimage_dagster.emulator import EmulatorProcess

NAME = "emulator_load"
TITLE = "10. Emulator load mode (emulator CPU per task, realistic renders vs the stock pool)"
CONCURRENCY = 32
LATENCY_S = 0.2


async def drive(emu: EmulatorProcess, n: int, prefix: str) -> int:
    """``n`` tasks through create, poll and download; returns the bytes downloaded."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {emu.api_key}"}
    slots = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=emu.url, headers=headers, limits=limits, timeout=60.0, trust_env=False
    ) as client:

        async def one(i: int) -> int:
            async with slots:
                body = {"model": "z-image-turbo", "prompt": f"{prefix} {i}", "seed": i + 1}
                task = (await client.post("/v1/images/generations", json=body)).json()
                await asyncio.sleep(LATENCY_S)
                while task["status"] not in ("completed", "failed"):
                    await asyncio.sleep(0.05)
                    task = (await client.get(f"/v1/tasks/{task['id']}")).json()
                image = await client.get(task["results"][0], headers={"Authorization": ""})
                image.raise_for_status()
                return len(image.content)

        sizes = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(sizes)


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 200 if quick else 1000
    rounds = 2  # per mode, alternating: default, load, default, load
    res = BenchResult(NAME, TITLE)
    cpu: dict[bool, float] = {False: 0.0, True: 0.0}
    wall: dict[bool, float] = {False: 0.0, True: 0.0}
    renders: dict[bool, int] = {False: 0, True: 0}
    load_at_start = os.getloadavg()[0]
    with emulator(latency_s=LATENCY_S, estimated_time=1) as emu:
        assert emu.pid is not None
        asyncio.run(drive(emu, 8, "warm-up"))
        for r in range(rounds):
            for load_mode in (False, True):
                emu.configure(load_mode=load_mode)
                before_renders = emu.stats()["renders"]
                before = process_cpu_s(emu.pid) or 0.0
                start = time.perf_counter()
                asyncio.run(drive(emu, n // rounds, f"round {r} load={load_mode}"))
                wall[load_mode] += time.perf_counter() - start
                cpu[load_mode] += (process_cpu_s(emu.pid) or 0.0) - before
                renders[load_mode] += emu.stats()["renders"] - before_renders
    per_task = {mode: cpu[mode] / n * 1000 for mode in cpu}
    res.add(
        f"Emulator CPU per task, load mode ({n} tasks, 1024x1024 WebP)",
        per_task[True],
        "ms",
        per_task[False],
        "realistic default (a render per task), same invocation, alternating rounds",
    )
    res.add(
        f"Wall time of {n} tasks, 32 in flight, 0.2 s latency: load mode",
        wall[True],
        "s",
        wall[False],
        "realistic default",
    )
    res.notes.append(
        f"Emulator CPU per task: {per_task[False]:.1f} ms realistic ({renders[False]} renders), "
        f"{per_task[True]:.1f} ms in load mode ({renders[True]} renders) over {n} tasks each, in "
        f"{rounds} alternating rounds per mode; load average {load_at_start:.2f} at the start."
    )
    res.details = {
        "n": n,
        "cpu_ms_per_task": per_task,
        "wall_s": wall,
        "renders": renders,
        "load_average_at_start": load_at_start,
    }
    return res
