"""Downloads: streaming size caps, safe decoding, expiry, and never sending the key to the file host."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from zimage_dagster.api import (
    DownloadError,
    GenerationRequest,
    ImageTooLargeError,
    NotAnImageError,
    ResultExpiredError,
    RetryPolicy,
    ZImageClient,
    decode_image,
)

from ._fakes import API, CANARY_KEY, FILES, FakeAPI, FakeClock, png_bytes

URL = f"{FILES}/task-unified-1-abcdefgh.png?token=signed-secret&expires=123"
CLEAN = f"{FILES}/task-unified-1-abcdefgh.png"


class FileHost:
    """A file host behind MockTransport that records what it was sent."""

    def __init__(self, respond: httpx.Response | None = None) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert self.respond is not None
        return self.respond


def client_with(host: FileHost, **kw: object) -> ZImageClient:
    clock = FakeClock()
    return ZImageClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(host),
        clock=clock,
        sleep=clock.sleep,
        retry=RetryPolicy(jitter=False),
        **kw,  # type: ignore[arg-type]
    )


def image_bytes(fmt: str, size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "orange").save(buf, fmt)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose header is rewritten to declare ``width`` x ``height``."""
    data = bytearray(png_bytes(1, 1))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13 : ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_real_images_are_decoded_and_described(fmt: str, mime: str) -> None:
    body = image_bytes(fmt)
    host = FileHost(httpx.Response(200, content=body, headers={"content-type": mime}))
    with client_with(host) as client:
        image = client.download(URL, task_id="task-unified-1-abcdefgh")
    assert (image.format, image.width, image.height) == (fmt, 96, 64)
    assert image.sha256 == hashlib.sha256(body).hexdigest()
    assert image.bytes == len(body)
    assert image.data == body
    assert image.content_type == mime
    assert image.url == CLEAN
    assert image.to_pil().size == (96, 64)
    assert "data=" not in repr(image)


def test_no_authorization_header_reaches_the_file_host_even_from_an_injected_client() -> None:
    host = FileHost(httpx.Response(200, content=png_bytes()))
    http = httpx.Client(
        transport=httpx.MockTransport(host),
        headers={"Authorization": f"Bearer {CANARY_KEY}"},
        auth=("user", CANARY_KEY),
    )
    with ZImageClient(CANARY_KEY, base_url=API, http_client=http) as client:
        client.download(URL)
    http.close()
    assert len(host.requests) == 1
    assert "authorization" not in host.requests[0].headers
    assert CANARY_KEY not in str(host.requests[0].headers.raw)


def test_generate_never_sends_the_key_to_the_file_host_and_records_everything() -> None:
    api = FakeAPI(FakeClock())
    with ZImageClient(
        CANARY_KEY, base_url=API, transport=api.transport(), clock=api.clock, sleep=api.clock.sleep
    ) as client:
        result = client.generate(GenerationRequest(prompt="a red fox in snow", size="16:9"))
    assert api.file_requests
    for request in api.file_requests:
        assert "authorization" not in request.headers
    for request in api.requests:
        assert request.headers["authorization"] == f"Bearer {CANARY_KEY}"
    sent = next(r for r in api.requests if r.method == "POST")
    body = json.loads(sent.content)
    assert body["seed"] == result.seed
    assert 1 <= result.seed <= 2147483647
    assert result.request.seed == result.seed
    assert result.image.format == "PNG"
    assert result.attempts == 1
    assert result.polls >= 1
    assert result.task.id == result.task_ids[0]
    assert result.timings.total_s >= result.timings.queued_s + result.timings.generating_s
    assert result.timings.downloading_s == 0.0  # the fake clock does not move while downloading


def test_too_large_by_content_length_is_refused_before_reading() -> None:
    consumed: list[int] = []

    def body() -> Iterator[bytes]:
        for _ in range(100):
            consumed.append(1)
            yield b"x" * 1024

    host = FileHost(
        httpx.Response(200, headers={"content-length": str(100 * 1024)}, content=body())
    )
    with (
        client_with(host, max_download_bytes=10_000) as client,
        pytest.raises(ImageTooLargeError) as info,
    ):
        client.download(URL)
    assert "Content-Length 102400" in str(info.value)
    assert consumed == []
    assert len(host.requests) == 1


def test_too_large_while_streaming_without_content_length_stops_early() -> None:
    consumed: list[int] = []

    def body() -> Iterator[bytes]:
        for _ in range(10_000):
            consumed.append(1)
            yield b"x" * 1024

    host = FileHost(httpx.Response(200, content=body()))
    with (
        client_with(host, max_download_bytes=50_000) as client,
        pytest.raises(ImageTooLargeError) as info,
    ):
        client.download(URL)
    assert "while streaming" in str(info.value)
    assert len(consumed) < 60
    assert len(host.requests) == 1


def test_default_cap_is_50_mb() -> None:
    host = FileHost(
        httpx.Response(200, headers={"content-length": str(50 * 1024 * 1024 + 1)}, content=b"")
    )
    with client_with(host) as client, pytest.raises(ImageTooLargeError):
        client.download(URL)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>not an image</html>", "not a PNG/JPEG/WEBP image"),
        (b"", "empty body"),
        (png_bytes(200, 200)[:300], "truncated or corrupt"),
        (image_bytes("GIF"), "not a PNG/JPEG/WEBP image"),
        (image_bytes("BMP"), "not a PNG/JPEG/WEBP image"),
    ],
)
def test_not_an_image(body: bytes, message: str) -> None:
    host = FileHost(httpx.Response(200, content=body, headers={"content-type": "image/png"}))
    with client_with(host) as client, pytest.raises(NotAnImageError, match=message) as info:
        client.download(URL, task_id="task-unified-1-abcdefgh")
    assert info.value.task_id == "task-unified-1-abcdefgh"
    assert info.value.url == CLEAN


def test_truncated_jpeg_is_caught_by_a_full_load() -> None:
    body = Image.effect_noise((300, 300), 50).convert("RGB")
    buf = io.BytesIO()
    body.save(buf, "JPEG")
    with pytest.raises(NotAnImageError, match="truncated"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_an_error_of_derive_is_its_own_not_a_corrupt_image() -> None:
    """The image is intact: what ``derive`` raises is not reported as a truncated file."""

    def broken(_: Image.Image) -> None:
        raise ValueError("the caller's own bug")

    with pytest.raises(ValueError, match="the caller's own bug"):
        decode_image(png_bytes(), derive=broken)
    noise = io.BytesIO()
    Image.effect_noise((300, 300), 50).convert("RGB").save(noise, "JPEG")
    with pytest.raises(NotAnImageError, match="truncated"):  # a damaged file still is one
        decode_image(noise.getvalue()[: len(noise.getvalue()) // 2], derive=broken)


def test_header_declaring_30000_by_30000_is_refused_before_decoding() -> None:
    host = FileHost(httpx.Response(200, content=bomb_png(30000, 30000)))
    with client_with(host) as client, pytest.raises(ImageTooLargeError, match="decompression bomb"):
        client.download(URL)


def test_highly_compressible_huge_image_is_refused() -> None:
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, "PNG", optimize=True)
    assert len(buf.getvalue()) < 100_000  # tiny on the wire, 16 Mpx once decoded
    with pytest.raises(ImageTooLargeError, match="16000000 pixels"):
        decode_image(buf.getvalue())


def test_pillow_decompression_bomb_warning_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(png_bytes(40, 40), max_pixels=10**9)  # 1600 px: Pillow warns, we refuse


def test_load_truncated_images_global_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(NotAnImageError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(png_bytes())


@pytest.mark.parametrize("status", [403, 404, 410])
def test_expired_links(status: int) -> None:
    host = FileHost(httpx.Response(status, text="AccessDenied"))
    with client_with(host) as client, pytest.raises(ResultExpiredError) as info:
        client.download(URL, task_id="task-unified-1-abcdefgh")
    err = info.value
    assert err.url == CLEAN
    assert "signed-secret" not in str(err)
    assert err.task_id == "task-unified-1-abcdefgh"
    assert err.status_code == status
    assert len(host.requests) == 1


def test_file_host_5xx_is_retried_then_reported() -> None:
    host = FileHost(httpx.Response(502, text="bad gateway"))
    with client_with(host) as client, pytest.raises(DownloadError, match="HTTP 502") as info:
        client.download(URL)
    assert len(host.requests) == 3
    assert "signed-secret" not in str(info.value)


def test_file_host_connection_error_is_retried() -> None:
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(200, content=png_bytes())

    clock = FakeClock()
    with ZImageClient(
        CANARY_KEY,
        base_url=API,
        transport=httpx.MockTransport(flaky),
        clock=clock,
        sleep=clock.sleep,
    ) as client:
        assert client.download(URL).format == "PNG"
    assert len(calls) == 2


def test_redirects_on_the_file_host_are_followed_without_credentials() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "files.zimage.test":
            return httpx.Response(302, headers={"location": "https://cdn.zimage.test/x.png"})
        return httpx.Response(200, content=png_bytes())

    with ZImageClient(CANARY_KEY, base_url=API, transport=httpx.MockTransport(handler)) as client:
        assert client.download(URL).format == "PNG"
    assert [r.url.host for r in seen] == ["files.zimage.test", "cdn.zimage.test"]
    assert all("authorization" not in r.headers for r in seen)


@pytest.mark.parametrize("url", ["ftp://files/x.png", "not a url", "file:///etc/passwd"])
def test_non_http_urls_are_refused(url: str) -> None:
    host = FileHost()
    with client_with(host) as client, pytest.raises(DownloadError, match="not an http"):
        client.download(url)
    assert host.requests == []
