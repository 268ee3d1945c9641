"""Retry decisions, backoff, Retry-After and deadlines, driven through httpx.MockTransport.

These are conditions a real server cannot easily produce on demand (a read timeout after the
request was sent, exact timings), hence the mock transport; the clock and sleep are fakes, so
every figure is exact.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zimage_dagster.api import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncZImageClient,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    CreateOutcomeUnknownError,
    GenerationRequest,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ZImageClient,
    backoff_delay,
    parse_retry_after,
    retry_delay,
)

from ._fakes import API, CANARY_KEY, FakeAPI, FakeClock, error_body

REQ = GenerationRequest(prompt="a cute cat", seed=7)
EXACT = RetryPolicy(jitter=False)


def client_for(api: FakeAPI, **kw: Any) -> ZImageClient:
    kw.setdefault("retry", EXACT)
    return ZImageClient(
        CANARY_KEY,
        base_url=API,
        transport=api.transport(),
        clock=api.clock,
        sleep=api.clock.sleep,
        **kw,
    )


def async_client_for(api: FakeAPI, **kw: Any) -> AsyncZImageClient:
    kw.setdefault("retry", EXACT)
    return AsyncZImageClient(
        CANARY_KEY,
        base_url=API,
        transport=api.async_transport(),
        clock=api.clock,
        sleep=api.clock.asleep,
        **kw,
    )


def script(
    api: FakeAPI, *steps: Callable[[httpx.Request], httpx.Response | None] | int | Exception
) -> None:
    """Answer the first API requests from ``steps`` (status code, exception class instance, or
    callable), then let the fake API answer normally."""
    queue = list(steps)

    def hook(request: httpx.Request) -> httpx.Response | None:
        if not queue:
            return None
        step = queue.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, int):
            return httpx.Response(step, json=error_body(f"code_{step}", f"status {step}"))
        return step(request)

    api.hook = hook


def answer(
    status: int, headers: dict[str, str] | None = None, body: Any = None
) -> Callable[[httpx.Request], httpx.Response]:
    def make(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, headers=headers, json=body if body is not None else error_body("x", "y")
        )

    return make


def read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out reading", request=request)


# --- create: never pay twice -------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
        httpx.WriteTimeout("write timed out"),
        httpx.WriteError("broken pipe"),
    ],
)
def test_create_failing_after_send_raises_outcome_unknown_and_is_not_retried(
    failure: Exception,
) -> None:
    api = FakeAPI(FakeClock())
    script(api, failure)
    with client_for(api) as client, pytest.raises(CreateOutcomeUnknownError) as info:
        client.create_task(REQ)
    assert api.count("POST") == 1
    assert api.clock.sleeps == []
    assert type(failure).__name__ in str(info.value)
    assert "/v1/images/generations" in str(info.value)
    assert not isinstance(info.value, APIConnectionError)


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("pool"),
    ],
)
def test_create_that_never_connected_is_retried(failure: Exception) -> None:
    api = FakeAPI(FakeClock())
    script(api, failure, failure)
    with client_for(api) as client:
        task = client.create_task(REQ)
    assert task.status == "pending"
    assert api.count("POST") == 3
    assert api.clock.sleeps == [0.5, 1.0]
    assert len(api.tasks) == 1


def test_create_that_never_connected_gives_up_after_max_retries() -> None:
    api = FakeAPI(FakeClock())
    script(api, *[httpx.ConnectError("refused")] * 5)
    with (
        client_for(api) as client,
        pytest.raises(APIConnectionError, match="ConnectError: refused"),
    ):
        client.create_task(REQ)
    assert api.count("POST") == 3


def test_create_429_with_retry_after_sleeps_that_long() -> None:
    api = FakeAPI(FakeClock())
    script(
        api,
        answer(429, {"Retry-After": "2"}, error_body("rate_limit_exceeded", "Too many requests")),
    )
    with client_for(api) as client:
        client.create_task(REQ)
    assert api.clock.sleeps == [2.0]
    assert api.count("POST") == 2


def test_create_503_retried_but_500_and_502_are_not() -> None:
    api = FakeAPI(FakeClock())
    script(api, 503)
    with client_for(api) as client:
        client.create_task(REQ)
    assert api.count("POST") == 2
    for status in (500, 502, 504, 408, 409):
        api = FakeAPI(FakeClock())
        script(api, status)
        with client_for(api) as client, pytest.raises(APIStatusError) as info:
            client.create_task(REQ)
        assert info.value.status_code == status
        assert api.count("POST") == 1, status


def test_create_retry_statuses_is_a_policy_field() -> None:
    api = FakeAPI(FakeClock())
    script(api, 503)
    policy = RetryPolicy(jitter=False, create_retry_statuses=frozenset({429}))
    with client_for(api, retry=policy) as client, pytest.raises(InternalServerError):
        client.create_task(REQ)
    assert api.count("POST") == 1


def test_create_with_real_slow_server_read_timeout() -> None:
    """The per-attempt timeout reaches the transport: a MockTransport that honours it."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        raise httpx.ReadTimeout("no answer within the read timeout", request=request)

    client = ZImageClient(
        CANARY_KEY, base_url=API, transport=httpx.MockTransport(handler), timeout=3.0
    )
    with client, pytest.raises(CreateOutcomeUnknownError):
        client.create_task(REQ)
    assert len(seen) == 1
    assert seen[0]["read"] == 3.0


# --- GET retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_get_retried_on_transient_statuses(status: int) -> None:
    api = FakeAPI(FakeClock())
    script(api, status, status)
    with client_for(api) as client:
        credits = client.get_credits()
    assert credits.remaining == 99.5
    assert api.count("GET") == 3
    assert api.clock.sleeps == [0.5, 1.0]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (422, APIStatusError),
    ],
)
def test_get_not_retried_on_client_errors(status: int, cls: type[APIStatusError]) -> None:
    api = FakeAPI(FakeClock())
    script(api, status)
    with client_for(api) as client, pytest.raises(cls) as info:
        client.get_credits()
    assert type(info.value) is cls
    assert api.count("GET") == 1
    assert info.value.status_code == status
    assert (info.value.method, info.value.path) == ("GET", "/v1/credits")


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("t"),
        httpx.ConnectError("c"),
        httpx.RemoteProtocolError("r"),
        httpx.ReadError("e"),
    ],
)
def test_get_retried_on_transport_errors(failure: Exception) -> None:
    api = FakeAPI(FakeClock())
    script(api, failure)
    with client_for(api) as client:
        client.get_credits()
    assert api.count("GET") == 2


def test_get_gives_up_with_the_last_error_after_max_retries() -> None:
    api = FakeAPI(FakeClock())
    script(api, 500, 502, 503, 200)
    with client_for(api) as client, pytest.raises(InternalServerError) as info:
        client.get_credits()
    assert info.value.status_code == 503
    assert api.count("GET") == 3
    assert api.clock.sleeps == [0.5, 1.0]


def test_get_timeouts_exhausted_raise_api_timeout_error() -> None:
    api = FakeAPI(FakeClock())
    script(api, *[httpx.ReadTimeout("slow")] * 3)
    with client_for(api) as client, pytest.raises(APITimeoutError) as info:
        client.get_credits()
    assert not info.value.deadline_exceeded
    assert isinstance(info.value, APIConnectionError)


def test_max_retries_zero_means_one_attempt() -> None:
    api = FakeAPI(FakeClock())
    script(api, 500)
    with (
        client_for(api, retry=RetryPolicy(max_retries=0)) as client,
        pytest.raises(InternalServerError),
    ):
        client.get_credits()
    assert api.count("GET") == 1


def test_retry_after_ms_preferred_and_big_hints_fall_back_to_backoff() -> None:
    api = FakeAPI(FakeClock())
    script(
        api,
        answer(429, {"retry-after-ms": "1500", "Retry-After": "9"}),
        answer(429, {"Retry-After": "3600"}),  # beyond max_retry_after: use the backoff (1.0)
    )
    with client_for(api) as client:
        client.get_credits()
    assert api.clock.sleeps == [1.5, 1.0]


def test_retry_after_http_date() -> None:
    api = FakeAPI(FakeClock())
    when = email.utils.formatdate(timeval=__import__("time").time() + 4, usegmt=True)
    script(api, answer(503, {"Retry-After": when}))
    with client_for(api) as client:
        client.get_credits()
    assert len(api.clock.sleeps) == 1
    assert 2.0 <= api.clock.sleeps[0] <= 4.0


# --- deadlines ---------------------------------------------------------------------------------


def test_deadline_stops_retrying_before_a_backoff_would_cross_it() -> None:
    api = FakeAPI(FakeClock())
    script(api, *[500] * 20)
    policy = RetryPolicy(jitter=False, max_retries=10)
    with (
        client_for(api, retry=policy, deadline=2.0) as client,
        pytest.raises(APITimeoutError) as info,
    ):
        client.get_credits()
    # attempts at t=0, 0.5, 1.5; the next backoff (2.0 s) would cross the 2.0 s deadline
    assert api.count("GET") == 3
    assert api.clock.sleeps == [0.5, 1.0]
    assert info.value.deadline_exceeded
    assert "deadline of 2.0 s" in str(info.value)
    assert isinstance(info.value.__cause__, InternalServerError)


def test_deadline_counts_time_spent_in_attempts_and_caps_the_per_attempt_timeout() -> None:
    api = FakeAPI(FakeClock())
    timeouts: list[float] = []

    def slow_failure(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"]["read"])
        api.clock.advance(3.0)  # each attempt takes 3 s
        return httpx.Response(502, json=error_body("bad_gateway", "upstream"))

    script(api, *[slow_failure] * 10)
    policy = RetryPolicy(jitter=False, max_retries=10)
    with (
        client_for(api, retry=policy, deadline=7.0, timeout=5.0) as client,
        pytest.raises(APITimeoutError) as info,
    ):
        client.get_credits()
    assert info.value.deadline_exceeded
    # t=0: timeout 5 (<7 left); t=3.5: 3.5 s left; t=7.5 > 7: stop
    assert timeouts == [5.0, 3.5]
    assert api.clock.now - 1000.0 <= 7.0 + 3.0


def test_async_client_obeys_the_same_rules() -> None:
    async def main() -> None:
        api = FakeAPI(FakeClock())
        script(api, httpx.ReadTimeout("after send"))
        async with async_client_for(api) as client:
            with pytest.raises(CreateOutcomeUnknownError):
                await client.create_task(REQ)
            assert api.count("POST") == 1
            script(api, httpx.ConnectError("refused"), answer(429, {"Retry-After": "2"}))
            task = await client.create_task(REQ)
            assert task.id in api.tasks
            assert api.clock.sleeps == [0.5, 2.0]
            script(api, 500, 400)
            with pytest.raises(BadRequestError):
                await client.get_credits()

    asyncio.run(main())


# --- error mapping -----------------------------------------------------------------------------


def test_error_fields_from_the_response() -> None:
    api = FakeAPI(FakeClock())
    script(
        api,
        answer(
            400,
            {"x-request-id": "req-123"},
            error_body("invalid_task_id", "Invalid task ID format", param="task_id"),
        ),
    )
    with client_for(api) as client, pytest.raises(BadRequestError) as info:
        client.get_task("nope")
    err = info.value
    assert (err.status_code, err.code, err.param, err.request_id) == (
        400,
        "invalid_task_id",
        "task_id",
        "req-123",
    )
    assert err.type == "invalid_request_error"
    assert (err.method, err.path) == ("GET", "/v1/tasks/nope")


def test_older_integer_codes_and_fallback_suggestion() -> None:
    api = FakeAPI(FakeClock())
    body = error_body(
        429, "Rate limit exceeded", "rate_limit_error", fallback_suggestion="retry after 60 seconds"
    )
    script(api, *[answer(429, {"Retry-After": "1"}, body)] * 3)
    with client_for(api) as client, pytest.raises(RateLimitError) as info:
        client.get_credits()
    assert info.value.code == 429
    assert info.value.fallback_suggestion == "retry after 60 seconds"
    assert info.value.retry_after == 1.0


def test_non_json_error_body() -> None:
    api = FakeAPI(FakeClock())
    html = lambda r: httpx.Response(502, text="<html>Bad Gateway</html>")  # noqa: E731
    script(api, html, html, html)
    with client_for(api) as client, pytest.raises(InternalServerError, match="Bad Gateway"):
        client.get_credits()


@pytest.mark.parametrize("body", [b"not json", b'{"id": 1}', b"[]", b'{"data": {}}'])
def test_unparseable_success_body(body: bytes) -> None:
    api = FakeAPI(FakeClock())
    script(api, lambda r: httpx.Response(200, content=body))
    with client_for(api) as client, pytest.raises(APIResponseValidationError) as info:
        client.get_credits()
    assert info.value.status_code == 200
    assert info.value.path == "/v1/credits"


def test_task_id_is_quoted_into_the_path() -> None:
    api = FakeAPI(FakeClock())
    with client_for(api) as client, pytest.raises(NotFoundError):
        client.get_task("../credits")
    assert api.requests[-1].url.raw_path == b"/v1/tasks/..%2Fcredits"


# --- arithmetic --------------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap() -> None:
    assert [backoff_delay(EXACT, i) for i in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delay(EXACT, 10_000) == 8.0


@given(st.integers(0, 50), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_full_jitter_stays_within_zero_and_the_cap(retry_index: int, seed: int) -> None:
    policy = RetryPolicy()
    cap = min(8.0, 0.5 * 2**retry_index)
    delay = backoff_delay(policy, retry_index, random.Random(seed))
    assert 0.0 <= delay <= cap


def test_full_jitter_spreads() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(RetryPolicy(), 4, rng) for _ in range(500)]
    assert min(delays) < 1.0
    assert max(delays) > 7.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"Retry-After": "0"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "7"}, 7.0),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == 30.0


def test_retry_delay_honours_hints_only_up_to_the_cap() -> None:
    assert retry_delay(EXACT, 0, 2.0) == 2.0
    assert retry_delay(EXACT, 0, 60.0) == 60.0
    assert retry_delay(EXACT, 1, 61.0) == 1.0
    assert retry_delay(EXACT, 2, None) == 2.0
    assert retry_delay(RetryPolicy(jitter=False, max_retry_after=5), 0, 6.0) == 0.5


# --- construction ------------------------------------------------------------------------------


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZIMAGE_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ZIMAGE_API_KEY"):
        ZImageClient()
    with pytest.raises(ConfigurationError, match="ZIMAGE_API_KEY"):
        AsyncZImageClient(api_key="  ")


def test_key_and_base_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIMAGE_API_KEY", CANARY_KEY)
    monkeypatch.setenv("ZIMAGE_BASE_URL", "http://127.0.0.1:9/")
    with ZImageClient() as client:
        assert client.base_url == "http://127.0.0.1:9"
    monkeypatch.delenv("ZIMAGE_BASE_URL")
    with ZImageClient() as client:
        assert client.base_url == "https://api.evolink.ai"
        assert repr(client) == "ZImageClient(base_url='https://api.evolink.ai')"


@pytest.mark.parametrize("base_url", ["ftp://x", "not a url", "https://user:pw@host"])
def test_bad_base_url(base_url: str) -> None:
    with pytest.raises(ConfigurationError):
        ZImageClient(CANARY_KEY, base_url=base_url)


def test_http_client_injection_is_used_and_not_closed() -> None:
    api = FakeAPI(FakeClock())
    http = httpx.Client(transport=api.transport(), headers={"X-Team": "imaging"})
    with ZImageClient(CANARY_KEY, base_url=API, http_client=http) as client:
        client.get_credits()
    assert not http.is_closed
    assert api.requests[-1].headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert "authorization" not in http.headers
    http.close()
    with pytest.raises(ConfigurationError):
        ZImageClient(CANARY_KEY, http_client=http, transport=api.transport())
