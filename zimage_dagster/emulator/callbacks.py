"""Callbacks: POST the query-shaped JSON to a task's `callback_url` when it ends.

One asyncio task per task with a callback: it sleeps until the task's end on the emulator clock
(a clock advance wakes it), then POSTs with the configured timeout (10 s documented), retrying on a
non-2xx answer or a connection error after each of `callback_retry_delays_s` (1, 2, 4 s documented).

The emulator only ever sends to loopback hosts unless `deliver_external_callbacks` is set: a valid
public callback URL is recorded as `skipped`, so a test run never reaches the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from zimage_dagster.emulator.addresses import classify_host
from zimage_dagster.emulator.clock import EmulatorClock
from zimage_dagster.emulator.config import EmulatorConfig
from zimage_dagster.emulator.stats import Stats
from zimage_dagster.emulator.tasks import CallbackLog, Task


class CallbackDispatcher:
    """Schedules and delivers callbacks; `cancel_all()` on reset and shutdown."""

    def __init__(
        self, clock: EmulatorClock, stats: Callable[[], Stats], config: Callable[[], EmulatorConfig]
    ) -> None:
        self._clock = clock
        self._stats = stats
        self._config = config
        self._jobs: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def schedule(self, task: Task) -> None:
        """Attach a CallbackLog to `task` and start its delivery job (or mark it skipped)."""
        url = task.request.callback_url
        if url is None:
            return
        task.callback = CallbackLog(url=url)
        host = urlsplit(url).hostname or ""
        if classify_host(host) != "loopback" and not self._config().deliver_external_callbacks:
            task.callback.state = "skipped"
            task.callback.reason = "not a loopback host and deliver_external_callbacks is off"
            self._stats().callbacks_skipped += 1
            return
        job = asyncio.get_running_loop().create_task(self._deliver(task, task.callback))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _deliver(self, task: Task, log: CallbackLog) -> None:
        await self._clock.wait_until(task.end_at)
        config = self._config()
        payload = task.view(self._clock.now())
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        delays = [0.0, *config.callback_retry_delays_s]
        for delay in delays:
            if delay:
                await asyncio.sleep(delay)
            attempt: dict[str, object] = {"at": self._clock.now(), "status": None, "error": None}
            log.attempts.append(attempt)
            self._stats().callback_attempts += 1
            try:
                response = await self._client.post(
                    log.url, json=payload, timeout=config.callback_timeout_s
                )
                attempt["status"] = response.status_code
                if 200 <= response.status_code < 300:
                    log.state = "delivered"
                    self._stats().callbacks_delivered += 1
                    return
            except httpx.HTTPError as exc:
                attempt["error"] = f"{type(exc).__name__}: {exc}"
        log.state = "failed"
        self._stats().callbacks_failed += 1

    async def cancel_all(self) -> None:
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel_all()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
