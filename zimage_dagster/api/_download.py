"""Fetching a result image, without I/O: no API key, a byte cap counted after decoding, a total
deadline, checked redirects (never towards an internal address unless allowed), retries, and the
image decoded safely off the event loop (:func:`download_flow`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from zimage_dagster.api._actions import Compute, Flow, Received, Send, Sleep
from zimage_dagster.api._retry import (
    describe_exception,
    exception_is_retryable,
    parse_retry_after,
    retry_delay,
    status_is_retryable,
)
from zimage_dagster.api._settings import USER_AGENT, ClientSettings, strip_query
from zimage_dagster.api._stream import StreamGuard
from zimage_dagster.api.errors import (
    DownloadError,
    DownloadTimeoutError,
    ResultExpiredError,
    ZImageError,
)
from zimage_dagster.api.images import DownloadedImage, ImageCheck, decode_image
from zimage_dagster.api.validation import is_internal_host

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger("zimage_dagster.api")

EXPIRED_STATUSES = frozenset({403, 404, 410})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Redirects a download follows at most.
MAX_REDIRECTS = 5
#: Content encodings a download can decode under its byte cap (asked for in Accept-Encoding).
DOWNLOAD_ENCODINGS = "gzip, deflate"


def redirect_target(s: ClientSettings, received: Received, hops: int, task_id: str | None) -> str:
    """Where a download redirect leads, if it may be followed (else ``DownloadError``)."""
    clean = strip_query(received.url)
    location = received.headers.get("location")
    if not location:
        raise DownloadError(
            f"file host answered HTTP {received.status_code} without a Location",
            url=clean,
            task_id=task_id,
        ).with_request_id(received.request_id)
    if hops >= MAX_REDIRECTS:
        raise DownloadError(
            f"more than {MAX_REDIRECTS} redirects", url=clean, task_id=task_id
        ).with_request_id(received.request_id)
    try:
        target = httpx.URL(received.url).join(location)
    except (httpx.InvalidURL, ValueError):
        raise DownloadError(
            f"unusable redirect Location {strip_query(location)!r}", url=clean, task_id=task_id
        ) from None
    if target.scheme not in ("http", "https") or not target.host:
        raise DownloadError(
            f"redirect to a non-http(s) URL {strip_query(target)!r}", url=clean, task_id=task_id
        )
    if not s.allow_internal_redirects and is_internal_host(target.host):
        raise DownloadError(
            f"redirect to an internal address refused ({strip_query(target)}); "
            "allow_internal_redirects=True permits it for local testing",
            url=clean,
            task_id=task_id,
        ).with_request_id(received.request_id)
    return str(target)


def _download_request(url: str, timeout: float) -> httpx.Request:
    return httpx.Request(
        "GET",
        url,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "image/*",
            "Accept-Encoding": DOWNLOAD_ENCODINGS,
        },
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )


def download_flow(
    s: ClientSettings,
    url: str,
    *,
    task_id: str | None = None,
    keep_pixels: bool = False,
    derive: Callable[[Image.Image], Any] | None = None,
    check: ImageCheck = "decode",
) -> Flow[DownloadedImage]:
    """Fetch a result image: no API key, capped size (counted after decoding), a total
    deadline (``s.deadline``, across attempts and however slowly bytes come), at most
    ``MAX_REDIRECTS`` redirects and none towards an internal address (unless
    ``allow_internal_redirects``); decoded safely (see :func:`decode_image`, also for
    ``keep_pixels``, ``derive`` and ``check``). Returns ``DownloadedImage``."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"not an http(s) URL: {strip_query(str(url))!r}", task_id=task_id)
    policy = s.retry
    deadline_at = s.clock() + s.deadline
    attempt = 0
    hops = 0
    current = url
    while True:
        clean = strip_query(current)
        remaining = deadline_at - s.clock()
        if remaining <= 0:
            raise DownloadTimeoutError(
                f"deadline of {s.deadline:.1f} s exhausted downloading", url=clean, task_id=task_id
            )
        request = _download_request(current, min(s.timeout, remaining))
        logger.debug("download %s attempt %d", clean, attempt + 1)
        guard = StreamGuard(
            s.max_download_bytes, clean, task_id, deadline_at=deadline_at, clock=s.clock
        )
        outcome = yield Send(request, stream=True, follow_redirects=False, guard=guard)
        cause: BaseException | None = None
        hint: float | None = None
        if isinstance(outcome, Received):
            if outcome.status_code in REDIRECT_STATUSES:
                current = redirect_target(s, outcome, hops, task_id)
                hops += 1
                logger.debug("download %s redirected to %s", clean, strip_query(current))
                continue
            if outcome.is_success:
                image = yield Compute(
                    functools.partial(
                        decode_image,
                        outcome.content,
                        max_pixels=s.max_image_pixels,
                        content_type=outcome.headers.get("content-type"),
                        url=clean,
                        task_id=task_id,
                        keep_pixels=keep_pixels,
                        derive=derive,
                        check=check,
                    )
                )
                return _downloaded(image, clean, outcome.request_id)
            error: ZImageError = _file_host_error(outcome, clean, task_id)
            hint = parse_retry_after(outcome.headers)
            retryable = status_is_retryable(policy, outcome.status_code, is_create=False)
        elif isinstance(outcome, Exception):
            cause = s.safe_cause(outcome)
            error = DownloadError(describe_exception(outcome), url=clean, task_id=task_id)
            retryable = exception_is_retryable(outcome)
        else:  # pragma: no cover
            raise TypeError(f"unexpected outcome {outcome!r}")
        if not retryable or attempt >= policy.max_retries:
            raise error from cause
        delay = retry_delay(policy, attempt, hint, s.rng)
        if delay >= deadline_at - s.clock():
            raise error from cause
        logger.debug("download %s failed (%s); retrying in %.2f s", clean, error, delay)
        yield Sleep(delay)
        attempt += 1


def _downloaded(image: object, clean: str, request_id: str | None) -> DownloadedImage:
    if not isinstance(image, DownloadedImage):  # pragma: no cover
        raise TypeError(f"unexpected decode outcome {image!r}")
    logger.debug(
        "downloaded %s: %s %dx%d, %d bytes (request id %s)",
        clean,
        image.format,
        image.width,
        image.height,
        image.bytes,
        request_id,
    )
    return image


def _file_host_error(received: Received, clean: str, task_id: str | None) -> ZImageError:
    """An error answer of the file host: the result expired (403, 404, 410: raised, not
    retried) or a :class:`DownloadError` (retried when its status is worth it)."""
    rid = received.request_id
    if received.status_code in EXPIRED_STATUSES:
        raise ResultExpiredError(clean, task_id, status_code=received.status_code).with_request_id(
            rid
        )
    return DownloadError(
        f"file host answered HTTP {received.status_code}", url=clean, task_id=task_id
    ).with_request_id(rid)
