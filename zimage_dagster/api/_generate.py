"""A whole generation as one flow, without I/O: a seed always (drawn here when the request has
none), create, wait, download, and retryable task failures resubmitted (:func:`generate_flow`)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from zimage_dagster.api import validation as v
from zimage_dagster.api._actions import Flow
from zimage_dagster.api._download import download_flow
from zimage_dagster.api._flows import create_flow, wait_flow
from zimage_dagster.api._settings import ClientSettings
from zimage_dagster.api.errors import TaskFailedError, is_retryable_task_error_code
from zimage_dagster.api.models import GenerationRequest, Task
from zimage_dagster.api.polling import LatencyModel
from zimage_dagster.api.results import GenerationResult, Timings

logger = logging.getLogger("zimage_dagster.api")


@dataclass
class GenerationTracker:
    """What a ``generate`` flow has done so far (read by ``generate_many`` on failure)."""

    task_ids: list[str] = field(default_factory=list)
    seed: int | None = None


def draw_seed() -> int:
    """A random seed in 1..2147483647 (``secrets.randbelow``): the one seed draw, which the
    engine's ``"random"`` seed strategy calls too.

    >>> v.MIN_SEED <= draw_seed() <= v.MAX_SEED
    True
    """
    return secrets.randbelow(v.MAX_SEED) + v.MIN_SEED


def generate_flow(
    s: ClientSettings,
    latency: LatencyModel,
    request: GenerationRequest,
    *,
    tracker: GenerationTracker | None = None,
    max_task_attempts: int | None = None,
    on_task_created: Callable[[Task], object] | None = None,
    on_poll: Callable[[Task], object] | None = None,
) -> Flow[GenerationResult]:
    """Create (with a seed, always), wait, download; resubmit retryable task failures."""
    tracker = tracker if tracker is not None else GenerationTracker()
    seed = request.seed if request.seed is not None else draw_seed()
    tracker.seed = seed
    sent = request if request.seed == seed else request.model_copy(update={"seed": seed})
    limit = max_task_attempts if max_task_attempts is not None else s.retry.max_task_attempts
    begin = s.clock()
    attempt = 0
    while True:
        attempt += 1
        task = yield from create_flow(s, sent)
        tracker.task_ids.append(task.id)
        if on_task_created is not None:
            on_task_created(task)
        try:
            outcome = yield from wait_flow(s, latency, task, on_poll=on_poll)
        except TaskFailedError as exc:
            exc.retryable = is_retryable_task_error_code(exc.code, attempt)
            if exc.retryable and attempt < limit:
                logger.debug(
                    "task %s failed with %s; resubmitting (attempt %d)",
                    task.id,
                    exc.code,
                    attempt + 1,
                )
                continue
            raise
        url = outcome.task.result_url
        if not url:
            raise TaskFailedError(
                task.id,
                "missing_results",
                "the task completed but returned no result link",
                is_retryable_task_error_code("missing_results", attempt),
                task=outcome.task,
            )
        dl_start = s.clock()
        image = yield from download_flow(s, url, task_id=task.id)
        end = s.clock()
        timings = Timings(
            queued_s=outcome.queued_s,
            generating_s=outcome.generating_s,
            downloading_s=end - dl_start,
            total_s=end - begin,
        )
        return GenerationResult(
            request=sent,
            task=outcome.task,
            image=image,
            seed=seed,
            timings=timings,
            polls=outcome.polls,
            attempts=attempt,
            task_ids=tuple(tracker.task_ids),
        )
