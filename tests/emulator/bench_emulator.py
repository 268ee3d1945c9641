"""Capacity of the emulator (a helper script, not a test).

    .venv/bin/python -m tests.emulator.bench_emulator [--requests 2000] [--concurrency 32]

Runs the emulator in a subprocess (outside this process's GIL), creates one task, then times
`--requests` GETs of /v1/tasks/{id} from an httpx.AsyncClient with `--concurrency` in flight; then
times the render of a 1024x1024 image in each format (in this process, median of 5).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx

from zimage_dagster.emulator import EmulatorConfig, EmulatorProcess
from zimage_dagster.emulator.render import render_image


async def query_rate(url: str, key: str, requests: int, concurrency: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, trust_env=False
    ) as client:
        task = (
            await client.post(
                "/v1/images/generations",
                json={"model": "z-image-turbo", "prompt": "bench", "seed": 1},
            )
        ).json()
        path = f"/v1/tasks/{task['id']}"
        for _ in range(50):  # warm the connections
            (await client.get(path)).raise_for_status()
        latencies: list[float] = []
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                response = await client.get(path)
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return requests / elapsed, statistics.quantiles(latencies, n=100)[98]


def process_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of a process (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def render_times(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    out = {}
    for fmt in ("png", "jpeg", "webp"):
        render_image("warm-up", 1, size, size, fmt)
        times = []
        for seed in range(2, 2 + repeats):
            start = time.perf_counter()
            render_image("a lighthouse on a cliff at dawn, oil painting", seed, size, size, fmt)
            times.append(time.perf_counter() - start)
        out[fmt] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with EmulatorProcess(EmulatorConfig(latency_s=0.0, render_on_create=False)) as emu:
        assert emu.pid is not None
        cpu_before = process_cpu_s(emu.pid)
        client_before = time.process_time()
        rate, p99 = asyncio.run(query_rate(emu.url, emu.api_key, args.requests, args.concurrency))
        client_cpu = time.process_time() - client_before
        cpu_after = process_cpu_s(emu.pid)
    print(
        f"GET /v1/tasks/{{id}}: {rate:.0f} requests/s "
        f"({args.requests} requests, {args.concurrency} concurrent, p99 {p99 * 1000:.1f} ms)"
    )
    if cpu_before is not None and cpu_after is not None:
        served = args.requests + 51
        per_request = (cpu_after - cpu_before) / served
        print(
            f"  emulator CPU {per_request * 1e6:.0f} us/request (~{1 / per_request:.0f} requests/s per core);"
            f" client CPU {client_cpu / served * 1e6:.0f} us/request"
        )
    for fmt, seconds in render_times().items():
        print(f"render 1024x1024 {fmt}: {seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
