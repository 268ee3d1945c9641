"""Pydantic models of the provider's wire format.

Response models tolerate (and keep) fields the server adds; a task status this client does not
know is kept as a plain string instead of failing to parse. The request model applies every
documented rule through :mod:`zimage_dagster.api.validation`.

>>> task = Task.model_validate({"id": "task-unified-1757165031-uyujaw3d", "status": "pending",
...                             "progress": 0, "task_info": {"estimated_time": 10}})
>>> task.known_status, task.is_terminal, task.estimated_time
(<TaskStatus.PENDING: 'pending'>, False, 10.0)
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from zimage_dagster.api import validation as v
from zimage_dagster.api.errors import RequestValidationError

__all__ = [
    "TERMINAL_STATUSES",
    "Credits",
    "CreditsData",
    "ErrorBody",
    "ErrorEnvelope",
    "GenerationRequest",
    "Task",
    "TaskError",
    "TaskInfo",
    "TaskStatus",
    "TokenCredits",
    "Usage",
    "UserCredits",
]


class TaskStatus(str, Enum):
    """The documented task statuses. ``Task.status`` keeps any other value as a plain ``str``.

    >>> TaskStatus("completed") == "completed"
    True
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    #: Not in the documents, but sent by the provider (also spelled ``canceled``, read as this):
    #: a failed task with the ``request_cancelled`` code.
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


#: Statuses after which a task never changes.
TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
)
#: Statuses of a task that ended without an image.
FAILED_STATUSES: frozenset[TaskStatus] = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})
#: The task error code a cancelled task stands for, when it carries none.
CANCELLED_CODE = "request_cancelled"


class _Wire(BaseModel):
    """Base of the response models: extra fields from the server are kept, not refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class GenerationRequest(BaseModel):
    """``POST /v1/images/generations`` body: one image per task.

    Construction applies every documented rule (a broken rule raises pydantic's
    ``ValidationError``, a ``ValueError`` whose text holds the field and the reason; the plain
    functions in :mod:`~zimage_dagster.api.validation` raise ``RequestValidationError``).
    Immutable; use ``model_copy(update=...)`` (the client re-validates before sending).

    >>> req = GenerationRequest(prompt="a cute cat", size="1024x768", seed=42)
    >>> req.to_wire()
    {'model': 'z-image-turbo', 'prompt': 'a cute cat', 'size': '1024x768', 'seed': 42, 'nsfw_check': False}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["z-image-turbo"] = "z-image-turbo"
    prompt: str
    size: str = v.DEFAULT_SIZE
    seed: int | None = None
    nsfw_check: bool = False
    callback_url: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: object) -> str:
        return v.validate_prompt(value)

    @field_validator("size", mode="before")
    @classmethod
    def _check_size(cls, value: object) -> str:
        return v.validate_size(value)

    @field_validator("seed", mode="before")
    @classmethod
    def _check_seed(cls, value: object) -> int | None:
        return v.validate_seed(value)

    @field_validator("nsfw_check", mode="before")
    @classmethod
    def _check_nsfw(cls, value: object) -> bool:
        if not isinstance(value, bool):
            raise RequestValidationError("nsfw_check", value, "must be a boolean")
        return value

    @field_validator("callback_url", mode="before")
    @classmethod
    def _check_callback(cls, value: object) -> str | None:
        return v.validate_callback_url(value)

    def dimensions(self) -> tuple[int, int] | None:
        """``(width, height)`` when ``size`` is ``WxH``, else ``None``.

        >>> GenerationRequest(prompt="x", size="512x640").dimensions()
        (512, 640)
        """
        return v.parse_size(self.size)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body to send (``None`` fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class TaskInfo(_Wire):
    """``task_info``: ``estimated_time`` (seconds; 10 for this model, only on create) and ``can_cancel``."""

    can_cancel: bool | None = None
    estimated_time: float | None = None


class Usage(_Wire):
    """``usage`` on a created task: billing rule, credits reserved, user group."""

    billing_rule: str | None = None
    credits_reserved: float | None = None
    user_group: str | None = None


class TaskError(_Wire):
    """``error`` on a failed task: ``code`` (a business code such as ``content_policy_violation``),
    ``message`` and ``type`` (``task_error``)."""

    code: str | int | None = None
    message: str | None = None
    type: str | None = None


class Task(_Wire):
    """A task, as returned by create (``POST /v1/images/generations``) and query (``GET /v1/tasks/{id}``).

    ``status`` is a :class:`TaskStatus` when documented, else the raw string; use
    :attr:`known_status` and :attr:`is_terminal` rather than comparing strings.

    >>> t = Task.model_validate({"id": "task-unified-1-abcdefgh", "status": "paused", "progress": 3})
    >>> t.status, t.known_status, t.is_terminal
    ('paused', None, False)
    >>> c = Task.model_validate({"id": "task-unified-1-abcdefgh", "status": "canceled"})
    >>> c.status, c.is_failed, c.error.code
    (<TaskStatus.CANCELLED: 'cancelled'>, True, 'request_cancelled')
    """

    id: str
    created: int | None = None
    model: str | None = None
    object: str | None = None
    status: TaskStatus | str
    progress: int = 0
    results: list[str] | None = None
    error: TaskError | None = None
    task_info: TaskInfo | None = None
    type: str | None = None
    usage: Usage | None = None

    # When the server answered with this object (monotonic client clock, the middle of the round
    # trip); lets ``wait`` time its polls from the task's creation. Not part of the wire format.
    _answered_at: float | None = PrivateAttr(default=None)
    # The provider's request ID(s) of the answer this object came from (for errors and logs).
    _request_id: str | None = PrivateAttr(default=None)

    @field_validator("status", mode="before")
    @classmethod
    def _known_or_raw(cls, value: Any) -> TaskStatus | str:
        if isinstance(value, TaskStatus):
            return value
        if not isinstance(value, str):
            raise ValueError(f"status must be a string, not {type(value).__name__}")
        if value == "canceled":
            return TaskStatus.CANCELLED
        try:
            return TaskStatus(value)
        except ValueError:
            return value

    @model_validator(mode="after")
    def _cancelled_has_a_code(self) -> Task:
        if self.status is TaskStatus.CANCELLED and (self.error is None or self.error.code is None):
            message = (self.error.message if self.error else None) or "the task was cancelled"
            self.error = TaskError(code=CANCELLED_CODE, message=message, type="task_error")
        return self

    @field_validator("progress", mode="before")
    @classmethod
    def _clamp_progress(cls, value: Any) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"progress must be a number, not {type(value).__name__}")
        return max(0, min(100, round(value)))

    @property
    def known_status(self) -> TaskStatus | None:
        """The status as a :class:`TaskStatus`, or ``None`` if the server sent an unknown one."""
        return self.status if isinstance(self.status, TaskStatus) else None

    @property
    def is_terminal(self) -> bool:
        """``True`` once the task is ``completed``, ``failed`` or ``cancelled`` (it will not change again)."""
        return self.known_status in TERMINAL_STATUSES

    @property
    def is_completed(self) -> bool:
        return self.known_status is TaskStatus.COMPLETED

    @property
    def is_failed(self) -> bool:
        """``failed``, or ``cancelled`` / ``canceled`` (then ``error.code`` is ``request_cancelled``)."""
        return self.known_status in FAILED_STATUSES

    @property
    def estimated_time(self) -> float | None:
        """``task_info.estimated_time`` in seconds, when the server gave it."""
        return self.task_info.estimated_time if self.task_info else None

    @property
    def result_url(self) -> str | None:
        """The first result link, when completed (one image per task)."""
        return self.results[0] if self.results else None

    @property
    def credits_reserved(self) -> float | None:
        return self.usage.credits_reserved if self.usage else None


class ErrorBody(_Wire):
    """The ``error`` object of an HTTP error. ``code`` is a string (current API) or the HTTP status
    as an integer (older generation, which also sends ``fallback_suggestion``)."""

    code: str | int | None = None
    message: str | None = None
    type: str | None = None
    param: str | None = None
    fallback_suggestion: str | None = None


class ErrorEnvelope(_Wire):
    """``{"error": {...}}``, the body of every HTTP error.

    >>> ErrorEnvelope.model_validate({"error": {"code": 429, "message": "slow", "fallback_suggestion": "wait"}}).error.code
    429
    """

    error: ErrorBody = Field(default_factory=ErrorBody)


class TokenCredits(_Wire):
    remaining_credits: float
    unlimited_credits: bool = False
    used_credits: float


class UserCredits(_Wire):
    remaining_credits: float
    used_credits: float


class CreditsData(_Wire):
    token: TokenCredits
    user: UserCredits


class Credits(_Wire):
    """``GET /v1/credits``: remaining and used credits of the token (key) and of the user.

    >>> c = Credits.model_validate({"data": {"token": {"remaining_credits": 5.0, "unlimited_credits": False,
    ...     "used_credits": 1.0}, "user": {"remaining_credits": 9.5, "used_credits": 2.0}},
    ...     "message": "", "success": True})
    >>> c.remaining, c.user_remaining
    (5.0, 9.5)
    """

    data: CreditsData
    message: str = ""
    success: bool = True

    @property
    def remaining(self) -> float:
        """Credits left for this token (key)."""
        return self.data.token.remaining_credits

    @property
    def unlimited(self) -> bool:
        return self.data.token.unlimited_credits

    @property
    def user_remaining(self) -> float:
        """Credits left for the whole user account."""
        return self.data.user.remaining_credits
