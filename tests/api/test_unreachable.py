"""A base URL nobody answers at: a loopback port nobody listens on (connection refused) and a
``.invalid`` host name (it never resolves, and asking sends nothing off the machine).

Real sockets, real clients: the error names the base URL and the likely cause, it comes within
the short unreachable window however many retries the policy allows, and it is an
:class:`APIUnreachableError` (also an :class:`APIConnectionError`, so older handlers still match).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from zimage_dagster.api import (
    APIConnectionError,
    APIUnreachableError,
    AsyncZImageClient,
    GenerationRequest,
    RetryPolicy,
    ZImageClient,
)
from zimage_dagster.api._core import UNREACHABLE_RETRY_S

REQUEST = GenerationRequest(prompt="a red fox", seed=7)
#: Many retries, long backoff: the unreachable window, not the policy, must bound the call.
PATIENT = RetryPolicy(max_retries=20, initial_backoff=0.5, max_backoff=8.0)


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` of a port that was free a moment ago (nobody listens)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


BASE_URLS = {
    "refused": (closed_port_url, "connection refused"),
    "dns": (lambda: "http://zimage-no-such-host.invalid:8000", "does not resolve"),
}


CALLS: dict[str, Callable[[ZImageClient], object]] = {
    "create": lambda c: c.create_task(REQUEST),
    "credits": lambda c: c.get_credits(),
    "get_task": lambda c: c.get_task("task-unified-1700000000-abcdefgh"),
}


@pytest.mark.parametrize("case", sorted(BASE_URLS))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_sync_client_says_where_and_why_within_the_window(case: str, call: str) -> None:
    make_url, reason = BASE_URLS[case]
    url = make_url()
    with ZImageClient("sk-test", base_url=url, retry=PATIENT) as client:
        began = time.monotonic()
        with pytest.raises(APIUnreachableError) as info:
            CALLS[call](client)
        elapsed = time.monotonic() - began
    text = str(info.value)
    for expected in (url, reason, "ZIMAGE_BASE_URL", "emulator"):
        assert expected in text
    assert isinstance(info.value, APIConnectionError)
    assert info.value.base_url == url
    # A refusal is retried within the window (a server may be starting); a name that does not
    # exist is not retried at all.
    assert elapsed < (UNREACHABLE_RETRY_S + 2.0 if case == "refused" else 2.0), elapsed


@pytest.mark.parametrize("case", sorted(BASE_URLS))
def test_async_client_says_where_and_why_within_the_window(case: str) -> None:
    make_url, reason = BASE_URLS[case]
    url = make_url()

    async def main() -> tuple[BaseException, float]:
        async with AsyncZImageClient("sk-test", base_url=url, retry=PATIENT) as client:
            began = time.monotonic()
            try:
                await client.create_task(REQUEST)
            except APIUnreachableError as exc:
                return exc, time.monotonic() - began
        raise AssertionError("the create did not fail")

    error, elapsed = asyncio.run(main())
    assert url in str(error)
    assert reason in str(error)
    assert elapsed < UNREACHABLE_RETRY_S + 2.0, elapsed


def test_the_key_is_not_in_the_error() -> None:
    key = "sk-evo-canary-unreachable-0123456789"
    url = closed_port_url()
    with (
        ZImageClient(key, base_url=url, retry=RetryPolicy(max_retries=0)) as c,
        pytest.raises(APIUnreachableError) as info,
    ):
        c.create_task(REQUEST)
    assert key not in f"{info.value}{info.value!r}{info.value.__cause__!r}"
