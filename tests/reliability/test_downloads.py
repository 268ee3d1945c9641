"""Downloads: oversize bodies, non-image content, truncated images and decompression bombs get
clear errors with bounded memory.

A file host on loopback (a real HTTP server in a thread) serves the bodies, streaming them as
they are generated; ``tracemalloc`` measures the peak of Python allocations around each download.
A 200 MB body must never be held whole: with its length declared it is refused before its first
byte is read; without, the client reads only up to its byte cap and hangs up, and the server
notices it sent just a little more than that.
"""

from __future__ import annotations

import io
import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from zimage_dagster.api import (
    DownloadError,
    ImageTooLargeError,
    NotAnImageError,
    RetryPolicy,
    ZImageClient,
)

MB = 1024 * 1024
BIG = 200 * MB
CHUNK = 64 * 1024


@dataclass
class Body:
    chunks: Callable[[], Iterator[bytes]]
    content_type: str = "image/png"
    length: int | None = None  # declared Content-Length (None: chunked)


@dataclass
class FileHost:
    url: str
    bodies: dict[str, Body] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)


def _zeros(total: int) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        # A PNG signature first, then zeros: looks like the start of an image.
        block = b"\x89PNG\r\n\x1a\n" + bytes(CHUNK - 8)
        yield block
        left = total - len(block)
        zero = bytes(CHUNK)
        while left > 0:
            yield zero[: min(CHUNK, left)]
            left -= CHUNK

    return gen


def _once(data: bytes) -> Callable[[], Iterator[bytes]]:
    return lambda: iter([data])


@pytest.fixture
def file_host() -> Iterator[FileHost]:
    host = FileHost(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            body = host.bodies.get(name)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", body.content_type)
            if body.length is not None:
                self.send_header("Content-Length", str(body.length))
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            try:
                for chunk in body.chunks():
                    if body.length is None:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                    sent += len(chunk)
                    host.sent[name] = sent
                if body.length is None:
                    self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                host.sent[name] = sent

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()


def _client(**kw: object) -> ZImageClient:
    return ZImageClient(
        api_key="sk-evo-downloads",
        base_url="http://127.0.0.1:9",  # never called: downloads go to the file host
        retry=RetryPolicy(max_retries=0),
        timeout=30.0,
        **kw,  # type: ignore[arg-type]
    )


def _download_peak(client: ZImageClient, url: str) -> tuple[BaseException, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        client.download(url)
    except DownloadError as exc:
        error: BaseException = exc
    else:  # pragma: no cover - the assertion below reports it
        raise AssertionError(f"{url} downloaded without error")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


def test_a_declared_200_mb_body_is_refused_before_reading(file_host: FileHost) -> None:
    file_host.bodies["declared.png"] = Body(_zeros(BIG), length=BIG)
    with _client() as client:
        error, peak = _download_peak(client, f"{file_host.url}/declared.png")
    assert isinstance(error, ImageTooLargeError)
    assert "Content-Length 209715200 exceeds the 52428800-byte download limit" in str(error)
    assert peak < 4 * MB, f"peak {peak / MB:.1f} MB"


@pytest.mark.parametrize("cap_mb", [5, 50])
def test_an_undeclared_200_mb_stream_is_cut_at_the_cap(file_host: FileHost, cap_mb: int) -> None:
    file_host.bodies["stream.png"] = Body(_zeros(BIG))
    cap = cap_mb * MB
    with _client(max_download_bytes=cap) as client:
        error, peak = _download_peak(client, f"{file_host.url}/stream.png")
    assert isinstance(error, ImageTooLargeError)
    assert f"download exceeded the {cap}-byte limit while streaming" in str(error)
    # Memory follows the cap, not the body: at most the cap plus a few chunks and buffers.
    assert peak < cap + 8 * MB, f"peak {peak / MB:.1f} MB with a {cap_mb} MB cap"
    # The server was cut off soon after the cap (socket buffers hold a few MB at most).
    assert file_host.sent["stream.png"] < cap + 16 * MB < BIG


def _png(width: int, height: int, mode: str = "RGB", *, noise: bool = False) -> bytes:
    buf = io.BytesIO()
    if noise:  # incompressible: the file is as large as the pixels
        Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buf, "PNG")
    else:
        Image.new(mode, (width, height)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("side", "says"),
    [
        (5_000, "5000x5000 = 25000000 pixels"),  # over our 9.4 Mpx limit: refused by the client
        (12_000, "144000000 pixels"),  # over Pillow's own bomb limit too
    ],
)
def test_a_decompression_bomb_is_refused_before_decoding(
    file_host: FileHost, side: int, says: str
) -> None:
    bomb = _png(side, side, "1")  # millions of pixels of one colour: a few KB on the wire
    assert len(bomb) < 64 * 1024
    file_host.bodies["bomb.png"] = Body(_once(bomb))
    with _client() as client:
        error, peak = _download_peak(client, f"{file_host.url}/bomb.png")
    assert isinstance(error, ImageTooLargeError)
    assert says in str(error)
    assert "decompression bomb" in str(error)
    assert peak < 4 * MB, f"peak {peak / MB:.1f} MB"  # no pixel was decoded


@pytest.mark.parametrize(
    ("name", "body", "content_type", "expected"),
    [
        (
            "page.png",
            b"<html><body>Access denied</body></html>",
            "image/png",
            "not a PNG/JPEG/WEBP",
        ),
        ("data.png", b'{"error": "not found"}', "application/json", "not a PNG/JPEG/WEBP"),
        ("empty.png", b"", "image/png", "empty body"),
        ("cut.png", _png(376, 376, noise=True)[:200_000], "image/png", "truncated or corrupt"),
        ("anim.gif", b"GIF89a" + bytes(64), "image/gif", "not a PNG/JPEG/WEBP"),
        ("bitmap.png", b"BM" + bytes(64), "image/bmp", "not a PNG/JPEG/WEBP"),
    ],
)
def test_bodies_that_are_not_intact_images_get_a_clear_error(
    file_host: FileHost, name: str, body: bytes, content_type: str, expected: str
) -> None:
    file_host.bodies[name] = Body(_once(body), content_type=content_type)
    with _client() as client:
        error, peak = _download_peak(client, f"{file_host.url}/{name}")
    assert isinstance(error, NotAnImageError)
    assert expected in str(error)
    assert f"{file_host.url}/{name}" in str(error)  # says which link
    assert peak < 4 * MB


def test_a_real_image_from_the_same_host_downloads(file_host: FileHost) -> None:
    data = _png(376, 376)
    file_host.bodies["ok.png"] = Body(_once(data), length=len(data))
    with _client() as client:
        image = client.download(f"{file_host.url}/ok.png")
    assert (image.format, image.width, image.height, image.data) == ("PNG", 376, 376, data)
