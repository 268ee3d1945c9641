"""The async client's capacity hook: what a create answered 429 awaits instead of the
Retry-After sleep, within the same retry budget (real HTTP: the emulator's concurrency cap)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from zimage_dagster.api import (
    APITimeoutError,
    AsyncZImageClient,
    GenerationRequest,
    RateLimitError,
    RetryPolicy,
)
from zimage_dagster.emulator import EmulatorConfig, EmulatorServer

REQUEST = GenerationRequest(prompt="a lighthouse at dusk", seed=5)


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig.for_tests(concurrency_cap=1)) as server:
        yield server


def _client(emulator: EmulatorServer, sleeps: list[float], **kw: object) -> AsyncZImageClient:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    return AsyncZImageClient(
        api_key=emulator.api_key,
        base_url=emulator.url,
        sleep=sleep,
        **kw,  # type: ignore[arg-type]
    )


def _429s(emulator: EmulatorServer) -> int:
    return int(emulator.stats()["requests"]["create"].get("429", 0))


def test_the_hook_replaces_the_retry_after_sleep(emulator: EmulatorServer) -> None:
    emulator.configure(latency_s=0.3)
    asked: list[float] = []
    sleeps: list[float] = []

    async def until_the_first_ends(retry_after_s: float) -> None:
        asked.append(retry_after_s)
        await asyncio.sleep(0.4)  # the first task (0.3 s) has ended: its slot is free

    async def main() -> float:
        async with _client(emulator, sleeps) as client:
            await client.create_task(REQUEST)
            started = time.monotonic()
            await client.create_task(REQUEST, wait_for_capacity=until_the_first_ends)
            return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert asked == [1.0]  # the emulator's Retry-After, given to the hook
    assert sleeps == []  # ... and not slept
    assert elapsed < 0.95  # sent again when the hook returned, before the Retry-After
    assert _429s(emulator) == 1
    assert emulator.stats()["tasks_created"] == 2


def test_each_429_still_counts_against_max_retries(emulator: EmulatorServer) -> None:
    emulator.configure(latency_s=30)
    calls: list[float] = []

    async def at_once(retry_after_s: float) -> None:
        calls.append(retry_after_s)

    async def main() -> None:
        async with _client(emulator, [], retry=RetryPolicy(max_retries=2)) as client:
            await client.create_task(REQUEST)
            await client.create_task(REQUEST, wait_for_capacity=at_once)

    with pytest.raises(RateLimitError):
        asyncio.run(main())
    assert len(calls) == 2
    assert _429s(emulator) == 3
    assert emulator.stats()["tasks_created"] == 1


def test_the_call_deadline_cuts_off_a_hook_that_never_returns(emulator: EmulatorServer) -> None:
    emulator.configure(latency_s=1.0)  # Retry-After 1 s, within the 1.5 s deadline

    async def forever(retry_after_s: float) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        async with _client(emulator, [], deadline=1.5, retry=RetryPolicy(max_retries=50)) as c:
            await c.create_task(REQUEST)
            await c.create_task(REQUEST, wait_for_capacity=forever)

    started = time.monotonic()
    with pytest.raises(APITimeoutError, match=r"deadline of 1\.5 s exhausted"):
        asyncio.run(main())
    assert time.monotonic() - started < 5.0
    assert emulator.stats()["tasks_created"] == 1
