"""Load mode (a load-test aid): the same contract, real images of the requested size, a bounded
pool of renders; off by default."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.emulator._support import VALID, SpecClient
from zimage_dagster.emulator import EmulatorConfig, EmulatorServer
from zimage_dagster.emulator.render import LOAD_POOL_SIZE
from zimage_dagster.emulator.validation import RATIO_DIMENSIONS


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[SpecClient]:
    with SpecClient(emulator.url, emulator.api_key) as client:
        yield client


def _create_all(
    api: SpecClient, emulator: EmulatorServer, bodies: list[dict[str, Any]]
) -> list[str]:
    """Create a task per body (each answer checked against the provider's documents), let them
    finish, and return their result links as the task route reports them."""
    ids = []
    for body in bodies:
        created = api.post("/v1/images/generations", json=body)
        assert created.status_code == 200
        assert created.json()["status"] == "pending"
        ids.append(created.json()["id"])
    emulator.advance_clock(5)
    urls = []
    for task_id in ids:
        task = api.get(f"/v1/tasks/{task_id}").json()
        assert (task["status"], task["progress"]) == ("completed", 100), task
        urls.append(task["results"][0])
    return urls


def _fetch(url: str) -> bytes:
    response = httpx.get(url, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    return response.content


def test_load_mode_is_off_by_default() -> None:
    assert EmulatorConfig().load_mode is False
    assert EmulatorConfig.for_tests().load_mode is False


@pytest.mark.parametrize("size", ["1:1", "16:9", "376x1536", "1000x377"])
def test_load_mode_answers_the_same_contract_with_real_images_of_the_requested_size(
    api: SpecClient, emulator: EmulatorServer, size: str
) -> None:
    emulator.configure(load_mode=True)
    (url,) = _create_all(api, emulator, [{**VALID, "size": size}])
    assert url.startswith(emulator.files_url + "/_files/")
    image = Image.open(io.BytesIO(_fetch(url)))
    image.load()  # decodes in full
    assert image.format == "WEBP"
    assert image.size == (RATIO_DIMENSIONS.get(size) or tuple(int(x) for x in size.split("x")))
    assert emulator.stats()["tasks_created"] == 1
    # the same lifecycle rules: credits billed, links expiring after the TTL
    assert api.get("/v1/credits").json()["data"]["token"]["used_credits"] > 0
    emulator.advance_clock(86400)
    assert httpx.get(url, trust_env=False).status_code == 403


def test_load_mode_renders_a_bounded_pool_whatever_the_number_of_tasks(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    emulator.configure(load_mode=True)
    bodies = [{**VALID, "prompt": f"load test image {i}", "seed": i + 1} for i in range(48)]
    urls = _create_all(api, emulator, bodies)
    images = [_fetch(url) for url in urls]
    assert len(set(urls)) == 48  # a link per task, as ever
    assert 1 < len({hashlib.sha256(data).digest() for data in images}) <= LOAD_POOL_SIZE
    assert emulator.stats()["renders"] <= LOAD_POOL_SIZE  # memory: the pool, not the tasks
    # the same request gets the same image
    (again,) = _create_all(api, emulator, [bodies[5]])
    assert _fetch(again) == images[5]
    assert emulator.stats()["renders"] <= LOAD_POOL_SIZE


def test_the_default_renders_every_task_from_its_own_prompt(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    bodies = [{**VALID, "prompt": f"realistic image {i}", "seed": i + 1} for i in range(12)]
    images = [_fetch(url) for url in _create_all(api, emulator, bodies)]
    assert len({hashlib.sha256(data).digest() for data in images}) == 12
    assert emulator.stats()["renders"] == 12
