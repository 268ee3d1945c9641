"""HTTP fault rules, the concurrency cap and the rate limit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.emulator._support import VALID, SpecClient
from zimage_dagster.emulator import EmulatorServer, FaultRule


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[SpecClient]:
    with SpecClient(emulator.url, emulator.api_key) as client:
        yield client


def _fault(**fields: Any) -> dict[str, Any]:
    return FaultRule.from_dict(fields).to_dict()


def test_status_fault_with_retry_after(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(http_faults=[_fault(route="create", status=503, retry_after=7)])
    r = api.post("/v1/images/generations", json=VALID)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "service_unavailable"
    assert emulator.tasks() == []
    assert api.get("/v1/credits").status_code == 200  # other routes untouched


def test_status_fault_with_a_chosen_code_and_the_legacy_envelope_on_credits(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    emulator.configure(http_faults=[
        _fault(route="task", status=429, code="rate_limit_exceeded", retry_after=2),
        _fault(route="credits", status=429, retry_after=60),
    ])  # fmt: skip
    r = api.get("/v1/tasks/task-unified-1-abcdefgh")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    r = api.get("/v1/credits")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == 429
    assert r.json()["error"]["fallback_suggestion"] == "retry after 60 seconds"


def test_drop_closes_without_an_answer(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(http_faults=[_fault(route="*", action="drop", count=1)])
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        api.get("/v1/credits")
    assert api.get("/v1/credits").status_code == 200
    assert emulator.stats()["requests"]["credits"] == {"dropped": 1, "200": 1}


def test_truncate_sends_a_head_then_closes(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(http_faults=[_fault(route="task", action="truncate")])
    with pytest.raises(httpx.RemoteProtocolError):
        api.get("/v1/tasks/task-unified-1-abcdefgh")


def test_dropped_create_answer_with_the_task_made(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    emulator.configure(
        http_faults=[_fault(route="create", action="drop", after_create=True, count=1)]
    )
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/v1/images/generations", json=VALID)
    (task,) = emulator.tasks()
    assert api.get(f"/v1/tasks/{task['id']}").status_code == 200
    emulator.configure(http_faults=[_fault(route="create", status=500, after_create=True, count=1)])
    assert api.post("/v1/images/generations", json=VALID).status_code == 500
    assert len(emulator.tasks()) == 2
    emulator.configure(http_faults=[_fault(route="create", action="drop", count=1)])
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/v1/images/generations", json=VALID)
    assert len(emulator.tasks()) == 2


def test_slow_answers(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(http_faults=[_fault(route="credits", action="slow", delay_s=0.4, count=1)])
    start = time.monotonic()
    assert api.get("/v1/credits").status_code == 200
    assert time.monotonic() - start >= 0.4
    start = time.monotonic()
    api.get("/v1/credits")
    assert time.monotonic() - start < 0.3
    emulator.configure(
        http_faults=[_fault(route="create", action="slow", delay_s=2, after_create=True)]
    )
    with pytest.raises(httpx.ReadTimeout):
        api.post("/v1/images/generations", json=VALID, timeout=0.3)
    assert len(emulator.tasks()) == 1  # the client gave up, the task exists


def test_count_limited_faults_then_normal_service(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    emulator.configure(http_faults=[_fault(route="create", status=502, count=2)])
    statuses = [api.post("/v1/images/generations", json=VALID).status_code for _ in range(4)]
    assert statuses == [502, 502, 200, 200]
    stats = emulator.stats()
    assert stats["faults_fired"] == 2
    assert stats["fault_rules_remaining"] == [0]


def test_probability_faults_are_seeded(api: SpecClient, emulator: EmulatorServer) -> None:
    def run() -> list[int]:
        emulator.reset()
        emulator.configure(
            random_seed=11, http_faults=[_fault(route="credits", status=500, probability=0.3)]
        )
        return [api.get("/v1/credits").status_code for _ in range(60)]

    first = run()
    assert 8 <= first.count(500) <= 30
    assert first.count(200) + first.count(500) == 60
    assert run() == first


def test_faults_on_file_links(api: SpecClient, emulator: EmulatorServer) -> None:
    task = api.post("/v1/images/generations", json={**VALID, "size": "400x400"}).json()
    emulator.advance_clock(1)
    url = api.get(f"/v1/tasks/{task['id']}").json()["results"][0]
    emulator.configure(http_faults=[_fault(route="files", status=503, retry_after=1, count=1)])
    assert httpx.get(url, trust_env=False).status_code == 503
    assert httpx.get(url, trust_env=False).status_code == 200


def test_concurrency_cap_answers_429_with_retry_after(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    emulator.configure(concurrency_cap=2, latency_s=10)
    assert api.post("/v1/images/generations", json=VALID).status_code == 200
    assert api.post("/v1/images/generations", json=VALID).status_code == 200
    refused = api.post("/v1/images/generations", json=VALID)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 9 <= int(refused.headers["retry-after"]) <= 10
    emulator.advance_clock(10.5)
    assert api.post("/v1/images/generations", json=VALID).status_code == 200
    stats = emulator.stats()
    assert stats["peak_concurrent_tasks"] == 2
    assert stats["tasks_created"] == 3
    assert stats["active_tasks"] == 1
    assert stats["requests"]["create"] == {"200": 3, "429": 1}


def test_rate_limit_answers_429_with_retry_after(api: SpecClient, emulator: EmulatorServer) -> None:
    emulator.configure(rate_limit_per_s=1, rate_limit_burst=3)
    statuses = [api.get("/v1/credits").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = api.get("/v1/tasks/task-unified-1-abcdefgh")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    time.sleep(1.05)
    assert api.get("/v1/credits").status_code == 200


def test_bad_fault_config_is_refused(emulator: EmulatorServer) -> None:
    response = httpx.post(
        f"{emulator.url}/_emulator/config",
        json={"http_faults": [{"route": "nowhere"}]},
        trust_env=False,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "http_faults[0].route"
    response = httpx.post(f"{emulator.url}/_emulator/config", json={"latency": 1}, trust_env=False)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "latency"
