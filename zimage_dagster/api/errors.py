"""The client's errors: one tree rooted at :class:`ZImageError`.

::

    ZImageError
    ├── ConfigurationError            (also ValueError) bad client settings, e.g. no API key
    ├── RequestValidationError        (also ValueError) a request breaks a documented rule
    ├── APIConnectionError            the server could not be reached / the connection broke
    │   ├── APIUnreachableError       no connection to the base URL: refused, or its host does not resolve
    │   └── APITimeoutError           a per-attempt timeout, or the call's overall deadline ran out
    ├── CreateOutcomeUnknownError     a create was sent but no answer came: a task may exist
    ├── APIResponseValidationError    a 2xx answer we cannot parse
    ├── APIStatusError                the API answered with an HTTP error
    │   ├── BadRequestError (400)  AuthenticationError (401)  InsufficientQuotaError (402)
    │   ├── PermissionDeniedError (403)  NotFoundError (404)  RateLimitError (429)
    │   └── InternalServerError (5xx)
    ├── TaskFailedError               the task ended with status "failed"
    ├── UnknownTaskStatusError        the task reports a status this client does not know
    ├── WaitTimeoutError              the task did not finish before the wait deadline
    └── DownloadError                 the result image could not be fetched or decoded
        ├── ResultExpiredError        the file host says the link is gone (403/404/410)
        ├── ImageTooLargeError        too many bytes, or too many pixels (decompression bomb)
        └── NotAnImageError           the bytes are not a supported, intact image

No message, ``str`` or ``repr`` of these errors contains the API key: the client scrubs it from
anything the server sends back before it reaches an error.

Example:
    >>> err = TaskFailedError("task-unified-1-abcdefgh", "service_error", "busy", retryable=True)
    >>> isinstance(err, ZImageError), err.retryable
    (True, True)
"""

from __future__ import annotations

import http
from collections.abc import Mapping

__all__ = [
    "FIXABLE_TASK_ERROR_CODES",
    "RETRYABLE_TASK_ERROR_CODES",
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "APIUnreachableError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "CreateOutcomeUnknownError",
    "DownloadError",
    "DownloadTimeoutError",
    "ImageTooLargeError",
    "InsufficientQuotaError",
    "InternalServerError",
    "NotAnImageError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestValidationError",
    "ResultExpiredError",
    "TaskFailedError",
    "UnknownTaskStatusError",
    "WaitTimeoutError",
    "ZImageError",
    "is_retryable_task_error_code",
    "status_error_class",
    "truncate_repr",
]

#: Task error codes the user must fix; resubmitting the same request will fail again.
FIXABLE_TASK_ERROR_CODES: frozenset[str] = frozenset(
    {
        "content_policy_violation",
        "invalid_parameters",
        "image_processing_error",
        "image_dimension_mismatch",
    }
)

#: Task error codes on the provider's side; resubmitting later may succeed. A cancelled task
#: (``request_cancelled``, or the statuses ``cancelled`` / ``canceled``) is resubmitted too:
#: the provider's advice for it is to resubmit, and nothing in the request was wrong.
RETRYABLE_TASK_ERROR_CODES: frozenset[str] = frozenset(
    {
        "request_cancelled",
        "generation_failed_no_content",
        "service_error",
        "generation_timeout",
        "resource_exhausted",
        "quota_exceeded",
        "service_unavailable",
        "resource_not_found",
        "unknown_error",
    }
)


def is_retryable_task_error_code(code: str | int | None, attempt: int = 1) -> bool:
    """Whether a failed task with this error ``code`` is worth resubmitting.

    ``attempt`` is the number of the task that failed (1 for the first submission).
    Codes in :data:`FIXABLE_TASK_ERROR_CODES` are never retryable; codes in
    :data:`RETRYABLE_TASK_ERROR_CODES` always are (the caller bounds the attempts). A code this
    client does not know (or no code at all) is given the benefit of the doubt ONCE: it is
    retryable after the first attempt and not after later ones, so an unexpected permanent error
    costs at most one extra task.

    >>> is_retryable_task_error_code("content_policy_violation")
    False
    >>> is_retryable_task_error_code("service_error", attempt=5)
    True
    >>> is_retryable_task_error_code("brand_new_code", 1), is_retryable_task_error_code("brand_new_code", 2)
    (True, False)
    """
    key = str(code) if code is not None else ""
    if key in FIXABLE_TASK_ERROR_CODES:
        return False
    if key in RETRYABLE_TASK_ERROR_CODES:
        return True
    return attempt <= 1


def truncate_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long the original was.

    >>> truncate_repr("x" * 500, limit=10)
    "'xxxxxxxx… (500 characters)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[: limit - 1] + "…" + size


class ZImageError(Exception):
    """Root of every error raised by :mod:`zimage_dagster.api`.

    >>> try:
    ...     raise NotFoundError(404, "task_not_found", "gone", method="GET", path="/v1/tasks/x")
    ... except ZImageError as e:
    ...     print(type(e).__name__)
    NotFoundError
    """

    #: The provider's request ID(s) of the answer behind this error (``x-request-id``,
    #: ``x-oneapi-request-id``), when one came: quote it to the provider's support.
    request_id: str | None = None

    def with_request_id(self, request_id: str | None) -> ZImageError:
        """Record ``request_id`` and say it in the message (once); returns ``self``.

        >>> str(ZImageError("boom").with_request_id("req-1"))
        'boom (request id req-1)'
        """
        if request_id and self.request_id is None:
            self.request_id = request_id
            first = f"{self.args[0]} " if self.args else ""
            self.args = (f"{first}(request id {request_id})", *self.args[1:])
        return self


class ConfigurationError(ZImageError, ValueError):
    """The client was configured wrongly (e.g. no API key, a malformed base URL).

    >>> ConfigurationError("no API key").args
    ('no API key',)
    """


class RequestValidationError(ZImageError, ValueError):
    """A request field breaks one of the provider's documented rules.

    The message names the field and the problem; long values are truncated.

    >>> str(RequestValidationError("seed", 0, "must be an integer in 1..2147483647"))
    'seed: must be an integer in 1..2147483647 (got 0)'
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {truncate_repr(value)})")

    def __reduce__(self) -> tuple[type[RequestValidationError], tuple[str, object, str]]:
        return (type(self), (self.field, self.value, self.reason))


class APIConnectionError(ZImageError):
    """The API could not be reached, or the connection broke (after any retries).

    >>> str(APIConnectionError("connection refused", method="GET", path="/v1/credits"))
    'connection refused (GET /v1/credits)'
    """

    def __init__(self, message: str, *, method: str | None = None, path: str | None = None) -> None:
        self.method = method
        self.path = path
        self.message = message
        where = f" ({method} {path})" if method and path else ""
        super().__init__(f"{message}{where}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class APIUnreachableError(APIConnectionError):
    """No connection could be made to the API at ``base_url``: the connection was refused, or its
    host name does not resolve. Nothing reached the server, so no task can have been made.

    This is a setup problem (nothing listens there, or the URL is wrong), not a passing fault:
    the client retries it only briefly, and a Dagster step does not retry it.

    >>> str(APIUnreachableError("http://127.0.0.1:9", "connection refused", method="GET",
    ...                         path="/v1/credits"))  # doctest: +NORMALIZE_WHITESPACE
    'cannot reach the API at http://127.0.0.1:9 (connection refused): is the API, or the local
    emulator (zimage-emulator), running there? Else ZIMAGE_BASE_URL (the base_url setting) is
    wrong (GET /v1/credits)'
    """

    def __init__(
        self, base_url: str, reason: str, *, method: str | None = None, path: str | None = None
    ) -> None:
        self.base_url = base_url
        self.reason = reason
        super().__init__(
            f"cannot reach the API at {base_url} ({reason}): is the API, or the local emulator "
            "(zimage-emulator), running there? Else ZIMAGE_BASE_URL (the base_url setting) is wrong",
            method=method,
            path=path,
        )


class APITimeoutError(APIConnectionError):
    """A request timed out, or the call's overall ``deadline`` (all attempts and sleeps) ran out.

    ``deadline_exceeded`` tells the two apart.

    >>> APITimeoutError("deadline of 5.0 s exhausted", deadline_exceeded=True).deadline_exceeded
    True
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        deadline_exceeded: bool = False,
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.deadline_exceeded = deadline_exceeded


class CreateOutcomeUnknownError(ZImageError):
    """A create request was sent but its answer never came (read timeout, dropped connection...).

    The server may or may not have created (and will bill) a task. The client does NOT retry
    this automatically: doing so could pay for a second task. Check your tasks (or your ledger)
    before resubmitting. Deliberately not a subclass of :class:`APIConnectionError`, so generic
    "retry on connection error" handlers do not resubmit by accident.

    >>> str(CreateOutcomeUnknownError("read timeout", method="POST", path="/v1/images/generations"))[:40]
    'create outcome unknown (POST /v1/images/'
    """

    def __init__(self, reason: str, *, method: str = "POST", path: str = "") -> None:
        self.reason = reason
        self.method = method
        self.path = path
        super().__init__(
            f"create outcome unknown ({method} {path}): the request was sent but no answer came "
            f"({reason}); a task may have been created and billed, so it was not retried"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class APIResponseValidationError(ZImageError):
    """The API answered 2xx with a body this client cannot parse.

    >>> str(APIResponseValidationError("not JSON", status_code=200, method="GET", path="/v1/credits"))
    'unexpected response to GET /v1/credits (HTTP 200): not JSON'
    """

    def __init__(self, message: str, *, status_code: int, method: str, path: str) -> None:
        self.message = message
        self.status_code = status_code
        self.method = method
        self.path = path
        super().__init__(f"unexpected response to {method} {path} (HTTP {status_code}): {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class APIStatusError(ZImageError):
    """The API answered with an HTTP error status.

    Attributes: ``status_code``, ``code`` (string, or the older integer codes, as sent),
    ``message``, ``type``, ``param``, ``fallback_suggestion``, ``method`` and ``path`` of the
    request, ``request_id`` (from a request-id response header, if any), ``retry_after``
    (seconds, parsed from ``retry-after-ms`` / ``Retry-After``, if any).

    >>> e = RateLimitError(429, "rate_limit_exceeded", "slow down", method="GET", path="/v1/credits",
    ...                    retry_after=2.0)
    >>> str(e)
    'HTTP 429 rate_limit_exceeded: slow down (GET /v1/credits)'

    The older generation's numeric ``code`` repeats the status; the message says the status once,
    with its name:

    >>> str(AuthenticationError(401, 401, "Invalid or expired token", method="GET", path="/v1/credits"))
    'HTTP 401 Unauthorized: Invalid or expired token (GET /v1/credits)'
    """

    def __init__(
        self,
        status_code: int,
        code: str | int | None,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        fallback_suggestion: str | None = None,
        method: str = "",
        path: str = "",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.type = type
        self.param = param
        self.fallback_suggestion = fallback_suggestion
        self.method = method
        self.path = path
        self.request_id = request_id
        self.retry_after = retry_after
        text = f"HTTP {status_code}{_code_label(status_code, code)}: {message}"
        if param:
            text += f" [param {param}]"
        if fallback_suggestion:
            text += f" (suggestion: {fallback_suggestion})"
        where = f"{method} {path}".strip()
        extras = [x for x in (where, f"request id {request_id}" if request_id else "") if x]
        if extras:
            text += f" ({', '.join(extras)})"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _code_label(status_code: int, code: str | int | None) -> str:
    """What follows ``HTTP <status>`` in a message: the code, or the status's name when the
    code only repeats the status (the older API generation), or nothing.

    >>> _code_label(402, "insufficient_quota"), _code_label(401, 401), _code_label(418, None)
    (' insufficient_quota', ' Unauthorized', '')
    """
    if code is None or str(code).strip() == "":
        return ""
    if str(code).strip() != str(status_code):
        return f" {code}"
    try:
        return f" {http.HTTPStatus(status_code).phrase}"
    except ValueError:  # a status with no standard name
        return ""


class BadRequestError(APIStatusError):
    """HTTP 400: the request was rejected (invalid parameters, invalid task id)."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, invalid or expired."""


class InsufficientQuotaError(APIStatusError):
    """HTTP 402: not enough credits; top up the account."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key may not use this model or see this task."""


class NotFoundError(APIStatusError):
    """HTTP 404: no such task (or route)."""


class RateLimitError(APIStatusError):
    """HTTP 429: throttled. ``retry_after`` carries the server's hint, if it gave one."""


class InternalServerError(APIStatusError):
    """HTTP 5xx: the provider failed."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientQuotaError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The :class:`APIStatusError` subclass for an HTTP status.

    >>> status_error_class(429).__name__, status_error_class(502).__name__, status_error_class(418).__name__
    ('RateLimitError', 'InternalServerError', 'APIStatusError')
    """
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


class TaskFailedError(ZImageError):
    """The task ended with status ``failed``.

    ``retryable`` follows :func:`is_retryable_task_error_code` for the attempt that failed.
    ``task`` is the failed task as last seen, when known.

    >>> e = TaskFailedError("task-unified-1-abcdefgh", "content_policy_violation", "blocked", retryable=False)
    >>> str(e)
    'task task-unified-1-abcdefgh failed: content_policy_violation: blocked (fix the request; do not retry as-is)'
    """

    def __init__(
        self,
        task_id: str,
        code: str | int | None,
        message: str,
        retryable: bool,
        *,
        task: object | None = None,
    ) -> None:
        self.task_id = task_id
        self.code = code
        self.message = message
        self.retryable = retryable
        self.task = task
        hint = "retryable later" if retryable else "fix the request; do not retry as-is"
        super().__init__(f"task {task_id} failed: {code}: {message} ({hint})")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class UnknownTaskStatusError(ZImageError):
    """The task reports a status this client does not know; waiting stops instead of looping.

    >>> str(UnknownTaskStatusError("task-unified-1-abcdefgh", "paused"))
    "task task-unified-1-abcdefgh has unknown status 'paused'; refusing to keep polling"
    """

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(
            f"task {task_id} has unknown status {truncate_repr(status, 40)}; refusing to keep polling"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class WaitTimeoutError(ZImageError):
    """The task was not finished when the wait deadline came.

    The task still exists (and may still finish): keep ``task_id`` and look again later.

    >>> str(WaitTimeoutError("task-unified-1-abcdefgh", "processing", 120.0))
    'task task-unified-1-abcdefgh still processing after 120.0 s of waiting'
    """

    def __init__(self, task_id: str, last_status: str | None, elapsed: float) -> None:
        self.task_id = task_id
        self.last_status = last_status
        self.elapsed = elapsed
        super().__init__(
            f"task {task_id} still {last_status or 'unknown'} after {elapsed:.1f} s of waiting"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class DownloadError(ZImageError):
    """The result image could not be downloaded or is not usable.

    ``url`` never includes the query string (signed links carry tokens there).

    >>> str(DownloadError("HTTP 500 from file host", url="https://files.example/a.png"))
    'HTTP 500 from file host (https://files.example/a.png)'
    """

    def __init__(self, message: str, *, url: str | None = None, task_id: str | None = None) -> None:
        self.message = message
        self.url = url
        self.task_id = task_id
        where = ", ".join(x for x in (url, f"task {task_id}" if task_id else None) if x)
        super().__init__(f"{message} ({where})" if where else message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class ResultExpiredError(DownloadError):
    """The file host refused the result link (HTTP 403/404/410): links die after 24 hours.

    Regenerate with the same seed to get the image again.

    >>> str(ResultExpiredError("https://files.example/a.png", "task-unified-1-abcdefgh"))
    'result link expired or gone (https://files.example/a.png, task task-unified-1-abcdefgh)'
    """

    def __init__(self, url: str, task_id: str | None = None, *, status_code: int | None = None):
        self.status_code = status_code
        super().__init__("result link expired or gone", url=url, task_id=task_id)


class DownloadTimeoutError(DownloadError):
    """The download did not finish within its total deadline (e.g. a file host trickling bytes:
    every read is quick, the whole never ends)."""


class ImageTooLargeError(DownloadError):
    """The download has more bytes than allowed, or the image declares too many pixels."""


class NotAnImageError(DownloadError):
    """The bytes are not an intact image in a supported format (PNG, JPEG, WebP)."""


def _rebuild(
    cls: type[Exception], args: tuple[object, ...], state: Mapping[str, object]
) -> Exception:
    """Unpickle an error without re-running ``__init__`` (keeps multiprocessing happy)."""
    err = Exception.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err
