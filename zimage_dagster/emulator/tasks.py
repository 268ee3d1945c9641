"""A task and its lifecycle, computed from the emulator clock at query time.

A task is `pending` for the first `pending_s` seconds, then `processing` with progress rising
linearly towards 100, then `completed` (progress 100, `results`) or `failed` (`error`) at `end_at`.
A task refused by moderation fails when its pending phase ends; other failures at `end_at`.
A failure may end in `cancelled` (or `canceled`) instead of `failed`, as the provider reports
cancelled tasks. Result links point at the file origin the task was made under (`files_url`),
never at the host a request named.

>>> from zimage_dagster.emulator.validation import validate_create
>>> req = validate_create({"model": "z-image-turbo", "prompt": "a cute cat"})
>>> t = Task(id="task-unified-100-abcdefgh", created_at=100.0, latency_s=10.0, pending_s=1.5,
...          request=req, seed=7, failure=None, credits=0.026, image_format="png",
...          file_token="tok", files_url="https://localhost:8443", estimated_time=10, can_cancel=False)
>>> t.state_at(101.0), t.state_at(105.0), t.state_at(111.0)
(('pending', 0), ('processing', 41), ('completed', 100))
>>> t.view(111.0)["results"]
['https://localhost:8443/_files/tok.png']
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from zimage_dagster.emulator.render import EXTENSIONS, RenderKey, pooled_key
from zimage_dagster.emulator.validation import CreateRequest

FILES_PREFIX = "/_files/"
#: The file origin of an emulator app used in-process (no server bound a file port for it).
DEFAULT_FILES_URL = "http://localhost"

TASK_ERROR_MESSAGES: dict[str, str] = {
    "content_policy_violation": "Content policy violation.\nYour request was blocked by safety filters.",
    "invalid_parameters": "Invalid parameters for this model.",
    "image_processing_error": "The image could not be processed.",
    "image_dimension_mismatch": "The image dimensions do not match the request.",
    "request_cancelled": "The request was cancelled.",
    "generation_failed_no_content": "The model returned no content. Please try again.",
    "service_error": "The generation service hit an error. Please try again later.",
    "generation_timeout": "Generation timed out. Please try again later.",
    "resource_exhausted": "Generation resources are exhausted. Please try again later.",
    "quota_exceeded": "Upstream quota exceeded. Please try again later.",
    "service_unavailable": "The generation service is unavailable. Please try again later.",
    "resource_not_found": "A resource needed for generation was not found.",
    "unknown_error": "An unknown error occurred.",
}

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_task_id(now: float) -> str:
    """`task-unified-<unix s>-<8 lowercase alnum>` (random suffix, not seeded: IDs must not repeat).

    >>> new_task_id(1757165031.7).startswith("task-unified-1757165031-")
    True
    """
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
    return f"task-unified-{int(now)}-{suffix}"


@dataclass(frozen=True)
class TaskFailure:
    code: str
    message: str
    early: bool = False  # fails when the pending phase ends (moderation), not at end of latency
    status: str = "failed"  # or "cancelled" / "canceled"


@dataclass
class CallbackLog:
    """What happened to a task's callback: `scheduled`, `delivered`, `failed` or `skipped`."""

    url: str
    state: str = "scheduled"
    attempts: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state,
            "attempts": self.attempts,
            "reason": self.reason,
        }


@dataclass
class Task:
    id: str
    created_at: float
    latency_s: float
    pending_s: float
    request: CreateRequest
    seed: int
    failure: TaskFailure | None
    credits: float
    image_format: str
    file_token: str
    files_url: str
    estimated_time: int
    can_cancel: bool
    callback: CallbackLog | None = None
    #: Made under load mode: its image is one of a small pool per size (see `pooled_key`).
    pooled: bool = False

    @property
    def created(self) -> int:
        return int(self.created_at)

    @property
    def end_at(self) -> float:
        """When the task becomes terminal, on the emulator clock."""
        if self.failure is not None and self.failure.early:
            return self.created_at + self.pending_s
        return self.created_at + self.latency_s

    @property
    def render_key(self) -> RenderKey:
        req = self.request
        key = (req.prompt, self.seed, req.width, req.height, self.image_format)
        return pooled_key(key) if self.pooled else key

    @property
    def file_name(self) -> str:
        return f"{self.file_token}.{EXTENSIONS[self.image_format]}"

    def is_terminal(self, now: float) -> bool:
        return now >= self.end_at

    def _progress(self, t: float) -> int:
        elapsed = t - self.created_at
        if elapsed < self.pending_s:
            return 0
        span = self.latency_s - self.pending_s
        if span <= 0:
            return 99
        return max(1, min(99, int(100 * (elapsed - self.pending_s) / span)))

    def state_at(self, now: float) -> tuple[str, int]:
        """(status, progress) at emulator time `now`."""
        if now >= self.end_at:
            if self.failure is None:
                return ("completed", 100)
            # progress stays where it was when the task failed
            return (
                self.failure.status,
                0 if self.failure.early else self._progress(self.end_at - 1e-9),
            )
        if now - self.created_at < self.pending_s:
            return ("pending", 0)
        return ("processing", self._progress(now))

    def view(self, now: float | None) -> dict[str, Any]:
        """The query-shaped JSON at `now` (`None`: the create answer, pending with progress 0)."""
        status, progress = ("pending", 0) if now is None else self.state_at(now)
        out: dict[str, Any] = {
            "created": self.created,
            "id": self.id,
            "model": self.request.model,
            "object": "image.generation.task",
            "progress": progress,
            "status": status,
            "task_info": {
                "can_cancel": self.can_cancel and status in ("pending", "processing"),
                "estimated_time": self.estimated_time,
            },
            "type": "image",
            "usage": {
                "billing_rule": "per_call",
                "credits_reserved": self.credits,
                "user_group": "default",
            },
        }
        if status == "completed":
            out["results"] = [f"{self.files_url}{FILES_PREFIX}{self.file_name}"]
        elif self.failure is not None and status == self.failure.status:
            out["error"] = {
                "code": self.failure.code,
                "message": self.failure.message,
                "type": "task_error",
            }
        return out

    def describe(self, now: float) -> dict[str, Any]:
        """The control view (`GET /_emulator/tasks`): state plus the request it came from."""
        status, progress = self.state_at(now)
        req = self.request
        return {
            "id": self.id,
            "status": status,
            "progress": progress,
            "created": self.created,
            "end_at": self.end_at,
            "latency_s": self.latency_s,
            "request": {
                "model": req.model,
                "prompt": req.prompt,
                "size": req.size,
                "width": req.width,
                "height": req.height,
                "seed": self.seed,
                "seed_sent": req.seed,
                "nsfw_check": req.nsfw_check,
                "callback_url": req.callback_url,
            },
            "image_format": self.image_format,
            "file": f"{FILES_PREFIX}{self.file_name}",
            "failure": None
            if self.failure is None
            else {"code": self.failure.code, "message": self.failure.message},
            "credits": self.credits,
            "callback": None if self.callback is None else self.callback.to_dict(),
        }
