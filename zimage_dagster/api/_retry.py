"""Retry arithmetic, without I/O: ``Retry-After``, capped exponential backoff with jitter, which
HTTP statuses and which exceptions are worth another attempt (a create only when the server
cannot have made a task), and when a base URL that cannot be reached is given up.
"""

from __future__ import annotations

import email.utils
import math
import random
import socket
import time
from collections.abc import Mapping

import httpx

from zimage_dagster.api.policies import RetryPolicy


def parse_retry_after(
    headers: Mapping[str, str] | httpx.Headers, now: float | None = None
) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or an
    HTTP date). ``None`` when absent, unparseable or negative.

    >>> parse_retry_after({"retry-after": "2"}), parse_retry_after({"retry-after-ms": "1500"})
    (2.0, 1.5)
    """
    lower = {k.lower(): val for k, val in headers.items()}
    raw_ms = lower.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000.0
    raw = lower.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def backoff_delay(policy: RetryPolicy, retry_index: int, rng: random.Random | None = None) -> float:
    """Capped exponential backoff before retry number ``retry_index + 1``, with full jitter.

    >>> [backoff_delay(RetryPolicy(jitter=False), i) for i in range(6)]
    [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    """
    cap = min(policy.max_backoff, policy.initial_backoff * (2.0 ** min(retry_index, 60)))
    if not policy.jitter:
        return cap
    return (rng or random).uniform(0.0, cap)


def retry_delay(
    policy: RetryPolicy,
    retry_index: int,
    retry_after: float | None,
    rng: random.Random | None = None,
) -> float:
    """The server's hint when it is within ``policy.max_retry_after``, else the backoff.

    >>> retry_delay(RetryPolicy(jitter=False), 0, 2.0), retry_delay(RetryPolicy(jitter=False), 0, 3600.0)
    (2.0, 0.5)
    """
    if retry_after is not None and 0 <= retry_after <= policy.max_retry_after:
        return retry_after
    return backoff_delay(policy, retry_index, rng)


def status_is_retryable(policy: RetryPolicy, status_code: int, *, is_create: bool) -> bool:
    """Whether an HTTP error status is worth another attempt (see :class:`RetryPolicy`)."""
    if is_create:
        return status_code in policy.create_retry_statuses
    if status_code in policy.retry_statuses:
        return True
    return policy.retry_server_errors and status_code >= 500


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def exception_is_retryable(exc: BaseException) -> bool:
    """For a GET: timeouts, network errors and the server hanging up are retried; a malformed URL,
    a local protocol error or too many redirects are not."""
    return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


def create_never_reached_server(policy: RetryPolicy, exc: BaseException) -> bool:
    """For a create: only failures where no connection was made (the server saw nothing)."""
    return bool(_names(exc) & policy.create_retry_exceptions)


#: How long a call keeps retrying a base URL that refuses connections: long enough for a server
#: that is starting, short enough that a wrong URL fails the call within seconds. A host name
#: that does not exist is not retried at all (a temporary DNS failure is, within this window).
UNREACHABLE_RETRY_S = 3.0


def unreachable_reason(exc: BaseException) -> tuple[str, bool] | None:
    """``(why, worth retrying)`` when no connection could be made because ``exc`` (or what
    caused it) is a refused connection or a host name that does not resolve; ``None`` for any
    other failure. A name that does not exist is not worth retrying; a refusal (a server still
    starting) or a temporary DNS failure is.

    >>> import socket
    >>> err = httpx.ConnectError("All connection attempts failed")
    >>> err.__cause__ = ConnectionRefusedError(111, "Connection refused")
    >>> unreachable_reason(err), unreachable_reason(httpx.ReadTimeout("slow"))
    (('connection refused', True), None)
    >>> err.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    >>> unreachable_reason(err)
    ('host name does not resolve', False)
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    host = ""
    if isinstance(exc, httpx.ConnectError):
        try:
            host = f"host name {exc.request.url.host!r}"
        except RuntimeError:  # no request attached
            host = ""
    host = host or "host name"
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused", True
        if isinstance(current, socket.gaierror):
            if current.errno == socket.EAI_AGAIN:
                return f"{host} could not be resolved now (temporary DNS failure)", True
            return f"{host} does not resolve", False
        current = current.__cause__ or current.__context__
    return None


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
