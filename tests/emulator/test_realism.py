"""The emulator as the real service looks from outside: WebP from a file host of its own, https
under a CA the client must be given, request IDs, `cancelled`, and hostile control input refused."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest

from tests.emulator._support import VALID, SpecClient
from zimage_dagster.emulator import EmulatorConfig, EmulatorServer
from zimage_dagster.emulator.app import MAX_BODY_BYTES, create_app


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[SpecClient]:
    with SpecClient(emulator.url, emulator.api_key) as client:
        yield client


def _completed(api: SpecClient, emulator: EmulatorServer, **fields: Any) -> dict[str, Any]:
    task = api.post("/v1/images/generations", json={**VALID, **fields}).json()
    emulator.advance_clock(5)
    body: dict[str, Any] = api.get(f"/v1/tasks/{task['id']}").json()
    return body


def test_tls_mode_serves_both_origins_over_https_under_its_own_ca() -> None:
    with EmulatorServer(EmulatorConfig.for_tests(), tls=True) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        assert emu.files_url.startswith("https://localhost:")
        assert emu.ca_path is not None
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{emu.url}/v1/credits", trust_env=False)  # the system CAs do not know it
        context = ssl.create_default_context(cafile=emu.ca_path)
        with SpecClient(emu.url, emu.api_key, verify=context) as api:
            body = _completed(api, emu)
            assert body["status"] == "completed", body
            (url,) = body["results"]
            assert url.startswith(f"{emu.files_url}/_files/")
            assert url.endswith(".webp")
            image = httpx.get(url, verify=context, trust_env=False)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/webp"
        assert image.content[:4] == b"RIFF"
        assert image.content[8:12] == b"WEBP"
        assert emu.stats()["file_requests_with_authorization"] == 0
    assert not os.path.exists(emu.ca_path)  # the throwaway CA is gone


def test_the_file_origin_serves_files_only_and_the_api_no_files(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    url = _completed(api, emulator)["results"][0]
    path = url[len(emulator.files_url) :]
    assert api.get(emulator.url + path).status_code == 404  # not from the API's origin
    assert httpx.get(url, trust_env=False).status_code == 200
    files = httpx.get(f"{emulator.files_url}/v1/credits", trust_env=False)
    assert files.status_code == 404  # and the file host answers no API route


def test_links_use_the_configured_public_url_never_the_host_header(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    first = api.get("/v1/credits")  # warm
    assert first.status_code == 200
    task = api.post(
        "/v1/images/generations", json=VALID, headers={"Host": "evil.example.com"}
    ).json()
    emulator.advance_clock(5)
    body = api.get(f"/v1/tasks/{task['id']}", headers={"Host": "evil.example.com"}).json()
    assert body["results"][0].startswith(emulator.files_url + "/_files/")
    emulator.configure(public_files_url="https://files-api.example.test")
    body = _completed(api, emulator)
    assert body["results"][0].startswith("https://files-api.example.test/_files/")


def test_every_answer_carries_a_request_id(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(http_faults=[{"route": "credits", "status": 503, "count": 1}])
    answers = [
        api.get("/v1/credits"),  # an injected fault
        api.get("/v1/credits"),
        api.post("/v1/images/generations", json={"model": "z-image-turbo"}),  # a 400
        api.get("/nowhere"),
        httpx.get(f"{emulator.url}/_emulator/stats", trust_env=False),
        httpx.get(f"{emulator.files_url}/_files/none.webp", trust_env=False),
    ]
    assert [r.status_code for r in answers] == [503, 200, 400, 404, 200, 404]
    ids = [r.headers.get("x-request-id") for r in answers]
    assert all(ids), ids
    assert len(set(ids)) == len(ids), ids


def test_method_not_allowed_says_what_is(api: SpecClient) -> None:
    response = api.delete("/v1/credits")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    create = api.get("/v1/images/generations")
    assert create.headers["allow"] == "POST"
    assert create.json()["error"]["code"] == "method_not_allowed"


def test_a_failure_rule_can_cancel_a_task(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(
        failure_rules=[
            {"pattern": "cancel me", "code": "request_cancelled", "status": "cancelled"},
            {"pattern": "us spelling", "code": "request_cancelled", "status": "canceled"},
        ]
    )
    # (outside the documented status enum, so read without the conformance check)
    plain = httpx.Client(
        base_url=emulator.url,
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        trust_env=False,
    )
    for prompt, status in (("please cancel me", "cancelled"), ("us spelling", "canceled")):
        task = plain.post("/v1/images/generations", json={**VALID, "prompt": prompt}).json()
        emulator.advance_clock(5)
        body = plain.get(f"/v1/tasks/{task['id']}").json()
        assert body["status"] == status
        assert body["error"]["code"] == "request_cancelled"
        assert "results" not in body
    bad = api.post(
        "/_emulator/config",
        json={"failure_rules": [{"pattern": "x", "code": "c", "status": "paused"}]},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "failure_rules[0].status"


@pytest.mark.parametrize("raw", ['{"advance_s": Infinity}', '{"advance_s": NaN}', '{"advance_s": -Infinity}', '{"advance_s": 1e300}'])  # fmt: skip
def test_the_clock_refuses_non_finite_or_absurd_shifts(
    raw: str, api: SpecClient, emulator: EmulatorServer
) -> None:
    before = emulator.stats()["clock"]["skew_s"]
    response = httpx.post(
        f"{emulator.url}/_emulator/clock",
        content=raw,
        headers={"content-type": "application/json"},
        trust_env=False,
    )
    assert response.status_code == 400, response.text
    assert emulator.stats()["clock"]["skew_s"] == before
    offset = httpx.post(
        f"{emulator.url}/_emulator/config",
        content=raw.replace("advance_s", "clock_offset_s"),
        trust_env=False,
    )
    assert offset.status_code == 400
    assert api.get("/v1/credits").status_code == 200  # still serving


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("(a+)+$", "a repeat inside a repeat"),
        ("(a|aa)*$", "a branch inside a repeat"),
        ("(\\w+\\s?)*!", "a repeat inside a repeat"),
        ("(x)\\1", "backreferences"),
        ("(unclosed", "bad regex"),
        ("a" * 257, "longer than 256"),
    ],
)
def test_costly_or_invalid_failure_rule_regexes_are_refused(
    pattern: str, why: str, emulator: EmulatorServer
) -> None:
    response = httpx.post(
        f"{emulator.url}/_emulator/config",
        json={"failure_rules": [{"pattern": pattern, "code": "service_error"}]},
        trust_env=False,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "failure_rules[0].pattern"
    assert why in error["message"]


def test_an_accepted_rule_matches_a_long_prompt_quickly(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    emulator.configure(failure_rules=[{"pattern": "(?:ab)+c", "code": "service_error"}])
    start = time.monotonic()
    response = api.post("/v1/images/generations", json={**VALID, "prompt": "ab" * 999 + "!"})
    assert response.status_code == 200
    assert time.monotonic() - start < 5.0


def test_lone_surrogates_are_refused_with_the_field_named(api: SpecClient) -> None:
    for field, body in (
        ("prompt", '{"model": "z-image-turbo", "prompt": "a cat \\ud83d"}'),
        ("callback_url", '{"model": "z-image-turbo", "prompt": "a", "callback_url": "https://x.example/\\udc00"}'),
    ):  # fmt: skip
        response = api.post(
            "/v1/images/generations", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == field
        assert "lone surrogate" in response.json()["error"]["message"]
    paired = '{"model": "z-image-turbo", "prompt": "a cat \\ud83d\\udc31"}'  # a real emoji
    ok = api.post("/v1/images/generations", content=paired)
    assert ok.status_code == 200


def test_a_declared_oversized_body_is_refused_unread(api: SpecClient) -> None:
    response = api.post(
        "/v1/images/generations",
        content=b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert api.get("/v1/credits").status_code == 200


def test_an_oversized_streamed_body_is_cut_while_reading() -> None:
    """60 MB sent in 64 KiB chunks without a length: the app stops pulling chunks near the
    limit and answers 413 (checked at the ASGI boundary, where what was read can be counted)."""
    app = create_app(EmulatorConfig.for_tests())
    chunk = b" " * 65536
    total = 60 * 1024 * 1024 // len(chunk)
    pulled = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < total}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/images/generations", "raw_path": b"/v1/images/generations",
        "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [(b"authorization", b"Bearer sk-test"), (b"content-type", b"application/json")],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert pulled * len(chunk) <= MAX_BODY_BYTES + len(chunk)
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


def test_cli_tls_prints_the_api_url_the_files_url_and_the_ca_path() -> None:
    command = [sys.executable, "-m", "zimage_dagster.emulator", "--tls", "--latency", "0.05"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        url, files_url, ca_path = (process.stdout.readline().strip() for _ in range(3))
        assert url.startswith("https://127.0.0.1:")
        assert files_url.startswith("https://localhost:")
        context = ssl.create_default_context(cafile=ca_path)
        response = httpx.get(
            f"{url}/v1/credits", headers={"Authorization": "Bearer sk-x"}, verify=context
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"]
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_a_client_gone_mid_body_is_counted_not_logged_as_a_crash(
    emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A run SIGKILLed while sending a create leaves a half-sent body: the emulator counts a 499
    (client closed request) and logs no 'Exception in ASGI application', creates no task."""
    url = httpx.URL(emulator.url)
    head = (
        "POST /v1/images/generations HTTP/1.1\r\nHost: emulator\r\n"
        f"Authorization: Bearer {emulator.api_key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    with caplog.at_level(logging.ERROR):
        with socket.create_connection((url.host, url.port or 80)) as sock:
            sock.sendall(head.encode() + b'{"model": "z-image-turbo",')
        deadline = time.monotonic() + 10
        while emulator.stats()["requests"].get("create") is None:
            assert time.monotonic() < deadline, "the emulator never saw the request end"
            time.sleep(0.02)
    assert emulator.stats()["requests"]["create"] == {"499": 1}
    assert emulator.stats()["tasks_created"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
