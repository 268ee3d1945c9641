"""The clients against a service shaped like the real one, over real HTTP on loopback: https
under a private CA, files from another origin, request IDs, cancelled tasks, and file hosts that
trickle, bomb or redirect (small servers of our own, on loopback)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pydantic
import pytest

from zimage_dagster import __version__
from zimage_dagster.api import (
    USER_AGENT,
    APIConnectionError,
    APIStatusError,
    AsyncZImageClient,
    DownloadError,
    DownloadTimeoutError,
    GenerationRequest,
    ImageTooLargeError,
    PollPolicy,
    RequestValidationError,
    RetryPolicy,
    TaskFailedError,
    ZImageClient,
)
from zimage_dagster.emulator import EmulatorConfig, EmulatorServer

from ._fakes import CANARY_KEY, FakeAPI, FakeClock, png_bytes
from .test_retries import client_for

FAST = PollPolicy(min_interval=0.02, initial_interval=0.05, max_interval=0.2)
REQ = GenerationRequest(prompt="a lighthouse at dusk", seed=5)


@pytest.fixture
def emu(emulator: Any) -> Any:
    emulator.configure(estimated_time=1, latency_s=0.2)
    return emulator


def test_user_agent_names_the_package_and_httpx() -> None:
    assert re.fullmatch(r"zimage-dagster/\S+ httpx/\S+", USER_AGENT)
    assert f"zimage-dagster/{__version__} httpx/{httpx.__version__}" == USER_AGENT
    api = FakeAPI(FakeClock(), pending_s=0.0, processing_s=0.5)
    with client_for(api) as client:
        client.generate(REQ)
    sent = [*api.requests, *api.file_requests]
    assert len(sent) >= 3
    assert {r.headers["user-agent"] for r in sent} == {USER_AGENT}


def test_https_with_the_emulator_ca_and_files_from_their_own_origin() -> None:
    with EmulatorServer(EmulatorConfig.for_tests(), tls=True) as emu:
        assert emu.ca_path is not None
        with ZImageClient(emu.api_key, base_url=emu.url, verify=emu.ca_path, poll=FAST) as client:
            result = client.generate(REQ)
        assert result.image.format == "WEBP"
        assert result.task.result_url is not None
        assert result.task.result_url.startswith(f"{emu.files_url}/")
        assert httpx.URL(emu.files_url).port != httpx.URL(emu.url).port
        stats = emu.stats()
        assert stats["file_requests"] == 1
        assert stats["file_requests_with_authorization"] == 0  # the key never reached the file host
        with (
            ZImageClient(emu.api_key, base_url=emu.url, retry=RetryPolicy(max_retries=0)) as bare,
            pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            bare.get_credits()  # the system CAs do not know the emulator's


def test_async_client_over_https_with_the_ca() -> None:
    async def main(emu: EmulatorServer) -> str:
        async with AsyncZImageClient(
            emu.api_key, base_url=emu.url, verify=emu.ca_path or True, poll=FAST
        ) as client:
            return (await client.generate(REQ)).image.format

    with EmulatorServer(EmulatorConfig.for_tests(), tls=True) as emu:
        assert asyncio.run(main(emu)) == "WEBP"


def test_a_ca_bundle_path_that_does_not_exist_is_a_clear_error(tmp_path: Any) -> None:
    from zimage_dagster.api import ConfigurationError

    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigurationError, match="no CA bundle file"):
        ZImageClient(CANARY_KEY, base_url="https://127.0.0.1:1", verify=missing)


def test_errors_carry_the_request_id_of_the_answer(emu: Any) -> None:
    emu.configure(http_faults=[{"route": "credits", "status": 503, "count": 5}])
    with ZImageClient(emu.api_key, base_url=emu.url, retry=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(APIStatusError) as info:
            client.get_credits()
        assert info.value.request_id
        assert re.fullmatch(r"[0-9a-f]{32}", info.value.request_id)
        assert f"request id {info.value.request_id}" in str(info.value)
        emu.configure(
            http_faults=[], failure_rules=[{"pattern": "lighthouse", "code": "service_error"}]
        )
        with pytest.raises(TaskFailedError) as failed:
            client.generate(REQ, max_task_attempts=1)
        assert failed.value.request_id
        assert failed.value.request_id in str(failed.value)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-request-id": "req-A", "x-oneapi-request-id": "one-B"}, "req-A / one-B"),
        ({"x-oneapi-request-id": "only-one"}, "only-one"),
        ({"x-request-id": "same", "x-oneapi-request-id": "same"}, "same"),
    ],
)
def test_both_request_id_headers_are_read(headers: dict[str, str], expected: str) -> None:
    api = FakeAPI(FakeClock())
    api.hook = lambda request: httpx.Response(500, json={}, headers=headers)
    with (
        client_for(api, retry=RetryPolicy(max_retries=0)) as client,
        pytest.raises(APIStatusError) as info,
    ):
        client.get_credits()
    assert info.value.request_id == expected
    assert f"request id {expected}" in str(info.value)


def test_every_log_line_about_an_answer_names_its_request_id(
    emu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zimage_dagster.api")
    with ZImageClient(emu.api_key, base_url=emu.url, poll=FAST) as client:
        client.generate(REQ)
    answers = [r.getMessage() for r in caplog.records if re.search(r"-> HTTP|poll \d|created task|downloaded|completed after", r.getMessage())]  # fmt: skip
    assert len(answers) >= 4
    for line in answers:
        assert re.search(r"request id [0-9a-f]{32}", line), line


def test_a_cancelled_task_is_resubmitted(emu: Any) -> None:
    emu.configure(
        failure_rules=[
            {"pattern": "lighthouse", "code": "request_cancelled", "status": "cancelled"}
        ]
    )
    created: list[str] = []

    def after_create(task: Any) -> None:
        created.append(task.id)
        emu.configure(failure_rules=[])  # only the first task is cancelled

    with ZImageClient(emu.api_key, base_url=emu.url, poll=FAST) as client:
        result = client.generate(REQ, on_task_created=after_create)
    assert result.attempts == 2
    assert emu.stats()["tasks_created"] == 2  # one resubmission, never more
    first, second = emu.tasks()
    assert first["status"] == "cancelled"
    assert second["status"] == "completed"
    assert result.task_ids == (first["id"], second["id"])


def test_canceled_spelling_fails_with_request_cancelled_and_is_retryable(emu: Any) -> None:
    emu.configure(
        failure_rules=[{"pattern": "lighthouse", "code": "request_cancelled", "status": "canceled"}]
    )
    with (
        ZImageClient(emu.api_key, base_url=emu.url, poll=FAST) as client,
        pytest.raises(TaskFailedError) as info,
    ):
        client.generate(REQ, max_task_attempts=2)
    assert (info.value.code, info.value.retryable) == ("request_cancelled", True)
    assert emu.stats()["tasks_created"] == 2


def test_lone_surrogate_prompts_are_refused_before_any_request(emu: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"lone surrogate \(U\+D83D\) at index 6"):
        GenerationRequest(prompt="a cat \ud83d")
    smuggled = GenerationRequest.model_construct(
        model="z-image-turbo", prompt="a cat \ud83d", seed=1, size="1:1", nsfw_check=False
    )
    with (
        ZImageClient(emu.api_key, base_url=emu.url) as client,
        pytest.raises(RequestValidationError, match="lone surrogate"),
    ):
        client.create_task(smuggled)
    assert emu.stats()["tasks_created"] == 0
    assert emu.stats()["requests_total"] == 0


# --- file hosts that misbehave -----------------------------------------------------------------

Handler = Callable[[BaseHTTPRequestHandler], None]


class FileHost:
    """A loopback HTTP server answering every GET with `handler`; counts the requests."""

    def __init__(self, handler: Handler) -> None:
        host = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                host.requests += 1
                handler(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FileHost:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def trickle(handler: BaseHTTPRequestHandler) -> None:
    """1 byte per second of a 600-byte body: every read is quick, the whole takes 10 minutes."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", "600")
    handler.end_headers()
    try:
        for _ in range(600):
            handler.wfile.write(b"\x89")
            handler.wfile.flush()
            time.sleep(1.0)
    except OSError:
        return  # the client gave up


@pytest.fixture
def trickling() -> Iterator[FileHost]:
    with FileHost(trickle) as host:
        yield host


def test_a_trickling_file_host_is_cut_at_the_total_deadline(trickling: FileHost) -> None:
    with ZImageClient(CANARY_KEY, base_url=trickling.url, timeout=30.0, deadline=2.0) as client:
        start = time.monotonic()
        with pytest.raises(DownloadTimeoutError):
            client.download(f"{trickling.url}/a.png")
    assert 1.9 <= time.monotonic() - start < 4.0  # not the 30 s read timeout, not 10 minutes


def test_a_trickling_file_host_is_cut_at_the_total_deadline_async(trickling: FileHost) -> None:
    async def main() -> float:
        async with AsyncZImageClient(
            CANARY_KEY, base_url=trickling.url, timeout=30.0, deadline=2.0
        ) as client:
            start = time.monotonic()
            with pytest.raises(DownloadTimeoutError):
                await client.download(f"{trickling.url}/a.png")
            return time.monotonic() - start

    assert 1.9 <= asyncio.run(main()) < 3.0


BOMB = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # 200 MiB in ~200 KiB


def gzip_bomb(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(BOMB)))
    handler.end_headers()
    try:
        handler.wfile.write(BOMB)
    except OSError:
        return


def test_a_gzip_bomb_is_cut_near_the_cap_after_decoding() -> None:
    cap = 2 * 1024 * 1024
    with FileHost(gzip_bomb) as host, ZImageClient(CANARY_KEY, base_url=host.url, max_download_bytes=cap) as client:  # fmt: skip
        tracemalloc.start()
        try:
            with pytest.raises(ImageTooLargeError, match="while streaming"):
                client.download(f"{host.url}/bomb.png")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(BOMB) < cap  # the compressed body is under the cap: only decoding shows the bomb
    assert peak < 3 * cap, peak  # never inflated whole (200 MiB)


def test_a_gzip_encoded_image_is_decoded_and_counted() -> None:
    image = png_bytes()

    def gzipped(handler: BaseHTTPRequestHandler) -> None:
        body = gzip.compress(image)
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with FileHost(gzipped) as host, ZImageClient(CANARY_KEY, base_url=host.url) as client:
        downloaded = client.download(f"{host.url}/ok.png")
    assert downloaded.data == image
    assert downloaded.format == "PNG"


def redirect_to(target: Callable[[], str]) -> Handler:
    def handler(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", target())
        h.send_header("Content-Length", "0")
        h.end_headers()

    return handler


def test_redirects_to_internal_addresses_are_refused_unless_testing_locally() -> None:
    image = png_bytes()

    def serve(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(len(image)))
        h.end_headers()
        h.wfile.write(image)

    with FileHost(serve) as inside, FileHost(redirect_to(lambda: f"{inside.url}/real.png")) as hop:
        with (
            ZImageClient(CANARY_KEY, base_url=hop.url) as client,
            pytest.raises(DownloadError, match="internal address refused"),
        ):
            client.download(f"{hop.url}/a.png")
        assert inside.requests == 0  # never reached
        with ZImageClient(CANARY_KEY, base_url=hop.url, allow_internal_redirects=True) as local:
            assert local.download(f"{hop.url}/a.png").data == image
        assert inside.requests == 1


def test_redirect_loops_are_cut() -> None:
    holder: list[str] = []
    with FileHost(redirect_to(lambda: f"{holder[0]}/again.png")) as loop:
        holder.append(loop.url)
        with (
            ZImageClient(CANARY_KEY, base_url=loop.url, allow_internal_redirects=True) as client,
            pytest.raises(DownloadError, match="more than 5 redirects"),
        ):
            client.download(f"{loop.url}/a.png")
    assert loop.requests == 6
