"""Retry and polling policies (plain frozen dataclasses with documented defaults).

>>> RetryPolicy().max_retries, PollPolicy().first_wait_fraction
(2, 0.1)
>>> fast = PollPolicy(max_interval=2.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CREATE_SAFE_EXCEPTIONS",
    "PollPolicy",
    "RetryPolicy",
]

#: Transport failures after which the server cannot have received a create request, so
#: retrying it cannot make a second task: the connection was never made.
CREATE_SAFE_EXCEPTIONS: frozenset[str] = frozenset(
    {"ConnectError", "ConnectTimeout", "PoolTimeout"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries one HTTP call (figures from openai-python).

    Attributes:
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts at most).
        initial_backoff: the first backoff in seconds; it doubles on each retry...
        max_backoff: ...up to this cap.
        jitter: full jitter: sleep a uniform random time in ``[0, backoff]`` (``False``: sleep the
            backoff exactly, handy in tests).
        max_retry_after: a server ``Retry-After`` / ``retry-after-ms`` hint up to this many
            seconds is obeyed exactly; a longer (or unparseable) one falls back to the backoff.
        retry_statuses: HTTP statuses after which a GET is retried (besides every 5xx).
        retry_server_errors: retry a GET after any 5xx.
        create_retry_statuses: HTTP statuses after which a create (POST) is retried: only those
            where the server certainly made no task (429 throttled, 503 unavailable). A 500 or 502
            may come after the task was made, so it is raised, not retried.
        create_retry_exceptions: names of the ``httpx`` transport errors after which a create is
            retried: only those where no connection was made (see :data:`CREATE_SAFE_EXCEPTIONS`).
            Any other failure after the request went out raises ``CreateOutcomeUnknownError``.
        max_task_attempts: tasks ``generate`` may create for one request: a failed task whose error
            code is retryable (see ``is_retryable_task_error_code``) is resubmitted, same seed,
            until this many tasks were made. 1 means never resubmit.

    >>> RetryPolicy(jitter=False).max_backoff
    8.0
    """

    max_retries: int = 2
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: bool = True
    max_retry_after: float = 60.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({408, 409, 429}))
    retry_server_errors: bool = True
    create_retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    create_retry_exceptions: frozenset[str] = CREATE_SAFE_EXCEPTIONS
    max_task_attempts: int = 2

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("backoff figures must be >= 0")
        if self.max_task_attempts < 1:
            raise ValueError("max_task_attempts must be >= 1")


@dataclass(frozen=True)
class PollPolicy:
    """When ``wait`` looks at a task again. The provider announces ``estimated_time`` 10 s for
    every task, so the schedule learns from what the client sees instead (see
    :class:`~zimage_dagster.api.polling.LatencyModel`, one per client, shared by its waits).

    1. First poll, counted from when the task was created: once the client has seen tasks
       complete (and ``learn``), at ``first_poll_share`` x the ``first_poll_quantile`` of their
       durations (just before the shortest usual task would finish); before that, seeded by the
       announcement, at ``first_wait_fraction`` x ``task_info.estimated_time`` (or
       ``default_estimated_time`` if the server gave none).
    2. Then, if the task is processing and reports progress (and ``use_progress_eta``): estimate
       its finish from the progress, and poll ``eta_margin`` seconds after it, the interval
       clamped to ``[min_interval, max_interval]``. Two readings give a rate; a single reading
       is placed with the share of a task spent pending learned from earlier tasks (else the
       middle of the last "pending" and first "processing" sightings; else a second reading
       is taken after ``rate_probe_share`` x the time since the create). Readings are timed at
       the middle of their request's round trip, when the server made them. An estimate that
       has passed without the task finishing gets one more look once the progress should have
       moved a point; progress that did not move since the last reading sends the schedule to
       step 3.
    3. Otherwise a growing interval: ``initial_interval``, then x ``growth`` each poll, at most
       ``max_interval``; sooner if the median duration of the learned tasks longer than this
       one's age comes first.
    4. ``deadline`` (seconds, overall) -> ``WaitTimeoutError``; one last poll is made at the deadline.

    With the defaults, once a few tasks have completed, a task costs about 2 status requests and
    is seen finished about ``eta_margin`` after it finishes.

    >>> PollPolicy().max_interval
    5.0
    """

    first_wait_fraction: float = 0.1
    first_poll_quantile: float = 0.1
    first_poll_share: float = 0.9
    learn: bool = True
    min_interval: float = 0.1
    initial_interval: float = 1.0
    max_interval: float = 5.0
    growth: float = 1.5
    use_progress_eta: bool = True
    eta_margin: float = 0.05
    rate_probe_share: float = 0.25
    default_estimated_time: float = 10.0
    deadline: float = 600.0

    def __post_init__(self) -> None:
        if not 0 <= self.first_wait_fraction <= 10:
            raise ValueError("first_wait_fraction must be in 0..10")
        if not 0 <= self.first_poll_quantile <= 1 or not 0 < self.first_poll_share <= 1:
            raise ValueError("first_poll_quantile must be in 0..1 and first_poll_share in (0, 1]")
        if not 0 < self.rate_probe_share <= 1:
            raise ValueError("rate_probe_share must be in (0, 1]")
        if self.min_interval <= 0 or self.max_interval < self.min_interval:
            raise ValueError("need 0 < min_interval <= max_interval")
        if self.growth < 1:
            raise ValueError("growth must be >= 1")
        if self.deadline <= 0:
            raise ValueError("deadline must be > 0")
