"""Result images: real, deterministic, of the requested size; served from expiring links."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from tests.emulator._support import VALID, SpecClient
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.emulator.render import RenderCache, render_image
from zimage_dagster.emulator.validation import RATIO_DIMENSIONS


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[SpecClient]:
    with SpecClient(emulator.url, emulator.api_key) as client:
        yield client


def _result_url(api: SpecClient, emulator: EmulatorServer, **fields: Any) -> str:
    task = api.post("/v1/images/generations", json={**VALID, **fields}).json()
    emulator.advance_clock(1)
    body = api.get(f"/v1/tasks/{task['id']}").json()
    assert body["status"] == "completed", body
    url: str = body["results"][0]
    return url


def _download(api: SpecClient, url: str) -> tuple[bytes, str]:
    response = httpx.get(
        url, trust_env=False
    )  # no key: like a client should, never to the file host
    assert response.status_code == 200, response.text
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content, response.headers["content-type"]


def test_ratio_and_wxh_sizes_give_real_dimensions() -> None:
    expected = {
        "1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1152), "4:3": (1152, 864),
        "9:16": (720, 1280), "16:9": (1280, 720), "1:2": (720, 1440), "2:1": (1440, 720),
    }  # fmt: skip
    assert expected == RATIO_DIMENSIONS


@pytest.mark.parametrize(
    "size",
    ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "1:2", "2:1", "376x1536", "1000x377"],
)
def test_served_images_have_the_requested_dimensions(
    api: SpecClient, emulator: EmulatorServer, size: str
) -> None:
    data, content_type = _download(api, _result_url(api, emulator, size=size))
    image = Image.open(io.BytesIO(data))
    assert content_type == "image/webp"  # the provider's format, the default
    assert image.format == "WEBP"
    expected = RATIO_DIMENSIONS.get(size) or tuple(int(x) for x in size.split("x"))
    assert image.size == expected


@pytest.mark.parametrize(("fmt", "content_type", "pil", "ext"), [
    ("png", "image/png", "PNG", ".png"), ("jpeg", "image/jpeg", "JPEG", ".jpg"), ("webp", "image/webp", "WEBP", ".webp"),
])  # fmt: skip
def test_image_formats(
    api: SpecClient, emulator: EmulatorServer, fmt: str, content_type: str, pil: str, ext: str
) -> None:
    emulator.configure(image_format=fmt)
    url = _result_url(api, emulator, size="512x400")
    assert url.endswith(ext)
    data, served_type = _download(api, url)
    assert served_type == content_type
    assert Image.open(io.BytesIO(data)).format == pil


def test_same_request_same_bytes_and_seeds_differ(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    first, _ = _download(api, _result_url(api, emulator, size="640x480", seed=7))
    again, _ = _download(api, _result_url(api, emulator, size="640x480", seed=7))
    assert first == again
    assert (
        render_image("a cute cat", 7, 640, 480, "webp") == first
    )  # deterministic across processes too
    other, _ = _download(api, _result_url(api, emulator, size="640x480", seed=8))
    a = Image.open(io.BytesIO(first)).convert("RGB")
    b = Image.open(io.BytesIO(other)).convert("RGB")
    mean_abs_diff = sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3
    assert mean_abs_diff > 25, mean_abs_diff


def test_images_are_not_flat() -> None:
    image = Image.open(io.BytesIO(render_image("a lighthouse", 3, 512, 512, "png"))).convert("RGB")
    assert all(stddev > 10 for stddev in ImageStat.Stat(image).stddev)
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 1000


def test_links_expire_after_the_ttl(api: SpecClient, emulator: EmulatorServer) -> None:
    url = _result_url(api, emulator, size="400x400")
    emulator.advance_clock(23 * 3600)
    assert api.get(url).status_code == 200
    emulator.advance_clock(3600)
    expired = api.get(url)
    assert expired.status_code == 403
    assert expired.json()["error"]["message"] == "Request has expired"
    emulator.configure(result_ttl_s=10 * 86400)
    assert api.get(url).status_code == 200  # the TTL in force is the one applied
    emulator.configure(result_ttl_s=5)
    assert api.get(url).status_code == 403


def test_unknown_and_unfinished_links_are_404(api: SpecClient, emulator: EmulatorServer) -> None:
    assert api.get(f"{emulator.files_url}/_files/0123456789abcdef.webp").status_code == 404
    emulator.configure(latency_s=60)
    task = api.post("/v1/images/generations", json=VALID).json()
    name = emulator.files_url + emulator.tasks()[0]["file"]
    assert api.get(name).status_code == 404
    emulator.advance_clock(61)
    assert api.get(f"/v1/tasks/{task['id']}").json()["results"][0] == name
    assert api.get(name).status_code == 200


def test_file_requests_with_authorization_are_counted(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    url = _result_url(api, emulator, size="400x400")
    _download(api, url)
    api.get(url)  # this one carries the client's Authorization header
    stats = emulator.stats()
    assert stats["file_requests"] == 2
    assert stats["file_requests_with_authorization"] == 1


def test_rendering_starts_at_create_and_is_cached(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    emulator.configure(latency_s=30)
    api.post("/v1/images/generations", json={**VALID, "size": "777x555", "seed": 4242})
    for _ in range(200):
        if emulator.stats()["renders"] == 1:
            break
        time.sleep(0.01)
    stats = emulator.stats()
    assert stats["renders"] == 1
    assert stats["render_time_s"] > 0
    emulator.advance_clock(31)
    url = api.get(f"/v1/tasks/{emulator.tasks()[0]['id']}").json()["results"][0]
    _download(api, url)
    _download(api, url)
    assert emulator.stats()["renders"] == 1


def test_failed_tasks_are_not_rendered(api: SpecClient, emulator: EmulatorServer) -> None:
    api.post("/v1/images/generations", json={**VALID, "prompt": "gore", "size": "401x401"})
    emulator.advance_clock(5)
    assert emulator.stats()["renders"] == 0


def test_render_cache_is_bounded_by_bytes_and_evicts_the_least_recent() -> None:
    renders: list[float] = []

    async def scenario() -> tuple[int, int, int]:
        cache = RenderCache(max_bytes=5000, on_render=renders.append)
        keys = [("p", seed, 400, 400, "webp") for seed in range(6)]
        try:
            sizes = [len(await cache.get(key)) for key in keys]
            kept = len(cache._entries)
            await cache.get(keys[-1])  # still cached: no new render
            again = len(renders)
            await cache.get(keys[0])  # evicted long ago: rendered again, same bytes
            assert len(await cache.get(keys[0])) == sizes[0]
            return kept, again, sum(sizes)
        finally:
            cache.close()

    kept, again, total = asyncio.run(scenario())
    assert total > 5000  # the six images do not fit...
    assert 1 <= kept < 6  # ...so the oldest were dropped
    assert again == 6
    assert len(renders) == 7
