"""AsyncZImageClient: parity with the sync client, and generate_many's batch behaviour."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from zimage_dagster.api import (
    AsyncZImageClient,
    GenerationFailure,
    GenerationRequest,
    GenerationResult,
    PollPolicy,
    RequestValidationError,
    TaskFailedError,
    ZImageClient,
)

from ._fakes import API, CANARY_KEY, FakeAPI, FakeClock, png_bytes
from .test_retries import async_client_for


def test_async_generate_matches_the_sync_one() -> None:
    async def main() -> GenerationResult:
        api = FakeAPI(FakeClock())
        async with async_client_for(api) as client:
            return await client.generate(GenerationRequest(prompt="a cute cat", seed=5))

    result = asyncio.run(main())
    api = FakeAPI(FakeClock())
    with ZImageClient(
        CANARY_KEY, base_url=API, transport=api.transport(), clock=api.clock, sleep=api.clock.sleep
    ) as c:
        sync = c.generate(GenerationRequest(prompt="a cute cat", seed=5))
    assert (result.seed, result.polls, result.attempts) == (sync.seed, sync.polls, sync.attempts)
    assert result.image.sha256 == sync.image.sha256


def test_async_credits_task_and_download() -> None:
    async def main() -> None:
        api = FakeAPI(FakeClock(), pending_s=0, processing_s=0)
        async with async_client_for(api) as client:
            credits = await client.get_credits()
            assert credits.remaining == 99.5
            task = await client.create_task(GenerationRequest(prompt="x", seed=1))
            again = await client.get_task(task.id)
            assert again.is_completed
            assert again.result_url is not None
            image = await client.download(again.result_url, task_id=task.id)
            assert image.format == "PNG"
            assert "authorization" not in api.file_requests[0].headers

    asyncio.run(main())


def test_generate_many_yields_everything_with_bounded_concurrency_and_isolated_failures() -> None:
    """Real (short) time: tasks take 50 ms; one prompt is refused by moderation, one is invalid."""
    live: set[str] = set()
    peak = [0]
    start = time.monotonic()
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=0.05, estimated_time=0.05)
    api.clock = lambda: time.monotonic() - start  # type: ignore[assignment]
    real_create, real_query, real_file = api.create, api.query, api.serve_file

    def create(request: httpx.Request) -> httpx.Response:
        if "forbidden" in request.content.decode():
            api.failures.insert(0, ("content_policy_violation", "Blocked by safety filters."))
        response = real_create(request)
        live.add(response.json()["id"])
        peak[0] = max(peak[0], len(live))
        return response

    def query(task_id: str) -> httpx.Response:
        response = real_query(task_id)
        if response.json().get("status") == "failed":
            live.discard(task_id)
        return response

    def serve_file(request: httpx.Request) -> httpx.Response:
        live.discard(request.url.path.strip("/").removesuffix(".png"))
        return real_file(request)

    api.create, api.query, api.serve_file = create, query, serve_file  # type: ignore[method-assign]
    prompts = [f"picture {i}" for i in range(12)] + ["something forbidden"]
    requests = [GenerationRequest(prompt=p, seed=i + 1) for i, p in enumerate(prompts)]
    bad = GenerationRequest.model_construct(
        prompt="", size="1:1", seed=1, nsfw_check=False, model="z-image-turbo"
    )
    requests.insert(3, bad)
    policy = PollPolicy(
        min_interval=0.01, initial_interval=0.01, max_interval=0.02, default_estimated_time=0.05
    )
    created: list[str] = []

    async def main() -> list[GenerationResult | GenerationFailure]:
        async with AsyncZImageClient(
            CANARY_KEY, base_url=API, transport=api.async_transport(), poll=policy
        ) as client:
            return [
                item
                async for item in client.generate_many(
                    requests,
                    concurrency=4,
                    on_task_created=lambda req, task: created.append(task.id),
                )
            ]

    items = asyncio.run(main())
    assert len(items) == len(requests)
    assert {id(i.request) for i in items} == {id(r) for r in requests}
    failures = [i for i in items if isinstance(i, GenerationFailure)]
    successes = [i for i in items if isinstance(i, GenerationResult)]
    assert len(successes) == 12
    assert len(failures) == 2
    by_prompt = {f.request.prompt: f for f in failures}
    assert isinstance(by_prompt[""].error, RequestValidationError)
    assert by_prompt[""].task_id is None
    moderated = by_prompt["something forbidden"]
    assert isinstance(moderated.error, TaskFailedError)
    assert moderated.error.retryable is False
    assert moderated.task_id in api.tasks
    assert not moderated.ok
    assert all(s.ok for s in successes)
    assert len(created) == len(api.tasks) == 13
    assert api.count("POST") == 13
    assert peak[0] == 4  # bounded, and the bound is used


def test_generate_many_is_concurrent() -> None:
    """8 tasks of 0.2 s each with concurrency 8 take about 0.2 s, not 1.6 s."""
    start = time.monotonic()
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=0.2, estimated_time=0.2)
    api.clock = lambda: time.monotonic() - start  # type: ignore[assignment]
    policy = PollPolicy(
        min_interval=0.02, initial_interval=0.02, max_interval=0.05, default_estimated_time=0.2
    )

    async def main() -> float:
        async with AsyncZImageClient(
            CANARY_KEY, base_url=API, transport=api.async_transport(), poll=policy
        ) as c:
            t0 = time.monotonic()
            results = [
                i
                async for i in c.generate_many(
                    [GenerationRequest(prompt=f"p{i}") for i in range(8)]
                )
            ]
            assert all(r.ok for r in results)
            assert (
                len({r.seed for r in results if isinstance(r, GenerationResult)}) == 8
            )  # drawn seeds
            return time.monotonic() - t0

    assert asyncio.run(main()) < 1.0


def test_leaving_generate_many_early_cancels_the_rest() -> None:
    start = time.monotonic()
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=0.05, estimated_time=0.05)
    api.clock = lambda: time.monotonic() - start  # type: ignore[assignment]
    policy = PollPolicy(
        min_interval=0.01, initial_interval=0.01, max_interval=0.02, default_estimated_time=0.05
    )

    async def main() -> int:
        async with AsyncZImageClient(
            CANARY_KEY, base_url=API, transport=api.async_transport(), poll=policy
        ) as c:
            stream = c.generate_many(
                [GenerationRequest(prompt=f"p{i}", seed=1) for i in range(50)], concurrency=2
            )
            async for _ in stream:
                break
            await stream.aclose()  # type: ignore[attr-defined]
            await asyncio.sleep(0.1)
            return api.count("POST")

    assert asyncio.run(main()) <= 4


def test_generate_many_rejects_zero_concurrency() -> None:
    async def main() -> None:
        async with AsyncZImageClient(
            CANARY_KEY, base_url=API, transport=httpx.MockTransport(lambda r: httpx.Response(500))
        ) as c:
            with pytest.raises(ValueError, match="concurrency"):
                async for _ in c.generate_many([], concurrency=0):
                    pass

    asyncio.run(main())


def test_async_client_owns_and_closes_its_http_client_only() -> None:
    async def main() -> None:
        injected = httpx.AsyncClient(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, content=png_bytes()))
        )
        async with AsyncZImageClient(CANARY_KEY, base_url=API, http_client=injected) as client:
            await client.download("https://files.zimage.test/a.png")
        assert not injected.is_closed
        await injected.aclose()
        own = AsyncZImageClient(CANARY_KEY, base_url=API)
        await own.aclose()
        assert own._http.is_closed

    asyncio.run(main())
