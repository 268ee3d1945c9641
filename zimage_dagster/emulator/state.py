"""EmulatorState: everything the emulator remembers, and the provider's rules that act on it.

All of it lives on the server's event loop (no locks): handlers call these methods directly.

>>> import asyncio
>>> from zimage_dagster.emulator.validation import validate_create
>>> async def demo():
...     state = EmulatorState(EmulatorConfig(latency_s=0.0, render_on_create=False))
...     task = state.create_task(validate_create({"model": "z-image-turbo", "prompt": "a cat", "seed": 5}))
...     return state.get_task(task.id).state_at(state.now())[0], state.credits()["data"]["token"]["used_credits"]
>>> asyncio.run(demo())
('completed', 0.026)
"""

from __future__ import annotations

import math
import random
import re
import secrets
import time
from typing import Any

from zimage_dagster.emulator.callbacks import CallbackDispatcher
from zimage_dagster.emulator.clock import EmulatorClock
from zimage_dagster.emulator.config import EmulatorConfig
from zimage_dagster.emulator.errors import ApiError
from zimage_dagster.emulator.faults import FaultEngine
from zimage_dagster.emulator.limits import ActiveTasks, TokenBucket
from zimage_dagster.emulator.render import RenderCache
from zimage_dagster.emulator.spec import CREATE_RULES
from zimage_dagster.emulator.stats import Stats
from zimage_dagster.emulator.tasks import (
    DEFAULT_FILES_URL,
    TASK_ERROR_MESSAGES,
    Task,
    TaskFailure,
    new_task_id,
)
from zimage_dagster.emulator.validation import CreateRequest, check_task_id


def _word_pattern(words: list[str]) -> re.Pattern[str] | None:
    words = [w for w in words if w.strip()]
    if not words:
        return None
    return re.compile(
        r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE
    )


class EmulatorState:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.initial_config = config or EmulatorConfig()
        self.config = self.initial_config
        self.clock = EmulatorClock()
        self.renders = RenderCache(on_render=lambda s: self.stats.record_render(s))
        self.callbacks = CallbackDispatcher(self.clock, lambda: self.stats, lambda: self.config)
        self._clear()

    # ---------------------------------------------------------------- configuration and reset

    def _apply(self, config: EmulatorConfig, *, fresh: bool) -> None:
        old = self.config
        self.config = config
        new_seed = fresh or old.random_seed != config.random_seed
        if new_seed:
            self.rng = random.Random(config.random_seed)
        if new_seed or old.http_faults != config.http_faults:
            self.faults = FaultEngine(config.http_faults, self.rng)
        rate = (config.rate_limit_per_s, config.rate_limit_burst)
        if fresh or rate != (old.rate_limit_per_s, old.rate_limit_burst):
            self.bucket = None
            if config.rate_limit_per_s is not None:
                burst = config.rate_limit_burst or math.ceil(config.rate_limit_per_s)
                self.bucket = TokenBucket(config.rate_limit_per_s, burst, time.monotonic())
        self.clock.set_offset(config.clock_offset_s)
        self._moderation = _word_pattern(config.moderation_words)
        self._nsfw = _word_pattern(config.nsfw_words)
        self._failure_rules = [(re.compile(r.pattern), r) for r in config.failure_rules]

    def configure(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Apply a partial update (raises ConfigError); existing tasks keep their timings."""
        self._apply(self.config.updated(changes), fresh=False)
        return self.config

    async def reset(self) -> None:
        """Back to the initial config, with no tasks, no stats, no faults and a true clock."""
        await self.callbacks.cancel_all()
        self._clear()

    def _clear(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, str] = {}  # file name -> task id
        self.stats = Stats()
        self.active = ActiveTasks()
        self._reserved = 0.0
        self._failing: list[Task] = []
        self.clock.reset()
        self._apply(self.initial_config, fresh=True)

    def now(self) -> float:
        return self.clock.now()

    # ---------------------------------------------------------------- request gates

    def authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise ApiError(401, "unauthorized", "Authentication required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not self.config.accepts_key(token.strip()):
            raise ApiError(401, "unauthorized", "Invalid or expired token")

    def check_rate_limit(self) -> None:
        if self.bucket is None:
            return
        wait = self.bucket.take(time.monotonic())
        if wait > 0:
            raise ApiError(
                429,
                "rate_limit_exceeded",
                "Too many requests, please try again later",
                retry_after=max(1.0, wait),
            )

    # ---------------------------------------------------------------- tasks

    def _latency(self) -> float:
        low_high = self.config.latency_range_s
        return self.rng.uniform(*low_high) if low_high else self.config.latency_s

    def _failure_for(self, request: CreateRequest) -> TaskFailure | None:
        policy = TASK_ERROR_MESSAGES["content_policy_violation"]
        if self._moderation is not None and self._moderation.search(request.prompt):
            return TaskFailure("content_policy_violation", policy, early=True)
        if request.nsfw_check and self._nsfw is not None and self._nsfw.search(request.prompt):
            return TaskFailure("content_policy_violation", policy, early=True)
        for pattern, rule in self._failure_rules:
            if pattern.search(request.prompt):
                message = rule.message or TASK_ERROR_MESSAGES.get(rule.code, "The task failed.")
                return TaskFailure(
                    rule.code,
                    message,
                    early=rule.code == "content_policy_violation",
                    status=rule.status,
                )
        if self.config.failure_rates:
            draw = self.rng.random()
            for code, rate in self.config.failure_rates.items():
                if draw < rate:
                    return TaskFailure(code, TASK_ERROR_MESSAGES.get(code, "The task failed."))
                draw -= rate
        return None

    def _used_credits(self, now: float) -> float:
        refunded = sum(t.credits for t in self._failing if t.end_at <= now)
        return round(self._reserved - refunded, 6)

    def create_task(self, request: CreateRequest) -> Task:
        """Bill, throttle, decide the outcome, start rendering and schedule the callback."""
        config = self.config
        now = self.now()
        cost = config.credits_reserved
        if (
            not config.unlimited_credits
            and config.initial_credits - self._used_credits(now) < cost - 1e-9
        ):
            raise ApiError(
                402, "insufficient_quota", "Insufficient quota. Please top up your account."
            )
        if config.concurrency_cap is not None and self.active.count(now) >= config.concurrency_cap:
            next_end = self.active.next_end(now) or now
            raise ApiError(
                429,
                "rate_limit_exceeded",
                "Too many concurrent tasks, please try again later",
                retry_after=max(1.0, next_end - now),
            )
        task_id = new_task_id(now)
        while task_id in self.tasks:
            task_id = new_task_id(now)
        latency = self._latency()
        seed = (
            request.seed
            if request.seed is not None
            else self.rng.randint(CREATE_RULES.min_seed, CREATE_RULES.max_seed)
        )
        task = Task(
            id=task_id,
            created_at=now,
            latency_s=latency,
            pending_s=latency * config.pending_share,
            request=request,
            seed=seed,
            failure=self._failure_for(request),
            credits=cost,
            image_format=config.image_format,
            file_token=secrets.token_hex(16),
            files_url=config.public_files_url or DEFAULT_FILES_URL,
            estimated_time=config.estimated_time,
            can_cancel=config.can_cancel,
            pooled=config.load_mode,
        )
        self.tasks[task.id] = task
        self.files[task.file_name] = task.id
        self._reserved += cost
        if task.failure is not None:
            self._failing.append(task)
        self.active.add(task.end_at)
        self.stats.tasks_created += 1
        self.stats.peak_concurrent_tasks = max(
            self.stats.peak_concurrent_tasks, self.active.count(now)
        )
        if task.failure is None and config.render_on_create:
            self.renders.start(task.render_key)
        self.callbacks.schedule(task)
        return task

    def get_task(self, task_id: str) -> Task:
        task = self.tasks.get(check_task_id(task_id))
        if task is None:
            raise ApiError(404, "task_not_found", "The requested task could not be found")
        return task

    def credits(self) -> dict[str, Any]:
        """`GET /v1/credits` in the documented shape (token and user share one balance here)."""
        config = self.config
        used = self._used_credits(self.now())
        remaining = round(config.initial_credits - used, 6)
        return {
            "data": {
                "token": {
                    "remaining_credits": remaining,
                    "unlimited_credits": config.unlimited_credits,
                    "used_credits": used,
                },
                "user": {"remaining_credits": remaining, "used_credits": used},
            },
            "message": "",
            "success": True,
        }

    def list_tasks(self) -> list[dict[str, Any]]:
        now = self.now()
        return [task.describe(now) for task in self.tasks.values()]

    def control_stats(self) -> dict[str, Any]:
        out = self.stats.to_dict()
        now = self.now()
        out["active_tasks"] = self.active.count(now)
        out["credits_used"] = self._used_credits(now)
        out["clock"] = {"now": now, "skew_s": self.clock.skew_s}
        out["fault_rules_remaining"] = self.faults.remaining()
        out["fault_rules_fired"] = self.faults.fired()
        return out
