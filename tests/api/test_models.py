"""Response models, the error tree and the task-error classification."""

from __future__ import annotations

import pickle

import pytest

import zimage_dagster.api as api
from zimage_dagster.api import (
    FIXABLE_TASK_ERROR_CODES,
    RETRYABLE_TASK_ERROR_CODES,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Credits,
    ErrorEnvelope,
    InsufficientQuotaError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResultExpiredError,
    Task,
    TaskFailedError,
    TaskStatus,
    WaitTimeoutError,
    ZImageError,
    is_retryable_task_error_code,
)
from zimage_dagster.api.errors import status_error_class

CREATED = {
    "created": 1757165031,
    "id": "task-unified-1757165031-uyujaw3d",
    "model": "z-image-turbo",
    "object": "image.generation.task",
    "progress": 0,
    "status": "pending",
    "task_info": {"can_cancel": True, "estimated_time": 10},
    "type": "image",
    "usage": {"billing_rule": "per_call", "credits_reserved": 0.026, "user_group": "default"},
}


def test_created_task_parses() -> None:
    task = Task.model_validate(CREATED)
    assert task.status is TaskStatus.PENDING
    assert task.known_status is TaskStatus.PENDING
    assert not task.is_terminal
    assert task.estimated_time == 10
    assert task.credits_reserved == 0.026
    assert task.result_url is None


def test_completed_and_failed_tasks() -> None:
    done = Task.model_validate(
        {**CREATED, "status": "completed", "progress": 100, "results": ["https://f/x.png"]}
    )
    assert done.is_terminal
    assert done.is_completed
    assert done.result_url == "https://f/x.png"
    failed = Task.model_validate(
        {
            **CREATED,
            "status": "failed",
            "error": {"code": "content_policy_violation", "message": "no", "type": "task_error"},
        }
    )
    assert failed.is_terminal
    assert failed.is_failed
    assert failed.error is not None
    assert failed.error.code == "content_policy_violation"


def test_unknown_status_and_extra_fields_are_kept() -> None:
    task = Task.model_validate(
        {**CREATED, "status": "cancelling", "brand_new": {"x": 1}, "progress": 12.6}
    )
    assert task.status == "cancelling"
    assert task.known_status is None
    assert not task.is_terminal
    assert task.progress == 13
    assert task.model_dump()["brand_new"] == {"x": 1}
    minimal = Task.model_validate({"id": "t", "status": "pending"})
    assert minimal.progress == 0
    assert minimal.task_info is None
    assert minimal.estimated_time is None


def test_error_envelope_string_and_integer_codes() -> None:
    new = ErrorEnvelope.model_validate(
        {
            "error": {
                "code": "invalid_task_id",
                "message": "bad",
                "type": "invalid_request_error",
                "param": "task_id",
            }
        }
    )
    assert new.error.code == "invalid_task_id"
    assert new.error.param == "task_id"
    old = ErrorEnvelope.model_validate(
        {
            "error": {
                "code": 429,
                "message": "slow",
                "type": "rate_limit_error",
                "fallback_suggestion": "retry after 60 seconds",
            }
        }
    )
    assert old.error.code == 429
    assert old.error.fallback_suggestion == "retry after 60 seconds"
    assert ErrorEnvelope.model_validate({}).error.code is None


def test_credits() -> None:
    credits = Credits.model_validate(
        {
            "data": {
                "token": {
                    "remaining_credits": 99416.4429,
                    "unlimited_credits": False,
                    "used_credits": 583.5571,
                },
                "user": {"remaining_credits": 1095.3996, "used_credits": 135.9048},
            },
            "message": "",
            "success": True,
        }
    )
    assert credits.remaining == 99416.4429
    assert credits.user_remaining == 1095.3996
    assert credits.unlimited is False


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientQuotaError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (599, InternalServerError),
        (408, APIStatusError),
        (409, APIStatusError),
    ],
)
def test_status_error_classes(status: int, cls: type[APIStatusError]) -> None:
    assert status_error_class(status) is cls
    assert issubclass(cls, APIStatusError)
    assert issubclass(cls, ZImageError)


def test_status_error_carries_everything() -> None:
    err = RateLimitError(
        429,
        429,
        "slow",
        type="rate_limit_error",
        param="token",
        fallback_suggestion="retry after 60 seconds",
        method="GET",
        path="/v1/credits",
        request_id="req-1",
        retry_after=2.0,
    )
    assert (err.status_code, err.code, err.message, err.type, err.param) == (
        429,
        429,
        "slow",
        "rate_limit_error",
        "token",
    )
    assert (err.method, err.path, err.request_id, err.retry_after) == (
        "GET",
        "/v1/credits",
        "req-1",
        2.0,
    )
    text = str(err)
    for part in ("429", "slow", "GET /v1/credits", "req-1", "retry after 60 seconds", "token"):
        assert part in text
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RateLimitError
    assert again.retry_after == 2.0
    assert str(again) == text


@pytest.mark.parametrize("code", sorted(FIXABLE_TASK_ERROR_CODES))
def test_fixable_codes_never_retryable(code: str) -> None:
    assert not is_retryable_task_error_code(code, 1)
    assert not is_retryable_task_error_code(code, 2)


@pytest.mark.parametrize("code", sorted(RETRYABLE_TASK_ERROR_CODES))
def test_server_side_codes_retryable(code: str) -> None:
    assert is_retryable_task_error_code(code, 1)
    assert is_retryable_task_error_code(code, 3)


@pytest.mark.parametrize("code", ["never_seen_before", None, 500, ""])
def test_unknown_codes_retryable_once(code: str | int | None) -> None:
    assert is_retryable_task_error_code(code, 1)
    assert not is_retryable_task_error_code(code, 2)


def test_provider_code_lists_are_exact() -> None:
    assert {
        "content_policy_violation",
        "invalid_parameters",
        "image_processing_error",
        "image_dimension_mismatch",
    } == FIXABLE_TASK_ERROR_CODES
    assert {
        "generation_failed_no_content",
        "service_error",
        "generation_timeout",
        "resource_exhausted",
        "quota_exceeded",
        "service_unavailable",
        "resource_not_found",
        "unknown_error",
        "request_cancelled",  # the provider's advice: resubmit
    } == RETRYABLE_TASK_ERROR_CODES


def test_task_level_errors() -> None:
    failed = TaskFailedError("task-unified-1-abcdefgh", "service_error", "busy", True)
    assert (failed.task_id, failed.code, failed.message, failed.retryable) == (
        "task-unified-1-abcdefgh",
        "service_error",
        "busy",
        True,
    )
    timeout = WaitTimeoutError("task-unified-1-abcdefgh", "processing", 12.5)
    assert (timeout.task_id, timeout.last_status, timeout.elapsed) == (
        "task-unified-1-abcdefgh",
        "processing",
        12.5,
    )
    expired = ResultExpiredError("https://files.example/a.png", "task-unified-1-abcdefgh")
    assert expired.url == "https://files.example/a.png"
    assert expired.task_id == "task-unified-1-abcdefgh"
    for err in (failed, timeout, expired):
        assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_public_surface_from_internals_doc() -> None:
    names = [
        "GenerationRequest",
        "Task",
        "TaskStatus",
        "TaskInfo",
        "Usage",
        "TaskError",
        "ErrorBody",
        "ErrorEnvelope",
        "Credits",
        "validate_prompt",
        "validate_size",
        "validate_seed",
        "validate_callback_url",
        "parse_size",
        "SUPPORTED_RATIOS",
        "MAX_PROMPT_LENGTH",
        "MIN_SIDE",
        "MAX_SIDE",
        "MIN_SEED",
        "MAX_SEED",
        "DownloadedImage",
        "GenerationResult",
        "Timings",
        "WaitOutcome",
        "GenerationFailure",
        "PollPolicy",
        "RetryPolicy",
        "ZImageClient",
        "AsyncZImageClient",
        "ZImageError",
        "RequestValidationError",
        "APIConnectionError",
        "APITimeoutError",
        "CreateOutcomeUnknownError",
        "APIStatusError",
        "BadRequestError",
        "AuthenticationError",
        "InsufficientQuotaError",
        "PermissionDeniedError",
        "NotFoundError",
        "RateLimitError",
        "InternalServerError",
        "TaskFailedError",
        "WaitTimeoutError",
        "ResultExpiredError",
        "DownloadError",
        "ImageTooLargeError",
        "NotAnImageError",
        "is_retryable_task_error_code",
        "FIXABLE_TASK_ERROR_CODES",
        "RETRYABLE_TASK_ERROR_CODES",
    ]
    for name in names:
        assert name in api.__all__, name
        assert getattr(api, name) is not None
    assert sorted(api.__all__) == sorted(set(api.__all__))
    for name in api.__all__:
        assert getattr(api, name, None) is not None, name


def test_error_tree_is_rooted() -> None:
    for name in api.__all__:
        obj = getattr(api, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, ZImageError), name


def test_policies_defaults() -> None:
    retry = api.RetryPolicy()
    assert (retry.max_retries, retry.initial_backoff, retry.max_backoff, retry.max_retry_after) == (
        2,
        0.5,
        8.0,
        60.0,
    )
    assert retry.create_retry_statuses == {429, 503}
    assert retry.create_retry_exceptions == {"ConnectError", "ConnectTimeout", "PoolTimeout"}
    with pytest.raises(ValueError, match="max_retries"):
        api.RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="growth"):
        api.PollPolicy(growth=0.5)
