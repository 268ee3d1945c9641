"""The clients against the emulator over real HTTP on loopback (the `emulator` fixture of
tests/conftest.py: the session emulator, reset for each test)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from zimage_dagster.api import (
    AsyncZImageClient,
    AuthenticationError,
    BadRequestError,
    CreateOutcomeUnknownError,
    GenerationFailure,
    GenerationRequest,
    GenerationResult,
    NotFoundError,
    PollPolicy,
    RateLimitError,
    RequestValidationError,
    ResultExpiredError,
    RetryPolicy,
    TaskFailedError,
    ZImageClient,
)

# Quick polling for the emulator's short tasks (latency 0.2 s in EmulatorConfig.for_tests()).
POLL = PollPolicy(
    first_wait_fraction=0.3,
    min_interval=0.05,
    initial_interval=0.05,
    max_interval=0.2,
    deadline=30.0,
)
FAST_TASKS = {"estimated_time": 1, "latency_s": 0.2}


class Sleeps:
    """Real sleep that remembers what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(seconds)


@pytest.fixture
def emu(emulator: Any) -> Any:
    emulator.configure(**FAST_TASKS)
    return emulator


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(emu: Any, sleeps: Sleeps) -> Iterator[ZImageClient]:
    with ZImageClient(
        emu.api_key,
        base_url=emu.url,
        poll=POLL,
        retry=RetryPolicy(jitter=False),
        sleep=sleeps,
        timeout=10.0,
    ) as c:
        yield c


def create_requests(emu: Any, settle_s: float = 2.0) -> int:
    """Create requests the emulator counted. A dropped connection is counted as the server
    closes it, which can be just after the client saw it close: wait for the count to settle."""
    deadline = time.monotonic() + settle_s
    while True:
        count = sum(emu.stats()["requests"].get("create", {}).values())
        if count or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def test_create_get_wait_download(client: ZImageClient, emu: Any) -> None:
    task = client.create_task(
        GenerationRequest(prompt="a red fox in snow", size="1024x768", seed=42)
    )
    assert task.status == "pending"
    assert task.id.startswith("task-unified-")
    assert task.estimated_time == 1
    assert task.credits_reserved is not None
    seen = client.get_task(task.id)
    assert seen.id == task.id
    outcome = client.wait(task)
    assert outcome.task.is_completed
    assert outcome.polls >= 1
    assert outcome.task.result_url is not None
    image = client.download(outcome.task.result_url, task_id=task.id)
    assert (image.width, image.height) == (1024, 768)
    assert image.format == "WEBP"
    stats = emu.stats()
    assert stats["file_requests"] == 1
    assert stats["file_requests_with_authorization"] == 0


@pytest.mark.parametrize(("fmt", "expected"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_generate_records_seed_and_everything(
    client: ZImageClient, emu: Any, fmt: str, expected: str
) -> None:
    emu.configure(image_format=fmt)
    result = client.generate(GenerationRequest(prompt="a lighthouse at dusk", size="16:9"))
    assert 1 <= result.seed <= 2147483647
    [task] = [t for t in emu.tasks() if t["id"] == result.task.id]
    assert task["request"]["seed"] == result.seed  # the seed we record is the seed that was sent
    assert result.image.format == expected
    assert result.image.width > result.image.height
    assert result.attempts == 1
    assert result.timings.total_s > 0
    assert emu.stats()["file_requests_with_authorization"] == 0


def test_download_keeps_the_decoded_pixels_when_asked_sync_and_async(
    client: ZImageClient, emu: Any
) -> None:
    """``keep_pixels``: the decode check's image comes back (the engine's thumbnail needs no
    second decode); by default nothing is kept. The async client decodes in a worker thread."""
    outcome = client.wait(client.create_task(GenerationRequest(prompt="a heron", seed=3)))
    url = outcome.task.result_url
    assert url is not None
    plain = client.download(url)
    kept = client.download(url, keep_pixels=True)
    assert plain.pixels is None
    assert kept.pixels is not None
    assert kept.pixels.size == (kept.width, kept.height)
    assert kept.to_pil().tobytes() == plain.to_pil().tobytes()  # the same pixels, decoded once
    loop_threads: list[int] = []

    async def main() -> Any:
        async with AsyncZImageClient(emu.api_key, base_url=emu.url, timeout=10.0) as aclient:
            loop_threads.append(threading.get_ident())
            return await aclient.download(url, keep_pixels=True)

    decoded_in: list[int] = []
    real_load = Image.Image.load

    def load(self: Image.Image) -> Any:
        decoded_in.append(threading.get_ident())
        return real_load(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image.Image, "load", load)
        again = asyncio.run(main())
    assert again.pixels is not None
    assert again.sha256 == kept.sha256
    assert decoded_in
    assert loop_threads[0] not in decoded_in


def test_download_derives_from_the_pixels_in_the_decode_thread_and_drops_them(
    client: ZImageClient, emu: Any
) -> None:
    """``derive`` (the engine's thumbnail): called once with the decoded image, in the async
    client's decode thread, not on its event loop; the result is kept and the pixels are not."""
    outcome = client.wait(client.create_task(GenerationRequest(prompt="a stork", seed=4)))
    url = outcome.task.result_url
    assert url is not None
    seen: list[tuple[int, tuple[int, int]]] = []

    def size_of(pixels: Image.Image) -> tuple[int, int]:
        seen.append((threading.get_ident(), pixels.size))
        return pixels.size

    image = client.download(url, derive=size_of)
    assert image.derived == (image.width, image.height)
    assert image.pixels is None
    loop_threads: list[int] = []

    async def main() -> Any:
        async with AsyncZImageClient(emu.api_key, base_url=emu.url, timeout=10.0) as aclient:
            loop_threads.append(threading.get_ident())
            return await aclient.download(url, derive=size_of)

    again = asyncio.run(main())
    assert again.derived == image.derived
    assert again.pixels is None
    assert len(seen) == 2
    assert seen[1][0] != loop_threads[0]


def test_same_seed_same_image(client: ZImageClient) -> None:
    req = GenerationRequest(prompt="a teapot", seed=1234)
    assert client.generate(req).image.sha256 == client.generate(req).image.sha256


def test_credits(client: ZImageClient) -> None:
    credits = client.get_credits()
    assert credits.success is True
    assert credits.remaining >= 0


def test_wrong_key(emu: Any) -> None:
    emu.configure(api_keys=["sk-evo-the-right-one"])
    with (
        ZImageClient("sk-evo-wrong", base_url=emu.url) as c,
        pytest.raises(AuthenticationError) as info,
    ):
        c.get_credits()
    assert info.value.status_code == 401


def test_task_id_errors(client: ZImageClient) -> None:
    with pytest.raises(BadRequestError) as info:
        client.get_task("not-a-task")
    assert info.value.code == "invalid_task_id"
    with pytest.raises(NotFoundError):
        client.get_task("task-unified-1700000000-abcdefgh")


def test_create_429_with_retry_after_is_honoured(
    client: ZImageClient, emu: Any, sleeps: Sleeps
) -> None:
    emu.configure(
        http_faults=[
            {"route": "create", "action": "status", "status": 429, "retry_after": 1, "count": 1}
        ]
    )
    task = client.create_task(GenerationRequest(prompt="a cat", seed=1))
    assert task.id
    assert sleeps.calls[0] == 1.0
    assert create_requests(emu) == 2
    assert emu.stats()["tasks_created"] == 1


def test_create_429_persisting_gives_rate_limit_error(client: ZImageClient, emu: Any) -> None:
    emu.configure(
        http_faults=[{"route": "create", "action": "status", "status": 429, "retry_after": 0.1}]
    )
    with pytest.raises(RateLimitError) as info:
        client.create_task(GenerationRequest(prompt="a cat", seed=1))
    assert info.value.retry_after == pytest.approx(0.1, abs=1)
    assert create_requests(emu) == 3
    assert emu.stats()["tasks_created"] == 0


def test_create_answer_lost_after_the_task_was_made_is_not_retried(
    client: ZImageClient, emu: Any
) -> None:
    emu.configure(
        http_faults=[{"route": "create", "action": "drop", "after_create": True, "count": 1}]
    )
    with pytest.raises(CreateOutcomeUnknownError):
        client.create_task(GenerationRequest(prompt="a cat", seed=1))
    assert create_requests(emu) == 1
    assert emu.stats()["tasks_created"] == 1  # the task exists; we did not pay for a second one


def test_create_500_is_not_retried(client: ZImageClient, emu: Any) -> None:
    emu.configure(http_faults=[{"route": "create", "action": "status", "status": 500, "count": 1}])
    with pytest.raises(Exception, match="500"):
        client.create_task(GenerationRequest(prompt="a cat", seed=1))
    assert create_requests(emu) == 1


def test_query_faults_are_retried(client: ZImageClient, emu: Any) -> None:
    task = client.create_task(GenerationRequest(prompt="a cat", seed=1))
    emu.configure(
        http_faults=[
            {"route": "task", "action": "status", "status": 503, "count": 1},
            {"route": "task", "action": "drop", "count": 1},
        ]
    )
    assert client.get_task(task.id).id == task.id
    assert sum(emu.stats()["requests"]["task"].values()) >= 3


def test_truncated_download_is_retried(client: ZImageClient, emu: Any) -> None:
    emu.configure(http_faults=[{"route": "files", "action": "truncate", "count": 1}])
    result = client.generate(GenerationRequest(prompt="a cat", seed=1))
    assert result.image.format == "WEBP"
    assert emu.stats()["file_requests"] == 2


def test_expired_link(client: ZImageClient, emu: Any) -> None:
    task = client.create_task(GenerationRequest(prompt="a cat", seed=9))
    outcome = client.wait(task)
    url = outcome.task.result_url
    assert url is not None
    emu.advance_clock(25 * 3600)
    with pytest.raises(ResultExpiredError) as info:
        client.download(url, task_id=task.id)
    assert info.value.task_id == task.id
    assert "?" not in (info.value.url or "")


def test_moderation_failure_is_fixable(client: ZImageClient, emu: Any) -> None:
    with pytest.raises(TaskFailedError) as info:
        client.generate(GenerationRequest(prompt="something forbidden", seed=1))
    assert info.value.code == "content_policy_violation"
    assert info.value.retryable is False
    assert emu.stats()["tasks_created"] == 1


def test_retryable_failure_is_resubmitted_once(client: ZImageClient, emu: Any) -> None:
    emu.configure(failure_rules=[{"pattern": "flaky", "code": "service_error"}])
    with pytest.raises(TaskFailedError) as info:
        client.generate(GenerationRequest(prompt="a flaky cat", seed=1))
    assert info.value.retryable is True
    assert emu.stats()["tasks_created"] == 2  # RetryPolicy.max_task_attempts


def test_wait_deadline(client: ZImageClient, emu: Any) -> None:
    emu.configure(latency_s=60)
    task = client.create_task(GenerationRequest(prompt="a slow cat", seed=1))
    with pytest.raises(Exception, match="still") as info:
        client.wait(task, deadline=1.0)
    assert getattr(info.value, "task_id", None) == task.id


def test_generate_many_with_one_failing_prompt(emu: Any) -> None:
    prompts = [f"a small painting number {i}" for i in range(9)] + ["something forbidden"]
    requests = [GenerationRequest(prompt=p) for p in prompts]

    async def main() -> list[GenerationResult | GenerationFailure]:
        async with AsyncZImageClient(emu.api_key, base_url=emu.url, poll=POLL) as client:
            return [item async for item in client.generate_many(requests, concurrency=4)]

    items = asyncio.run(main())
    assert len(items) == 10
    failures = [i for i in items if isinstance(i, GenerationFailure)]
    assert [f.request.prompt for f in failures] == ["something forbidden"]
    assert isinstance(failures[0].error, TaskFailedError)
    assert failures[0].task_id is not None
    results = [i for i in items if isinstance(i, GenerationResult)]
    assert len({r.task.id for r in results}) == 9
    stats = emu.stats()
    assert stats["tasks_created"] == 10
    assert stats["peak_concurrent_tasks"] <= 4
    assert stats["file_requests_with_authorization"] == 0


def test_async_client_basics(emu: Any) -> None:
    async def main() -> None:
        async with AsyncZImageClient(emu.api_key, base_url=emu.url, poll=POLL) as client:
            credits = await client.get_credits()
            assert credits.success
            result = await client.generate(
                GenerationRequest(prompt="a cat", size="376x1536", seed=3)
            )
            assert (result.image.width, result.image.height) == (376, 1536)

    asyncio.run(main())


def test_debug_logs_over_real_http_never_contain_the_key(
    emu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-evo-CANARY-e2e-5d1f0c9b7a3e42f6b8d0c1a2"
    emu.configure(
        api_keys=[key],
        http_faults=[{"route": "task", "action": "status", "status": 503, "count": 1}],
    )
    caplog.set_level(logging.DEBUG)
    for name in ("zimage_dagster", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    with ZImageClient(key, base_url=emu.url, poll=POLL) as client:
        client.generate(GenerationRequest(prompt="a cat", seed=5))
        with pytest.raises(NotFoundError) as info:
            client.get_task("task-unified-1700000000-abcdefgh")
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    assert any(r.name.startswith("zimage_dagster.api") for r in caplog.records)
    assert key not in caplog.text
    assert key[7:] not in caplog.text
    assert key not in str(info.value)


def test_callback_url_reaches_the_provider_and_internal_ones_never_leave(
    client: ZImageClient, emu: Any
) -> None:
    hook = "https://hooks.example.com/zimage/callbacks/t0k3n"
    task = client.create_task(GenerationRequest(prompt="a cat", seed=3, callback_url=hook))
    client.wait(task)
    (seen,) = emu.tasks()
    assert seen["request"]["callback_url"] == hook
    # The emulator never calls out of loopback: a public hook is recorded, not delivered.
    deadline = time.monotonic() + 5
    while emu.tasks()[0]["callback"]["state"] in (None, "pending") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emu.tasks()[0]["callback"]["state"] == "skipped"
    with pytest.raises(RequestValidationError, match="callback_url"):
        client.create_task(
            GenerationRequest.model_construct(
                model="z-image-turbo",
                prompt="a cat",
                size="1:1",
                seed=4,
                nsfw_check=False,
                callback_url="http://127.0.0.1:9/hook",
            )
        )
    assert emu.stats()["tasks_created"] == 1
