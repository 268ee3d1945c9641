"""The API key never shows: not in errors (str, repr, tracebacks, pickles), reprs, or DEBUG logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import traceback
from collections.abc import Callable

import httpx
import pytest

from zimage_dagster.api import (
    AsyncZImageClient,
    ConfigurationError,
    GenerationRequest,
    PollPolicy,
    RetryPolicy,
    ZImageClient,
    ZImageError,
)

from ._fakes import API, CANARY_KEY, FILES, FakeAPI, FakeClock, error_body
from .test_retries import script

REQ = GenerationRequest(prompt="a cute cat", seed=3)
FRAGMENTS = (CANARY_KEY, CANARY_KEY[7:], CANARY_KEY[-12:])


def assert_clean(text: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, (
            f"API key fragment leaked: ...{text[max(0, text.find(fragment) - 60) :][:160]}"
        )


def every_view(err: BaseException) -> str:
    views = [str(err), repr(err), "".join(traceback.format_exception(err)), repr(err.__dict__)]
    with contextlib.suppress(pickle.PicklingError, TypeError, AttributeError):
        views.append(repr(pickle.loads(pickle.dumps(err)).__dict__))
    return "\n".join(views)


def echo(
    status: int, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    """A server that echoes the caller's Authorization header everywhere it can."""

    def respond(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        hdrs = {"x-request-id": f"req {auth}", **(headers or {})}
        body = error_body(
            f"code {auth}",
            f"bad token {auth}",
            f"type {auth}",
            param=f"p {auth}",
            fallback_suggestion=f"fs {auth}",
        )
        return httpx.Response(status, json=body, headers=hdrs)

    return respond


def leaky_success(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, content=f'{{"status": 5, "id": "{request.headers["authorization"]}"}}'.encode()
    )


SCENARIOS: dict[str, list[object]] = {
    "401 echo": [echo(401)],
    "400 echo": [echo(400)],
    "402 echo": [echo(402)],
    "403 echo": [echo(403)],
    "404 echo": [echo(404)],
    "429 exhausted": [echo(429, {"retry-after": "1"})] * 3,
    "500 exhausted": [echo(500)] * 3,
    "connect error": [httpx.ConnectError(f"refused {CANARY_KEY}")] * 3,
    "read timeout after send": [httpx.ReadTimeout(f"timeout {CANARY_KEY}")] * 3,
    "protocol error": [httpx.RemoteProtocolError(f"dropped {CANARY_KEY}")] * 3,
    "unparseable success": [leaky_success],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize("operation", ["create", "get_task", "credits"])
def test_canary_key_absent_from_every_http_error(name: str, operation: str) -> None:
    api = FakeAPI(FakeClock())
    script(api, *SCENARIOS[name])  # type: ignore[arg-type]
    with ZImageClient(
        CANARY_KEY, base_url=API, transport=api.transport(), clock=api.clock, sleep=api.clock.sleep
    ) as client:
        call = {
            "create": lambda: client.create_task(REQ),
            "get_task": lambda: client.get_task("task-unified-1-abcdefgh"),
            "credits": client.get_credits,
        }[operation]
        with pytest.raises(ZImageError) as info:
            call()
    assert_clean(every_view(info.value))
    if "echo" in name:
        assert "[REDACTED]" in str(info.value)


def test_canary_key_absent_from_deadline_errors() -> None:
    api = FakeAPI(FakeClock())
    script(api, *[echo(500)] * 10)
    with (
        ZImageClient(
            CANARY_KEY,
            base_url=API,
            transport=api.transport(),
            clock=api.clock,
            sleep=api.clock.sleep,
            deadline=1.0,
            retry=RetryPolicy(jitter=False, max_retries=9),
        ) as client,
        pytest.raises(ZImageError) as info,
    ):
        client.get_credits()
    assert_clean(every_view(info.value))


@pytest.mark.parametrize(
    "setup",
    [
        "failed task",
        "unknown status",
        "wait timeout",
        "expired",
        "not an image",
        "too large",
        "file 500",
    ],
)
def test_canary_key_absent_from_task_and_download_errors(setup: str) -> None:
    api = FakeAPI(FakeClock(), echo_key_in_errors=True)
    if setup == "failed task":
        api.failures = [("content_policy_violation", f"blocked {CANARY_KEY}")]
    if setup == "unknown status":
        api.status_override = CANARY_KEY
    if setup == "wait timeout":
        api.processing_s = 10_000
    file_answers = {
        "expired": httpx.Response(410, text=CANARY_KEY),
        "not an image": httpx.Response(200, content=CANARY_KEY.encode()),
        "too large": httpx.Response(200, content=b"x" * 2000),
        "file 500": httpx.Response(500, text=CANARY_KEY),
    }
    if setup in file_answers:
        api.serve_file = lambda request: file_answers[setup]  # type: ignore[method-assign]
    with (
        ZImageClient(
            CANARY_KEY,
            base_url=API,
            transport=api.transport(),
            clock=api.clock,
            sleep=api.clock.sleep,
            max_download_bytes=1000,
            poll=PollPolicy(deadline=60.0),
        ) as client,
        pytest.raises(ZImageError) as info,
    ):
        client.generate(REQ)
    assert_clean(every_view(info.value))


def test_wrong_key_error_does_not_echo_the_key() -> None:
    api = FakeAPI(FakeClock(), api_key="sk-evo-the-right-one", echo_key_in_errors=True)
    with (
        ZImageClient(CANARY_KEY, base_url=API, transport=api.transport()) as client,
        pytest.raises(ZImageError) as info,
    ):
        client.get_credits()
    assert_clean(every_view(info.value))


def test_client_repr_and_state_show_no_key() -> None:
    for client in (
        ZImageClient(CANARY_KEY, base_url=API),
        AsyncZImageClient(CANARY_KEY, base_url=API),
    ):
        assert_clean(repr(client))
        assert_clean(str(client))
        assert_clean(repr(vars(client)))
        assert_clean(repr(vars(client._core)))
        assert "base_url='https://api.zimage.test'" in repr(client)
        assert "sk-" not in repr(client)
        with pytest.raises(TypeError):
            pickle.dumps(client._core._key)
    asyncio.run(client.aclose())  # type: ignore[union-attr]


def test_no_default_authorization_header_on_the_http_client() -> None:
    with ZImageClient(CANARY_KEY, base_url=API) as client:
        assert "authorization" not in client._http.headers
        assert client._http.auth is None


@pytest.mark.parametrize(
    "bad", [f"{CANARY_KEY} x", f"{CANARY_KEY}\r\nX-Evil: 1", f"sk-evo-é{CANARY_KEY}"]
)
def test_malformed_key_message_does_not_echo_it(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ZImageClient(bad, base_url=API)
    assert_clean(every_view(info.value))


def test_debug_logs_of_every_layer_never_contain_the_key(caplog: pytest.LogCaptureFixture) -> None:
    """zimage_dagster, httpx and httpcore at DEBUG, through success, retries and errors."""
    caplog.set_level(logging.DEBUG)
    for name in ("zimage_dagster", "zimage_dagster.api", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    api = FakeAPI(
        FakeClock(), echo_key_in_errors=True, failures=[("service_error", f"x {CANARY_KEY}")]
    )
    script(api, httpx.ConnectError("refused"), echo(429, {"retry-after": "1"}))
    with ZImageClient(
        CANARY_KEY, base_url=API, transport=api.transport(), clock=api.clock, sleep=api.clock.sleep
    ) as client:
        client.generate(REQ)
        with pytest.raises(ZImageError):
            client.get_task("task-unified-0-missing0")
    records = caplog.records
    assert any(r.name.startswith("zimage_dagster.api") for r in records)
    assert any("[REDACTED]" in r.getMessage() for r in records)  # headers are logged, redacted
    for record in records:
        assert_clean(record.getMessage())
    assert_clean(caplog.text)
    ours = "".join(r.getMessage() for r in records if r.name.startswith("zimage_dagster"))
    assert FILES in ours  # the download is logged...
    assert "signed-secret" not in ours  # ...without the link's query string
