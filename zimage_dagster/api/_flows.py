"""The API calls as flows, without I/O: one HTTP call retried (:func:`request_flow`: backoff,
``Retry-After``, the call's deadline, answers mapped to errors), the three operations on it, and
the wait for a task (:func:`wait_flow`, on the poll schedule of ``api/polling.py``).

Each flow is a generator that yields what it needs done (see ``api/_actions.py``); flows compose
with ``yield from``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from zimage_dagster.api import validation as v
from zimage_dagster.api._actions import Flow, Received, Send, Sleep, Throttled
from zimage_dagster.api._retry import (
    UNREACHABLE_RETRY_S,
    create_never_reached_server,
    describe_exception,
    exception_is_retryable,
    parse_retry_after,
    retry_delay,
    status_is_retryable,
    unreachable_reason,
)
from zimage_dagster.api._settings import USER_AGENT, ClientSettings, redact_headers, strip_query
from zimage_dagster.api.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    APIUnreachableError,
    CreateOutcomeUnknownError,
    RequestValidationError,
    TaskFailedError,
    UnknownTaskStatusError,
    WaitTimeoutError,
    ZImageError,
    is_retryable_task_error_code,
    status_error_class,
)
from zimage_dagster.api.models import FAILED_STATUSES, Credits, GenerationRequest, Task, TaskStatus
from zimage_dagster.api.polling import LatencyModel, PollSchedule
from zimage_dagster.api.results import WaitOutcome

logger = logging.getLogger("zimage_dagster.api")

M = TypeVar("M", bound=BaseModel)

CREATE_PATH = "/v1/images/generations"
TASK_PATH = "/v1/tasks/{task_id}"
CREDITS_PATH = "/v1/credits"


def validate_task_id(task_id: object) -> str:
    """``task_id`` if it can be a task's id, else :class:`RequestValidationError`.

    >>> validate_task_id("task-unified-1")
    'task-unified-1'
    """
    if not isinstance(task_id, str) or not task_id.strip():
        raise RequestValidationError("task_id", task_id, "must be a non-empty string")
    if len(task_id) > 256 or any(c.isspace() or ord(c) < 0x20 for c in task_id):
        raise RequestValidationError("task_id", task_id, "is not a plausible task id")
    return task_id


def build_api_request(
    s: ClientSettings, method: str, path: str, json_body: Mapping[str, Any] | None, timeout: float
) -> httpx.Request:
    """An API request: the key as a bearer token, the body as compact JSON, ``timeout`` seconds."""
    headers = {
        "Authorization": f"Bearer {s.api_key.get()}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    content: bytes | None = None
    if json_body is not None:
        content = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    return httpx.Request(
        method,
        s.base_url + path,
        headers=headers,
        content=content,
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else (str(value) if value is not None else None)


def _error_fields(received: Received) -> tuple[str | int | None, str, dict[str, str | None]]:
    """The code, message and the other fields of an error answer's body, as the provider writes
    it (``{"error": {...}}``), or a bare ``message``, or the body's first 200 characters."""
    code: str | int | None = None
    message = ""
    fields: dict[str, str | None] = {"type": None, "param": None, "fallback_suggestion": None}
    body: object = None
    try:
        body = json.loads(received.content) if received.content else None
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        raw_code = err.get("code")
        code = (
            raw_code
            if isinstance(raw_code, (str, int)) and not isinstance(raw_code, bool)
            else None
        )
        message = str(err.get("message") or "")
        fields = {name: _opt_str(err.get(name)) for name in fields}
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]
    elif received.content:
        message = received.content[:200].decode("utf-8", "replace").strip()
    if not message:
        message = httpx.codes.get_reason_phrase(received.status_code) or "HTTP error"
    return code, message, fields


def error_from_response(
    s: ClientSettings, received: Received, method: str, path: str
) -> APIStatusError:
    """Map an HTTP error answer to the :class:`APIStatusError` subclass for its status."""
    code, message, fields = _error_fields(received)
    request_id = received.request_id
    cls = status_error_class(received.status_code)
    return cls(
        received.status_code,
        s.scrub(code) if isinstance(code, str) else code,
        s.scrub(message[:1000]),
        type=s.scrub(fields["type"]) if fields["type"] else None,
        param=s.scrub(fields["param"]) if fields["param"] else None,
        fallback_suggestion=(
            s.scrub(fields["fallback_suggestion"]) if fields["fallback_suggestion"] else None
        ),
        method=method,
        path=path,
        request_id=s.scrub(request_id) if request_id else None,
        retry_after=parse_retry_after(received.headers),
    )


def scrubbed_request_id(s: ClientSettings, received: Received) -> str | None:
    """The answer's request ID(s), without the key should a server echo it there."""
    found = received.request_id
    return s.scrub(found) if found else None


def parse(s: ClientSettings, received: Received, model: type[M], method: str, path: str) -> M:
    """Parse a 2xx body into ``model``, or raise :class:`APIResponseValidationError`."""
    content = received.content
    key = s.api_key.get().encode()
    if key and key in content:  # a server echoing our key must not plant it in our objects
        content = content.replace(key, b"[REDACTED]")
    try:
        return model.model_validate_json(content)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise APIResponseValidationError(
            s.scrub(problems), status_code=received.status_code, method=method, path=path
        ).with_request_id(scrubbed_request_id(s, received)) from None


# -- one HTTP call, retried --


def request_flow(
    s: ClientSettings,
    method: str,
    path: str,
    *,
    json_body: Mapping[str, Any] | None = None,
    deadline: float | None = None,
) -> Flow[Received]:
    """Send one API call with retries, backoff and an overall deadline.

    A POST (create) is retried only when the server cannot have made a task; when the request
    may have reached the server and no answer came, :class:`CreateOutcomeUnknownError`.
    """
    is_create = method == "POST"
    budget = s.deadline if deadline is None else deadline
    policy = s.retry
    start = s.clock()
    attempts = policy.max_retries + 1
    attempt = 0
    while True:
        remaining = budget - (s.clock() - start)
        if remaining <= 0:
            raise APITimeoutError(
                f"deadline of {budget:.1f} s exhausted after {attempt} attempt(s)",
                method=method,
                path=path,
                deadline_exceeded=True,
            )
        per_attempt = min(s.timeout, remaining)
        request = build_api_request(s, method, path, json_body, per_attempt)
        logger.debug(
            "%s %s attempt %d/%d (timeout %.1f s, %.1f s of deadline left) headers=%s",
            method,
            path,
            attempt + 1,
            attempts,
            per_attempt,
            remaining,
            redact_headers(request.headers),
        )
        sent = s.clock()
        outcome = yield Send(request)
        if isinstance(outcome, Received) and outcome.is_success:
            logger.debug(
                "%s %s -> HTTP %d (request id %s)",
                method,
                path,
                outcome.status_code,
                scrubbed_request_id(s, outcome),
            )
            return replace(outcome, answered_at=(sent + s.clock()) / 2)
        error, hint, retryable, cause = _failed_attempt(s, outcome, method, path)
        if not retryable or attempt >= policy.max_retries:
            if retryable:
                logger.debug("%s %s: giving up after %d attempt(s)", method, path, attempt + 1)
            raise error from cause
        delay = retry_delay(policy, attempt, hint, s.rng)
        elapsed = s.clock() - start
        remaining = budget - elapsed
        _check_retry_fits(error, cause, delay, remaining, elapsed, budget, method, path)
        logger.debug(
            "%s %s: backing off %.2f s before attempt %d", method, path, delay, attempt + 2
        )
        if is_create and isinstance(outcome, Received) and outcome.status_code == 429:
            yield Throttled(delay, budget_s=remaining)
        else:
            yield Sleep(delay)
        attempt += 1


def _failed_attempt(
    s: ClientSettings, outcome: object, method: str, path: str
) -> tuple[ZImageError, float | None, bool, BaseException | None]:
    """What a failed attempt of an API call raises if not retried, the server's
    ``Retry-After`` hint, whether it is worth another attempt, and the cause to chain."""
    if isinstance(outcome, Received):
        error: ZImageError = error_from_response(s, outcome, method, path)
        hint = parse_retry_after(outcome.headers)
        retryable = status_is_retryable(s.retry, outcome.status_code, is_create=method == "POST")
        logger.debug(
            "%s %s -> HTTP %d (%s, request id %s)%s",
            method,
            path,
            outcome.status_code,
            "retryable" if retryable else "final",
            scrubbed_request_id(s, outcome),
            f", server asks to retry after {hint:.2f} s" if hint is not None else "",
        )
        return error, hint, retryable, None
    if isinstance(outcome, Exception):
        error, retryable = transport_error(s, outcome, method, path)
        return error, None, retryable, s.safe_cause(outcome)
    raise TypeError(f"unexpected outcome {outcome!r}")  # pragma: no cover - a driver bug


def _check_retry_fits(
    error: ZImageError,
    cause: BaseException | None,
    delay: float,
    remaining: float,
    elapsed: float,
    budget: float,
    method: str,
    path: str,
) -> None:
    """Raise instead of retrying when the wait before the next attempt would outlast the call's
    deadline, or (for a base URL that cannot be reached) its :data:`UNREACHABLE_RETRY_S`."""
    if isinstance(error, APIUnreachableError) and delay >= min(
        remaining, UNREACHABLE_RETRY_S - elapsed
    ):
        raise error from cause
    if delay >= remaining:
        raise APITimeoutError(
            f"deadline of {budget:.1f} s would pass during the {delay:.2f} s wait before "
            f"retrying; last error: {error}",
            method=method,
            path=path,
            deadline_exceeded=True,
        ) from error


def transport_error(
    s: ClientSettings, exc: Exception, method: str, path: str
) -> tuple[APIConnectionError, bool]:
    """The error of an API call that got no answer, and whether to try again. A create that
    may have reached the server raises :class:`CreateOutcomeUnknownError` (never retried);
    no connection at all to the base URL is an :class:`APIUnreachableError`."""
    is_create = method == "POST"
    what = s.scrub(describe_exception(exc))
    if is_create and not create_never_reached_server(s.retry, exc):
        logger.debug("%s %s failed after sending: %s; outcome unknown", method, path, what)
        raise CreateOutcomeUnknownError(what, method=method, path=path) from s.safe_cause(exc)
    error: APIConnectionError
    retryable = is_create or exception_is_retryable(exc)
    unreachable = unreachable_reason(exc)
    if unreachable is not None:
        reason, worth_retrying = unreachable
        error = APIUnreachableError(strip_query(s.base_url), reason, method=method, path=path)
        retryable = retryable and worth_retrying
    elif isinstance(exc, httpx.TimeoutException):
        error = APITimeoutError(what, method=method, path=path)
    else:
        error = APIConnectionError(what, method=method, path=path)
    logger.debug("%s %s failed: %s (%s)", method, path, what, "retryable" if retryable else "final")
    return error, retryable


# -- API operations --


def checked_body(request: GenerationRequest) -> dict[str, Any]:
    """Re-check a request (it may have been built with ``model_construct``) and serialise it."""
    if not isinstance(request, GenerationRequest):
        raise RequestValidationError("request", request, "must be a GenerationRequest")
    v.validate_prompt(request.prompt)
    v.validate_size(request.size)
    v.validate_seed(request.seed)
    v.validate_callback_url(request.callback_url)
    if request.model != v.MODEL:
        raise RequestValidationError("model", request.model, f"must be {v.MODEL!r}")
    return request.to_wire()


def create_flow(
    s: ClientSettings, request: GenerationRequest, *, deadline: float | None = None
) -> Flow[Task]:
    """``POST /v1/images/generations``: the task made (retried only where none can be made)."""
    body = checked_body(request)
    received = yield from request_flow(s, "POST", CREATE_PATH, json_body=body, deadline=deadline)
    task = parse(s, received, Task, "POST", CREATE_PATH)
    task._answered_at = received.answered_at
    task._request_id = scrubbed_request_id(s, received)
    logger.debug(
        "created task %s (status %s, request id %s)", task.id, task.status, task._request_id
    )
    return task


def get_task_flow(s: ClientSettings, task_id: str, *, deadline: float | None = None) -> Flow[Task]:
    """``GET /v1/tasks/{task_id}``: the task as the provider sees it now."""
    path = TASK_PATH.format(task_id=quote(validate_task_id(task_id), safe=""))
    received = yield from request_flow(s, "GET", path, deadline=deadline)
    task = parse(s, received, Task, "GET", path)
    task._answered_at = received.answered_at
    task._request_id = scrubbed_request_id(s, received)
    return task


def credits_flow(s: ClientSettings) -> Flow[Credits]:
    """``GET /v1/credits``: the account's credits."""
    received = yield from request_flow(s, "GET", CREDITS_PATH)
    return parse(s, received, Credits, "GET", CREDITS_PATH)


# -- waiting for a task --


def wait_flow(
    s: ClientSettings,
    latency: LatencyModel,
    task_or_id: Task | str,
    *,
    deadline: float | None = None,
    on_poll: Callable[[Task], object] | None = None,
) -> Flow[WaitOutcome]:
    """Poll until the task is terminal; see :class:`PollPolicy` for the schedule. ``latency``:
    what the client learned of its tasks' timing (read and fed)."""
    budget = s.poll.deadline if deadline is None else deadline
    start = s.clock()
    task: Task | None
    if isinstance(task_or_id, Task):
        task, task_id = task_or_id, task_or_id.id
        origin = task._answered_at
    else:
        task, task_id, origin = None, validate_task_id(task_or_id), None
    schedule = PollSchedule(s.poll, task.estimated_time if task else None, origin, latency)
    if task is not None and origin is not None:
        schedule.observe(origin, task)
    polls = 0
    while True:
        now = s.clock()
        if task is not None:
            done = finished(s, task_id, task, polls, schedule, now)
            if done is not None:
                return done
        elapsed = now - start
        remaining = budget - elapsed
        if remaining <= 0:
            raise WaitTimeoutError(task_id, str(task.status) if task else None, elapsed)
        delay = min(schedule.next_delay(now), remaining)
        if delay > 0:
            logger.debug("task %s: next poll in %.2f s", task_id, delay)
            yield Sleep(delay)
        left = budget - (s.clock() - start)
        task = yield from get_task_flow(s, task_id, deadline=min(s.deadline, max(left, 1.0)))
        polls += 1
        schedule.observe(task._answered_at if task._answered_at is not None else s.clock(), task)
        logger.debug(
            "task %s poll %d: status %s, progress %d (request id %s)",
            task_id,
            polls,
            task.status,
            task.progress,
            task._request_id,
        )
        if on_poll is not None:
            on_poll(task)


def finished(
    s: ClientSettings, task_id: str, task: Task, polls: int, schedule: PollSchedule, now: float
) -> WaitOutcome | None:
    """The outcome of a wait whose task was last seen as ``task``: ``None`` while it runs;
    a failed task raises :class:`TaskFailedError`, an unknown status
    :class:`UnknownTaskStatusError`."""
    status = task.known_status
    if status is TaskStatus.COMPLETED:
        seen_done = now if polls == 0 else schedule.observations[-1][0]
        if polls:
            schedule.learn(seen_done)
        queued, generating = schedule.phases(seen_done)
        logger.debug(
            "task %s completed after %d poll(s) (request id %s)",
            task_id,
            polls,
            task._request_id,
        )
        return WaitOutcome(task=task, polls=polls, queued_s=queued, generating_s=generating)
    if status in FAILED_STATUSES:
        code = task.error.code if task.error else None
        message = (task.error.message if task.error else None) or "no error message"
        raise TaskFailedError(
            task_id,
            code,
            s.scrub(message),
            is_retryable_task_error_code(code, 1),
            task=task,
        ).with_request_id(task._request_id)
    if status is None:
        raise UnknownTaskStatusError(task_id, str(task.status)).with_request_id(task._request_id)
    return None
