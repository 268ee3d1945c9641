"""Test doubles for the API client: a fake clock and an in-memory provider behind httpx.MockTransport.

MockTransport is used only for conditions a real server cannot easily produce on demand (exact
timing, failures after the request was sent, a simulated task clock); the emulator tests cover
the real HTTP path.
"""

from __future__ import annotations

import io
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

API = "https://api.zimage.test"
FILES = "https://files.zimage.test"
CANARY_KEY = "sk-evo-CANARY-7f3a9c1e5b2d4680aa11bb22cc33dd44"


class FakeClock:
    """A monotonic clock that only moves when someone sleeps (or the test advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def png_bytes(width: int = 64, height: int = 48, fmt: str = "PNG", color: str = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()


def error_body(
    code: object, message: str, type_: str = "invalid_request_error", **extra: Any
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": type_, **extra}}


@dataclass
class FakeTask:
    id: str
    created_at: float
    pending_s: float
    processing_s: float
    request: dict[str, Any]
    failure: tuple[str, str] | None = None
    status_override: str | None = None

    @property
    def finishes_at(self) -> float:
        return self.created_at + self.pending_s + self.processing_s

    def state(self, now: float) -> tuple[str, int]:
        if self.status_override is not None:
            return self.status_override, 50
        t = now - self.created_at
        if t < self.pending_s:
            return "pending", 0
        if t < self.pending_s + self.processing_s:
            return "processing", int(100 * (t - self.pending_s) / self.processing_s)
        return ("failed", 90) if self.failure else ("completed", 100)


@dataclass
class FakeAPI:
    """The provider, simulated on a :class:`FakeClock`. Records every request it sees."""

    clock: FakeClock
    api_key: str = CANARY_KEY
    pending_s: float = 0.5
    processing_s: float = 7.5
    image: bytes = field(default_factory=png_bytes)
    image_type: str = "image/png"
    failures: list[tuple[str, str]] = field(default_factory=list)  # consumed one per create
    status_override: str | None = None
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    file_requests: list[httpx.Request] = field(default_factory=list)
    # Optional per-request hook: return a Response to short-circuit, or raise an httpx error.
    hook: Callable[[httpx.Request], httpx.Response | None] | None = None
    echo_key_in_errors: bool = False
    report_progress: bool = True
    estimated_time: float = 10
    # One-way network time of each API call: the clock moves this much before the server
    # handles the request, and again before its answer arrives.
    trip_s: float = 0.0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def async_transport(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            return self.handle(request)

        return httpx.MockTransport(handler)

    def count(self, method: str, prefix: str = "/v1/") -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path.startswith(prefix))

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "files.zimage.test" or not self.trip_s:
            return self._handle(request)
        self.clock.advance(self.trip_s)
        response = self._handle(request)
        self.clock.advance(self.trip_s)
        return response

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "files.zimage.test":
            self.file_requests.append(request)
            return self.serve_file(request)
        self.requests.append(request)
        if self.hook is not None:
            early = self.hook(request)
            if early is not None:
                return early
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            msg = "Invalid or expired token"
            if self.echo_key_in_errors:
                msg += f" (got {request.headers.get('authorization')})"
            return httpx.Response(401, json=error_body("unauthorized", msg, "authentication_error"))
        path = request.url.path
        if request.method == "POST" and path == "/v1/images/generations":
            return self.create(request)
        if request.method == "GET" and path.startswith("/v1/tasks/"):
            return self.query(path.rsplit("/", 1)[-1])
        if request.method == "GET" and path == "/v1/credits":
            return httpx.Response(
                200,
                json={
                    "data": {
                        "token": {
                            "remaining_credits": 99.5,
                            "unlimited_credits": False,
                            "used_credits": 0.5,
                        },
                        "user": {"remaining_credits": 1000.0, "used_credits": 3.25},
                    },
                    "message": "",
                    "success": True,
                },
            )
        return httpx.Response(404, json=error_body("not_found", "no route"))

    def create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        now = self.clock()
        suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        task_id = f"task-unified-{int(now)}-{suffix}"
        failure = self.failures.pop(0) if self.failures else None
        self.tasks[task_id] = FakeTask(
            task_id, now, self.pending_s, self.processing_s, body, failure, self.status_override
        )
        return httpx.Response(
            200,
            json={
                "created": int(now),
                "id": task_id,
                "model": "z-image-turbo",
                "object": "image.generation.task",
                "progress": 0,
                "status": "pending",
                "task_info": {"can_cancel": True, "estimated_time": self.estimated_time},
                "type": "image",
                "usage": {
                    "billing_rule": "per_call",
                    "credits_reserved": 0.026,
                    "user_group": "default",
                },
            },
        )

    def task_json(self, task: FakeTask) -> dict[str, Any]:
        status, progress = task.state(self.clock())
        if not self.report_progress:
            progress = 0
        out: dict[str, Any] = {
            "created": int(task.created_at),
            "id": task.id,
            "model": "z-image-turbo",
            "object": "image.generation.task",
            "progress": progress,
            "status": status,
            "task_info": {"can_cancel": False},
            "type": "image",
            "server_added_field": {"anything": [1, 2]},
        }
        if status == "completed":
            out["results"] = [f"{FILES}/{task.id}.png?token=signed-secret&expires=1"]
        if status == "failed" and task.failure:
            out["error"] = {
                "code": task.failure[0],
                "message": task.failure[1],
                "type": "task_error",
            }
        return out

    def query(self, task_id: str) -> httpx.Response:
        task = self.tasks.get(task_id)
        if task is None:
            return httpx.Response(
                404, json=error_body("task_not_found", "The requested task could not be found")
            )
        return httpx.Response(200, json=self.task_json(task))

    def serve_file(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=self.image, headers={"content-type": self.image_type})
