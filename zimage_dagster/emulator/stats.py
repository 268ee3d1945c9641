"""Counters the tests read through `GET /_emulator/stats`.

>>> s = Stats()
>>> s.record_request("task", 200); s.record_request("task", 200); s.record_request("create", 429)
>>> s.to_dict()["requests"]
{'task': {'200': 2}, 'create': {'429': 1}}
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    tasks_created: int = 0
    requests: defaultdict[str, defaultdict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    peak_concurrent_tasks: int = 0
    callbacks_delivered: int = 0
    callbacks_failed: int = 0
    callbacks_skipped: int = 0
    callback_attempts: int = 0
    file_requests: int = 0
    file_requests_with_authorization: int = 0
    renders: int = 0
    render_time_s: float = 0.0
    render_time_max_s: float = 0.0
    faults_fired: int = 0

    def record_request(self, route: str, status: int | str) -> None:
        self.requests[route][str(status)] += 1

    def record_render(self, seconds: float) -> None:
        self.renders += 1
        self.render_time_s += seconds
        self.render_time_max_s = max(self.render_time_max_s, seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks_created": self.tasks_created,
            "requests": {route: dict(by_status) for route, by_status in self.requests.items()},
            "requests_total": sum(sum(by_status.values()) for by_status in self.requests.values()),
            "peak_concurrent_tasks": self.peak_concurrent_tasks,
            "callbacks_sent": self.callbacks_delivered + self.callbacks_failed,
            "callbacks_delivered": self.callbacks_delivered,
            "callbacks_failed": self.callbacks_failed,
            "callbacks_skipped": self.callbacks_skipped,
            "callback_attempts": self.callback_attempts,
            "file_requests": self.file_requests,
            "file_requests_with_authorization": self.file_requests_with_authorization,
            "renders": self.renders,
            "render_time_s": round(self.render_time_s, 6),
            "render_time_max_s": round(self.render_time_max_s, 6),
            "faults_fired": self.faults_fired,
        }
