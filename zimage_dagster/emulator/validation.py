"""Validation of create requests and task IDs, with the provider's errors.

Every failure is an `ApiError(400, "invalid_request", ..., param=<field>)`, except body-level
problems (no JSON, not an object), which name no field, and a malformed task ID
(`invalid_task_id`, param `task_id`).

Decision where the documents are silent: an unknown `model` is a 400 `invalid_request` with
`param: "model"` (the 403 `model_access_denied` is about a token's access to a known model).
JSON `null` for an optional field means "absent".

>>> req = validate_create({"model": "z-image-turbo", "prompt": "a cute cat", "size": "16:9"})
>>> (req.width, req.height, req.seed)
(1280, 720, None)
>>> validate_create({"model": "z-image-turbo", "prompt": ""})
Traceback (most recent call last):
...
zimage_dagster.emulator.errors.ApiError: 400 invalid_request: prompt must not be empty
>>> validate_create({"model": "z-image-turbo", "prompt": "a \\ud800 cat"})
Traceback (most recent call last):
...
zimage_dagster.emulator.errors.ApiError: 400 invalid_request: prompt contains a lone surrogate (U+D800) at index 2
>>> parse_size("1024x768")
(1024, 768)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from zimage_dagster.emulator.addresses import classify_host
from zimage_dagster.emulator.errors import ApiError
from zimage_dagster.emulator.spec import CREATE_RULES

# What each ratio renders at (the provider's documented output sizes for this model).
RATIO_DIMENSIONS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1152),
    "4:3": (1152, 864),
    "9:16": (720, 1280),
    "16:9": (1280, 720),
    "1:2": (720, 1440),
    "2:1": (1440, 720),
}
assert set(RATIO_DIMENSIONS) == set(CREATE_RULES.ratios)

DEFAULT_SIZE = "1:1"
TASK_ID_RE = re.compile(r"task-unified-[0-9]+-[a-z0-9]{8}")
_WXH_RE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


@dataclass(frozen=True)
class CreateRequest:
    """A valid create request; `seed` is None when the caller sent none."""

    model: str
    prompt: str
    size: str
    width: int
    height: int
    seed: int | None
    nsfw_check: bool
    callback_url: str | None


def _invalid(param: str | None, message: str) -> ApiError:
    return ApiError(400, "invalid_request", message, param=param)


def _check_text(value: str, param: str) -> str:
    """A string that encodes as UTF-8: JSON can carry a lone surrogate (`"\\ud800"`), which no
    image, log or answer can hold, so it is refused here, naming where it is."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = f"U+{ord(value[exc.start]):04X}"
        raise _invalid(
            param, f"{param} contains a lone surrogate ({char}) at index {exc.start}"
        ) from None
    return value


def parse_size(size: str) -> tuple[int, int] | None:
    """(width, height) of a `WxH` size, or None when `size` is not of that form."""
    match = _WXH_RE.fullmatch(size)
    return (int(match.group(1)), int(match.group(2))) if match else None


def size_dimensions(size: str) -> tuple[int, int]:
    """Validated pixel dimensions of a ratio or `WxH` size; raises ApiError(param=size)."""
    if size in RATIO_DIMENSIONS:
        return RATIO_DIMENSIONS[size]
    dims = parse_size(size)
    if dims is None:
        ratios = ", ".join(CREATE_RULES.ratios)
        raise _invalid("size", f"size must be one of {ratios} or WxH (e.g. 1024x768)")
    lo, hi = CREATE_RULES.min_side, CREATE_RULES.max_side
    if not all(lo <= side <= hi for side in dims):
        raise _invalid("size", f"width and height must each be between {lo} and {hi} pixels")
    return dims


def check_callback_url(url: Any, *, allow_loopback: bool = False) -> str:
    """The documented rule: a string, HTTPS, at most 2048 characters, no internal address.

    With `allow_loopback` (a test-only setting), `http://` or `https://` to a loopback host passes.

    >>> check_callback_url("https://hooks.example.com/done")
    'https://hooks.example.com/done'
    >>> check_callback_url("http://127.0.0.1:9000/cb", allow_loopback=True)
    'http://127.0.0.1:9000/cb'
    """
    if not isinstance(url, str):
        raise _invalid("callback_url", "callback_url must be a string")
    _check_text(url, "callback_url")
    if len(url) > CREATE_RULES.max_callback_length:
        limit = CREATE_RULES.max_callback_length
        raise _invalid("callback_url", f"callback_url must be at most {limit} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _invalid(
            "callback_url", "callback_url must not contain whitespace or control characters"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise _invalid("callback_url", "callback_url is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise _invalid("callback_url", "callback_url must be an absolute https:// URL")
    kind = classify_host(host)
    if kind == "loopback" and allow_loopback:
        return url
    if scheme != "https":
        raise _invalid("callback_url", "callback_url must use HTTPS")
    if kind == "invalid":
        raise _invalid("callback_url", "callback_url has an invalid host")
    if kind != "public":
        raise _invalid("callback_url", "callback_url must not point to an internal address")
    return url


def validate_create(body: Any, *, allow_loopback_callbacks: bool = False) -> CreateRequest:
    """Check a parsed JSON body against the documented rules, field by field."""
    if not isinstance(body, dict):
        raise _invalid(None, "Request body must be a JSON object")

    model = body.get("model")
    if model is None:
        raise _invalid("model", "model is required")
    if not isinstance(model, str) or model not in CREATE_RULES.model_names:
        raise _invalid("model", f"model must be one of: {', '.join(CREATE_RULES.model_names)}")

    prompt = body.get("prompt")
    if prompt is None:
        raise _invalid("prompt", "prompt is required")
    if not isinstance(prompt, str):
        raise _invalid("prompt", "prompt must be a string")
    _check_text(prompt, "prompt")
    if not prompt.strip():
        raise _invalid("prompt", "prompt must not be empty")
    if len(prompt) > CREATE_RULES.max_prompt_length:
        limit = CREATE_RULES.max_prompt_length
        raise _invalid("prompt", f"prompt must be at most {limit} characters")

    size = body.get("size")
    if size is None:
        size = DEFAULT_SIZE
    if not isinstance(size, str):
        raise _invalid("size", "size must be a string")
    width, height = size_dimensions(size)

    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _invalid("seed", "seed must be an integer")
        lo, hi = CREATE_RULES.min_seed, CREATE_RULES.max_seed
        if not lo <= seed <= hi:
            raise _invalid("seed", f"seed must be between {lo} and {hi}")

    nsfw_check = body.get("nsfw_check")
    if nsfw_check is None:
        nsfw_check = False
    if not isinstance(nsfw_check, bool):
        raise _invalid("nsfw_check", "nsfw_check must be a boolean")

    callback_url = body.get("callback_url")
    if callback_url is not None:
        callback_url = check_callback_url(callback_url, allow_loopback=allow_loopback_callbacks)

    return CreateRequest(
        model=model,
        prompt=prompt,
        size=size,
        width=width,
        height=height,
        seed=seed,
        nsfw_check=nsfw_check,
        callback_url=callback_url,
    )


def check_task_id(task_id: str) -> str:
    """`task-unified-<digits>-<8 lowercase alnum>` or a 400 `invalid_task_id`.

    >>> check_task_id("task-unified-1757165031-uyujaw3d")
    'task-unified-1757165031-uyujaw3d'
    """
    if not TASK_ID_RE.fullmatch(task_id):
        raise ApiError(
            400,
            "invalid_task_id",
            "Invalid task ID format, must look like task-unified-<timestamp>-<8 lowercase letters or digits>",
            param="task_id",
        )
    return task_id
