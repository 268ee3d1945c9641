"""The provider's HTTP error envelope, in both generations.

Current: `{"error": {"code": "invalid_request", "message": ..., "type": ..., "param"?: ...}}`.
Legacy (documented for `/v1/credits`): `code` is the HTTP status number and a
`fallback_suggestion` may follow.

>>> ApiError(400, "invalid_request", "prompt is required", param="prompt").envelope()
{'error': {'code': 'invalid_request', 'message': 'prompt is required', 'type': 'invalid_request_error', 'param': 'prompt'}}
>>> ApiError(429, "rate_limit_exceeded", "slow down", retry_after=2).envelope(legacy=True)["error"]["code"]
429
"""

from __future__ import annotations

import math
from typing import Any

# HTTP status -> (current code, type), for errors raised without an explicit code.
DEFAULT_CODES: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "invalid_request_error"),
    401: ("unauthorized", "authentication_error"),
    402: ("insufficient_quota", "insufficient_quota"),
    403: ("permission_denied", "invalid_request_error"),
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    408: ("request_timeout", "api_error"),
    409: ("conflict", "invalid_request_error"),
    429: ("rate_limit_exceeded", "rate_limit_error"),
    500: ("internal_error", "api_error"),
    502: ("upstream_error", "upstream_error"),
    503: ("service_unavailable", "service_unavailable_error"),
    504: ("gateway_timeout", "api_error"),
}

# The types the documents pair with specific codes.
TYPES_BY_CODE: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "invalid_task_id": "invalid_request_error",
    "unauthorized": "authentication_error",
    "insufficient_quota": "insufficient_quota",
    "quota_exceeded": "insufficient_quota",
    "model_access_denied": "invalid_request_error",
    "permission_denied": "invalid_request_error",
    "task_not_found": "invalid_request_error",
    "rate_limit_exceeded": "rate_limit_error",
    "internal_error": "api_error",
}

FALLBACK_SUGGESTIONS: dict[int, str] = {
    429: "retry after {s} seconds",
    500: "try again later",
    502: "try again later",
    503: "retry after {s} seconds",
}


def default_code(status: int) -> tuple[str, str]:
    """(code, type) for an HTTP status, falling back by class."""
    if status in DEFAULT_CODES:
        return DEFAULT_CODES[status]
    return DEFAULT_CODES[500] if status >= 500 else DEFAULT_CODES[400]


class ApiError(Exception):
    """An HTTP error answered in the provider's envelope.

    `retry_after` (seconds) becomes a `Retry-After` header, rounded up to whole seconds.
    """

    def __init__(
        self,
        status: int,
        code: str | None = None,
        message: str | None = None,
        *,
        param: str | None = None,
        type_: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        fallback_code, fallback_type = default_code(status)
        self.status = status
        self.code = code or fallback_code
        self.type = type_ or TYPES_BY_CODE.get(self.code, fallback_type)
        self.message = message or self.code.replace("_", " ").capitalize()
        self.param = param
        self.retry_after = retry_after
        super().__init__(f"{status} {self.code}: {self.message}")

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(0, math.ceil(self.retry_after)))}

    def envelope(self, *, legacy: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "code": self.status if legacy else self.code,
            "message": self.message,
            "type": self.type,
        }
        if self.param is not None:
            body["param"] = self.param
        if legacy and self.status in FALLBACK_SUGGESTIONS:
            seconds = math.ceil(self.retry_after) if self.retry_after is not None else 30
            body["fallback_suggestion"] = FALLBACK_SUGGESTIONS[self.status].format(s=seconds)
        return {"error": body}
