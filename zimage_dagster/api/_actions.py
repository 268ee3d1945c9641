"""What a flow and its driver exchange: a flow *yields* :class:`Send`, :class:`Sleep` (or
:class:`Throttled`) or :class:`Compute`, and is *sent* the outcome (a :class:`Received`, the
``httpx`` exception, or what the work returned). The sync client drives a flow with blocking
calls, the async one with ``await`` (``api/_sync.py``, ``api/_async.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx

from zimage_dagster.api._stream import StreamGuard

T = TypeVar("T")

#: Where the provider's request ID comes back (its gateway uses the first two).
REQUEST_ID_HEADERS = ("x-request-id", "x-oneapi-request-id", "request-id", "x-trace-id")


def request_ids(headers: Mapping[str, str] | httpx.Headers) -> str | None:
    """The request ID(s) an answer carries, from every header that may hold one (distinct
    values joined by ``" / "``), cut to 200 characters; ``None`` if there is none.

    >>> request_ids(httpx.Headers({"x-request-id": "a1", "x-oneapi-request-id": "b2"}))
    'a1 / b2'
    >>> request_ids({"content-type": "application/json"}) is None
    True
    """
    lower = {k.lower(): v for k, v in headers.items()}
    found: list[str] = []
    for name in REQUEST_ID_HEADERS:
        value = lower.get(name, "").strip()
        if value and value not in found:
            found.append(value)
    return " / ".join(found)[:200] if found else None


@dataclass(frozen=True)
class Send:
    """Send ``request``. ``stream``: a download, read under ``guard``'s byte cap."""

    request: httpx.Request
    stream: bool = False
    follow_redirects: bool = False
    guard: StreamGuard | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Throttled(Sleep):
    """A create answered 429 (the provider's cap is reached) waits ``seconds`` (its
    ``Retry-After``, else the backoff) before it is sent again. A driver given a capacity hook
    for the call awaits ``hook(seconds)`` instead, cut off after ``budget_s`` (what is left of
    the call's deadline; ``None``: not cut off); any other driver sleeps, as for a
    :class:`Sleep`."""

    budget_s: float | None = None


@dataclass(frozen=True)
class Compute:
    """Run ``work`` (CPU-bound: checking that an image decodes) and send back its result; its
    exceptions propagate. The async driver runs it in a worker thread, so that a batch's event
    loop goes on polling and downloading meanwhile."""

    work: Callable[[], object]


@dataclass(frozen=True)
class Received:
    """An HTTP answer with its body read (a download's body is read under its byte cap)."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str
    #: When the server answered, on the client's clock: the middle of the round trip (set by
    #: ``request_flow``). The receive time alone is late by the answer's trip back, which under
    #: load is tens of milliseconds: a poll schedule timed from it would look late every time.
    answered_at: float | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def request_id(self) -> str | None:
        return request_ids(self.headers)


Action = Send | Sleep | Compute
Outcome = Received | Exception | object | None
Flow = Generator[Action, Outcome, T]
