"""Create, query and credits: shapes, lifecycle timing, billing, the tasks control view."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulator._support import VALID, SpecClient
from zimage_dagster.emulator import EmulatorServer

TASK_ID = re.compile(r"task-unified-[0-9]+-[a-z0-9]{8}")


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[SpecClient]:
    with SpecClient(emulator.url, emulator.api_key) as client:
        yield client


def _create(api: SpecClient, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/images/generations", json={**VALID, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_answers_200_with_a_pending_task(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(estimated_time=10)  # the provider's documented hint for this model
    before = int(time.time())
    task = _create(api)
    assert TASK_ID.fullmatch(task["id"])
    assert before <= task["created"] <= int(time.time()) + 1
    assert task["id"].split("-")[2] == str(task["created"])
    assert task == {
        "created": task["created"],
        "id": task["id"],
        "model": "z-image-turbo",
        "object": "image.generation.task",
        "progress": 0,
        "status": "pending",
        "task_info": {"can_cancel": False, "estimated_time": 10},
        "type": "image",
        "usage": {"billing_rule": "per_call", "credits_reserved": 0.026, "user_group": "default"},
    }


def test_lifecycle_follows_the_emulator_clock(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(latency_s=100.0, pending_share=0.2)
    task_id = _create(api)["id"]
    seen = []
    for step in (0, 10, 20, 20, 40, 10):  # t = 0, 10, 30, 50, 90, 100 (+ a little real time)
        emulator.advance_clock(step)
        body = api.get(f"/v1/tasks/{task_id}").json()
        seen.append((body["status"], body["progress"]))
        assert "error" not in body
        assert ("results" in body) == (body["status"] == "completed")
    assert [s for s, _ in seen] == [
        "pending",
        "pending",
        "processing",
        "processing",
        "processing",
        "completed",
    ]
    progresses = [p for _, p in seen]
    assert progresses == sorted(progresses)
    assert progresses[0] == progresses[1] == 0
    assert progresses[-1] == 100
    assert 10 <= progresses[2] <= 15
    assert 35 <= progresses[3] <= 40
    assert 85 <= progresses[4] <= 90


def test_completed_task_has_one_result_link(api: SpecClient, emulator: EmulatorServer) -> None:
    task_id = _create(api)["id"]
    emulator.advance_clock(1)
    body = api.get(f"/v1/tasks/{task_id}").json()
    assert body["status"] == "completed"
    assert body["progress"] == 100
    (url,) = body["results"]
    # files come from their own origin (another host name and port), in WebP
    assert url.startswith(f"{emulator.files_url}/_files/")
    assert emulator.files_url.startswith("http://localhost:")
    assert emulator.files_url.rsplit(":", 1)[1] != emulator.url.rsplit(":", 1)[1]
    assert url.endswith(".webp")


def test_latency_range_is_seeded(emulator: EmulatorServer, api: SpecClient) -> None:
    def latencies() -> list[float]:
        emulator.reset()
        emulator.configure(latency_range_s=[5, 9], random_seed=7)
        for _ in range(5):
            _create(api)
        return [t["latency_s"] for t in emulator.tasks()]

    first = latencies()
    assert all(5 <= x <= 9 for x in first)
    assert len(set(first)) == 5
    assert latencies() == first


def test_tasks_control_view_records_the_request(api: SpecClient, emulator: EmulatorServer) -> None:
    _create(api, size="1024x768", seed=99, nsfw_check=True)
    _create(api, seed=None, size=None)
    sent, drawn = emulator.tasks()
    assert sent["request"] == {
        "model": "z-image-turbo",
        "prompt": "a cute cat",
        "size": "1024x768",
        "width": 1024,
        "height": 768,
        "seed": 99,
        "seed_sent": 99,
        "nsfw_check": True,
        "callback_url": None,
    }
    assert drawn["request"]["seed_sent"] is None
    assert 1 <= drawn["request"]["seed"] <= 2147483647
    assert drawn["request"]["size"] == "1:1"
    assert (
        drawn["request"]["width"],
        drawn["request"]["height"],
    ) == (1024, 1024)


def test_credits_go_down_per_task_and_failed_tasks_are_refunded(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    def credits() -> dict[str, Any]:
        data: dict[str, Any] = api.get("/v1/credits").json()["data"]
        return data

    start = credits()
    assert start["token"] == {
        "remaining_credits": 100.0,
        "unlimited_credits": False,
        "used_credits": 0.0,
    }
    assert start["user"] == {"remaining_credits": 100.0, "used_credits": 0.0}
    _create(api)
    _create(api)
    assert credits()["token"]["used_credits"] == pytest.approx(0.052)
    assert credits()["token"]["remaining_credits"] == pytest.approx(100 - 0.052)
    _create(api, prompt="a forbidden thing")
    emulator.advance_clock(5)
    assert credits()["user"]["used_credits"] == pytest.approx(0.052)


def test_insufficient_quota_answers_402(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(initial_credits=0.06)
    _create(api)
    _create(api)
    response = api.post("/v1/images/generations", json=VALID)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_quota"
    emulator.configure(unlimited_credits=True)
    _create(api)
    assert emulator.stats()["tasks_created"] == 3


def test_unknown_and_malformed_task_ids(api: SpecClient) -> None:
    unknown = api.get("/v1/tasks/task-unified-1757165031-zzzzzzzz")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "task_not_found"
    for bad in (
        "nope",
        "task-unified-1-ABCDEFGH",
        "task-unified-x-abcdefgh",
        "task-unified-1-abc",
        "a/b",
        "",
    ):
        response = api.get(f"/v1/tasks/{bad}")
        assert response.status_code == 400, bad
        assert response.json()["error"] == {
            "code": "invalid_task_id",
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "task_id",
        }


def test_moderation_fails_the_task_not_the_request(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    blocked = _create(api, prompt="A Forbidden temple")
    nsfw_off = _create(api, prompt="a nude statue", nsfw_check=False)
    nsfw_on = _create(api, prompt="a nude statue", nsfw_check=True)
    emulator.configure(moderation_words=["dragon"])
    custom = _create(api, prompt="a red dragon")
    emulator.advance_clock(5)
    results = {k: api.get(f"/v1/tasks/{t['id']}").json() for k, t in
               {"blocked": blocked, "off": nsfw_off, "on": nsfw_on, "custom": custom}.items()}  # fmt: skip
    assert results["off"]["status"] == "completed"
    for key in ("blocked", "on", "custom"):
        body = results[key]
        assert body["status"] == "failed"
        assert "results" not in body
        assert body["error"]["code"] == "content_policy_violation"
        assert body["error"]["type"] == "task_error"


def test_failure_rules_and_seeded_failure_rates(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(failure_rules=[{"pattern": "(?i)flaky", "code": "service_error"}])
    ruled = _create(api, prompt="a FLAKY render")
    emulator.advance_clock(5)
    assert api.get(f"/v1/tasks/{ruled['id']}").json()["error"]["code"] == "service_error"

    def outcomes() -> list[str | None]:
        emulator.reset()
        emulator.configure(
            failure_rates={"generation_timeout": 0.3, "service_error": 0.2}, random_seed=3
        )
        ids = [_create(api, seed=i + 1)["id"] for i in range(60)]
        emulator.advance_clock(5)
        return [api.get(f"/v1/tasks/{i}").json().get("error", {}).get("code") for i in ids]

    first = outcomes()
    assert 8 <= first.count("generation_timeout") <= 30
    assert 4 <= first.count("service_error") <= 22
    assert first.count(None) >= 15
    assert outcomes() == first


def test_reset_clears_tasks_stats_config_and_clock(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    task_id = _create(api)["id"]
    emulator.configure(latency_s=50.0, http_faults=[{"route": "credits", "status": 500}])
    emulator.advance_clock(1000)
    emulator.reset()
    assert emulator.tasks() == []
    assert emulator.stats()["tasks_created"] == 0
    assert emulator.config()["latency_s"] == 0.2
    assert emulator.config()["http_faults"] == []
    assert abs(emulator.stats()["clock"]["skew_s"]) < 1e-9
    assert api.get(f"/v1/tasks/{task_id}").status_code == 404
    assert api.get("/v1/credits").status_code == 200


def test_clock_offset_config_shifts_created(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(clock_offset_s=86400)
    assert _create(api)["created"] >= int(time.time()) + 86399
