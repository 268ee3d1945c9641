"""The logic both clients share, written without I/O.

Every operation (a retried HTTP call, a wait, a download, a whole generation) is a generator
("flow") that *yields* what it needs done, :class:`Send` (an HTTP request) or :class:`Sleep`,
and is *sent* the outcome (a :class:`Received` or the ``httpx`` exception). The sync client drives
a flow with blocking calls, the async one with ``await``: the decisions (building requests,
retries, backoff, ``Retry-After``, mapping responses to errors, the polling schedule) live here
once. Flows compose with ``yield from``.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import os
import random
import secrets
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ValidationError

from zimage_dagster._version import __version__
from zimage_dagster.api import validation as v
from zimage_dagster.api.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    APIUnreachableError,
    ConfigurationError,
    CreateOutcomeUnknownError,
    DownloadError,
    DownloadTimeoutError,
    ImageTooLargeError,
    RequestValidationError,
    ResultExpiredError,
    TaskFailedError,
    UnknownTaskStatusError,
    WaitTimeoutError,
    ZImageError,
    is_retryable_task_error_code,
    status_error_class,
)
from zimage_dagster.api.images import DownloadedImage, decode_image
from zimage_dagster.api.models import FAILED_STATUSES, Credits, GenerationRequest, Task, TaskStatus
from zimage_dagster.api.policies import PollPolicy, RetryPolicy
from zimage_dagster.api.polling import LatencyModel, PollSchedule
from zimage_dagster.api.results import GenerationResult, Timings, WaitOutcome
from zimage_dagster.api.validation import is_internal_host

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger("zimage_dagster.api")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_BASE_URL = "https://api.evolink.ai"
ENV_API_KEY = "ZIMAGE_API_KEY"
ENV_BASE_URL = "ZIMAGE_BASE_URL"
CREATE_PATH = "/v1/images/generations"
TASK_PATH = "/v1/tasks/{task_id}"
CREDITS_PATH = "/v1/credits"
#: A descriptive User-Agent: the provider sits behind Cloudflare, which has refused generic ones.
USER_AGENT = f"zimage-dagster/{__version__} httpx/{httpx.__version__}"

#: Connection pool of the clients we make: as many connections as a big batch has requests in
#: flight, but only 16 kept idle. httpcore scans every pooled connection (and, for each idle
#: one, all of them again) twice per request: with the 30-odd idle connections a batch's first
#: burst of polls leaves, that scan was most of a batch's client CPU (1.5-3 s tasks, 200 images:
#: 13 s of 22 s profiled on the event loop; 4 s with 16 kept, and 8 kept churned connections).
HTTP_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=16, keepalive_expiry=30.0)
#: Where the provider's request ID comes back (its gateway uses the first two).
REQUEST_ID_HEADERS = ("x-request-id", "x-oneapi-request-id", "request-id", "x-trace-id")
EXPIRED_STATUSES = frozenset({403, 404, 410})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Redirects a download follows at most.
MAX_REDIRECTS = 5
#: Content encodings a download can decode under its byte cap (asked for in Accept-Encoding).
DOWNLOAD_ENCODINGS = "gzip, deflate"
_ERROR_BODY_LIMIT = 64 * 1024


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


# --- actions exchanged between a flow and its driver ---------------------------------------


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


@dataclass
class StreamGuard:
    """Byte cap and total deadline of a streamed download: the declared length first, then
    every chunk, counted after decoding its content encoding (a gzip bomb is cut within a
    chunk of the cap, never inflated whole), and the clock after every chunk.

    Drivers call :meth:`check_headers`, then :meth:`feed` with every raw chunk (it returns the
    decoded bytes), then :meth:`finish`.
    """

    max_bytes: int
    url: str
    task_id: str | None = None
    deadline_at: float | None = None
    clock: Callable[[], float] = time.monotonic
    seen: int = 0
    _inflater: Any = None

    def remaining_s(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - self.clock()

    def deadline_error(self) -> DownloadTimeoutError:
        return DownloadTimeoutError(
            "download did not finish within its deadline", url=self.url, task_id=self.task_id
        )

    def check_headers(self, headers: httpx.Headers) -> None:
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLargeError(
                f"Content-Length {int(declared)} exceeds the {self.max_bytes}-byte download limit",
                url=self.url,
                task_id=self.task_id,
            )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflater = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise DownloadError(
                f"unsupported Content-Encoding {encoding[:40]!r}",
                url=self.url,
                task_id=self.task_id,
            )

    def _count(self, data: bytes) -> bytes:
        self.seen += len(data)
        if self.seen > self.max_bytes:
            raise ImageTooLargeError(
                f"download exceeded the {self.max_bytes}-byte limit while streaming",
                url=self.url,
                task_id=self.task_id,
            )
        return data

    def feed(self, chunk: bytes) -> bytes:
        """Count a raw chunk (decoded, at most one byte past the cap); check the deadline."""
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            raise self.deadline_error()
        if self._inflater is None:
            return self._count(chunk)
        try:
            return self._count(self._inflater.decompress(chunk, self.max_bytes - self.seen + 1))
        except zlib.error as exc:
            raise DownloadError(
                f"bad compressed body: {exc}", url=self.url, task_id=self.task_id
            ) from None

    def feed_whole(self, content: bytes) -> bytes:
        """Count a body the transport already held whole and decoded (an in-memory response)."""
        self._inflater = None
        return self.feed(content)

    def finish(self) -> bytes:
        """The decoder's last bytes (counted)."""
        if self._inflater is None:
            return b""
        try:
            return self._count(self._inflater.flush())
        except zlib.error as exc:
            raise DownloadError(
                f"bad compressed body: {exc}", url=self.url, task_id=self.task_id
            ) from None


# --- secrets ------------------------------------------------------------------------------


class Secret:
    """Holds the API key; its ``str`` and ``repr`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the API key is not picklable")


def redact_headers(headers: Mapping[str, str] | httpx.Headers) -> dict[str, str]:
    """Headers as a dict for logging, with credentials replaced by ``[REDACTED]``."""
    sensitive = {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
    return {k: ("[REDACTED]" if k.lower() in sensitive else val) for k, val in headers.items()}


def strip_query(url: str | httpx.URL) -> str:
    """The URL without query string, fragment or userinfo (for messages and logs)."""
    parts = urlsplit(str(url))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# --- retry arithmetic ----------------------------------------------------------------------


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


# --- the core ------------------------------------------------------------------------------


@dataclass
class GenerationTracker:
    """What a ``generate`` flow has done so far (read by ``generate_many`` on failure)."""

    task_ids: list[str] = field(default_factory=list)
    seed: int | None = None


def draw_seed() -> int:
    """A random seed in 1..2147483647 (``secrets.randbelow``): the one seed draw, which the
    engine's ``"random"`` seed strategy calls too.

    >>> v.MIN_SEED <= draw_seed() <= v.MAX_SEED
    True
    """
    return secrets.randbelow(v.MAX_SEED) + v.MIN_SEED


def validate_task_id(task_id: object) -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise RequestValidationError("task_id", task_id, "must be a non-empty string")
    if len(task_id) > 256 or any(c.isspace() or ord(c) < 0x20 for c in task_id):
        raise RequestValidationError("task_id", task_id, "is not a plausible task id")
    return task_id


def resolve_settings(api_key: str | None, base_url: str | None) -> tuple[Secret, str]:
    """API key and base URL from the arguments, else ``ZIMAGE_API_KEY`` / ``ZIMAGE_BASE_URL``."""
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if key is None or not key.strip():
        raise ConfigurationError(
            f"no API key: pass api_key=... or set the {ENV_API_KEY} environment variable"
        )
    key = key.strip()
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in key) or not key.isascii():
        raise ConfigurationError("the API key contains whitespace, control or non-ASCII characters")
    url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {strip_query(url)!r}")
    if "@" in parts.netloc:
        raise ConfigurationError("base_url must not contain credentials")
    return Secret(key), url.rstrip("/")


Verify = ssl.SSLContext | str | bool


def ssl_verify(verify: Verify) -> ssl.SSLContext | bool:
    """``verify`` for httpx: a CA bundle path becomes a context trusting that bundle only.

    >>> ssl_verify(True), ssl_verify(False)
    (True, False)
    """
    if isinstance(verify, str):
        if not os.path.isfile(verify):
            raise ConfigurationError(f"verify: no CA bundle file at {verify!r}")
        return ssl.create_default_context(cafile=verify)
    return verify


def http_client_options(timeout: float, verify: Verify = True) -> dict[str, Any]:
    """Options of the ``httpx`` client a ZImage client makes for itself (sync or async): no
    redirects (a download follows them itself, checked), no default auth (the key goes on each
    API request, never to the file host), TLS checked against ``verify`` (``True``: the system's
    CAs; a path or an ``ssl.SSLContext``: a private CA, e.g. the emulator's ``--tls`` one)."""
    return {
        "timeout": timeout,
        "follow_redirects": False,
        "headers": {"User-Agent": USER_AGENT},
        "limits": HTTP_LIMITS,
        "verify": ssl_verify(verify),
    }


class ClientCore:
    """Settings plus the flows. One per client; holds no connection."""

    @classmethod
    def from_arguments(
        cls,
        api_key: str | None,
        base_url: str | None,
        *,
        timeout: float,
        deadline: float,
        retry: RetryPolicy | None,
        poll: PollPolicy | None,
        max_download_bytes: int,
        max_image_pixels: int,
        clock: Callable[[], float] | None,
        injected_client: bool,
        injected_transport: bool,
        allow_internal_redirects: bool = False,
    ) -> ClientCore:
        """The core of a client built from its constructor's arguments (shared by both clients)."""
        key, url = resolve_settings(api_key, base_url)
        if injected_client and injected_transport:
            raise ConfigurationError("pass http_client or transport, not both")
        return cls(
            api_key=key,
            base_url=url,
            timeout=timeout,
            deadline=deadline,
            retry=retry or RetryPolicy(),
            poll=poll or PollPolicy(),
            max_download_bytes=max_download_bytes,
            max_image_pixels=max_image_pixels,
            clock=clock or time.monotonic,
            allow_internal_redirects=allow_internal_redirects,
        )

    def __init__(
        self,
        *,
        api_key: Secret,
        base_url: str,
        timeout: float,
        deadline: float,
        retry: RetryPolicy,
        poll: PollPolicy,
        max_download_bytes: int,
        max_image_pixels: int,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        allow_internal_redirects: bool = False,
    ) -> None:
        if timeout <= 0 or deadline <= 0:
            raise ConfigurationError("timeout and deadline must be > 0 seconds")
        if max_download_bytes <= 0 or max_image_pixels <= 0:
            raise ConfigurationError("max_download_bytes and max_image_pixels must be > 0")
        self._key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.deadline = deadline
        self.retry = retry
        self.poll = poll
        self.max_download_bytes = max_download_bytes
        self.max_image_pixels = max_image_pixels
        self.clock = clock
        self.rng = rng
        self.allow_internal_redirects = allow_internal_redirects
        #: What this client learned of its tasks' timing; every ``wait`` reads and feeds it.
        self.latency = LatencyModel()

    # -- helpers --

    def scrub(self, text: str) -> str:
        """``text`` with the API key (should a server echo it) replaced by ``[REDACTED]``."""
        key = self._key.get()
        return text.replace(key, "[REDACTED]") if key and key in text else text

    def safe_cause(self, exc: BaseException) -> BaseException | None:
        """``exc`` to chain as ``__cause__``, unless its text holds the API key (then nothing)."""
        key = self._key.get()
        return None if key and key in f"{exc}{exc!r}" else exc

    def build_api_request(
        self, method: str, path: str, json_body: Mapping[str, Any] | None, timeout: float
    ) -> httpx.Request:
        headers = {
            "Authorization": f"Bearer {self._key.get()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        content: bytes | None = None
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        return httpx.Request(
            method,
            self.base_url + path,
            headers=headers,
            content=content,
            extensions={"timeout": httpx.Timeout(timeout).as_dict()},
        )

    def error_from_response(self, received: Received, method: str, path: str) -> APIStatusError:
        """Map an HTTP error answer to the :class:`APIStatusError` subclass for its status."""
        code: str | int | None = None
        message = ""
        err_type = param = suggestion = None
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
            err_type = _opt_str(err.get("type"))
            param = _opt_str(err.get("param"))
            suggestion = _opt_str(err.get("fallback_suggestion"))
        elif isinstance(body, dict) and isinstance(body.get("message"), str):
            message = body["message"]
        elif received.content:
            message = received.content[:200].decode("utf-8", "replace").strip()
        if not message:
            message = httpx.codes.get_reason_phrase(received.status_code) or "HTTP error"
        request_id = received.request_id
        cls = status_error_class(received.status_code)
        return cls(
            received.status_code,
            self.scrub(code) if isinstance(code, str) else code,
            self.scrub(message[:1000]),
            type=self.scrub(err_type) if err_type else None,
            param=self.scrub(param) if param else None,
            fallback_suggestion=self.scrub(suggestion) if suggestion else None,
            method=method,
            path=path,
            request_id=self.scrub(request_id) if request_id else None,
            retry_after=parse_retry_after(received.headers),
        )

    def _request_id(self, received: Received) -> str | None:
        found = received.request_id
        return self.scrub(found) if found else None

    def parse(self, received: Received, model: type[M], method: str, path: str) -> M:
        """Parse a 2xx body into ``model``, or raise :class:`APIResponseValidationError`."""
        content = received.content
        key = self._key.get().encode()
        if key and key in content:  # a server echoing our key must not plant it in our objects
            content = content.replace(key, b"[REDACTED]")
        try:
            return model.model_validate_json(content)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise APIResponseValidationError(
                self.scrub(problems), status_code=received.status_code, method=method, path=path
            ).with_request_id(self._request_id(received)) from None

    # -- one HTTP call, retried --

    def request_flow(
        self,
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
        budget = self.deadline if deadline is None else deadline
        policy = self.retry
        start = self.clock()
        attempts = policy.max_retries + 1
        attempt = 0
        while True:
            remaining = budget - (self.clock() - start)
            if remaining <= 0:
                raise APITimeoutError(
                    f"deadline of {budget:.1f} s exhausted after {attempt} attempt(s)",
                    method=method,
                    path=path,
                    deadline_exceeded=True,
                )
            per_attempt = min(self.timeout, remaining)
            request = self.build_api_request(method, path, json_body, per_attempt)
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
            sent = self.clock()
            outcome = yield Send(request)
            cause: BaseException | None = None
            if isinstance(outcome, Received):
                rid = self._request_id(outcome)
                if outcome.is_success:
                    logger.debug(
                        "%s %s -> HTTP %d (request id %s)", method, path, outcome.status_code, rid
                    )
                    return replace(outcome, answered_at=(sent + self.clock()) / 2)
                error: ZImageError = self.error_from_response(outcome, method, path)
                hint = parse_retry_after(outcome.headers)
                retryable = status_is_retryable(policy, outcome.status_code, is_create=is_create)
                logger.debug(
                    "%s %s -> HTTP %d (%s, request id %s)%s",
                    method,
                    path,
                    outcome.status_code,
                    "retryable" if retryable else "final",
                    rid,
                    f", server asks to retry after {hint:.2f} s" if hint is not None else "",
                )
            elif isinstance(outcome, Exception):
                cause = self.safe_cause(outcome)
                hint = None
                error, retryable = self._transport_error(outcome, method, path)
            else:  # pragma: no cover - a driver bug
                raise TypeError(f"unexpected outcome {outcome!r}")
            if not retryable or attempt >= policy.max_retries:
                if retryable:
                    logger.debug("%s %s: giving up after %d attempt(s)", method, path, attempt + 1)
                raise error from cause
            delay = retry_delay(policy, attempt, hint, self.rng)
            elapsed = self.clock() - start
            remaining = budget - elapsed
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
            logger.debug(
                "%s %s: backing off %.2f s before attempt %d", method, path, delay, attempt + 2
            )
            if is_create and isinstance(outcome, Received) and outcome.status_code == 429:
                yield Throttled(delay, budget_s=remaining)
            else:
                yield Sleep(delay)
            attempt += 1

    def _transport_error(
        self, exc: Exception, method: str, path: str
    ) -> tuple[APIConnectionError, bool]:
        """The error of an API call that got no answer, and whether to try again. A create that
        may have reached the server raises :class:`CreateOutcomeUnknownError` (never retried);
        no connection at all to the base URL is an :class:`APIUnreachableError`."""
        is_create = method == "POST"
        what = self.scrub(describe_exception(exc))
        if is_create and not create_never_reached_server(self.retry, exc):
            logger.debug("%s %s failed after sending: %s; outcome unknown", method, path, what)
            raise CreateOutcomeUnknownError(what, method=method, path=path) from self.safe_cause(
                exc
            )
        error: APIConnectionError
        retryable = is_create or exception_is_retryable(exc)
        unreachable = unreachable_reason(exc)
        if unreachable is not None:
            reason, worth_retrying = unreachable
            error = APIUnreachableError(
                strip_query(self.base_url), reason, method=method, path=path
            )
            retryable = retryable and worth_retrying
        elif isinstance(exc, httpx.TimeoutException):
            error = APITimeoutError(what, method=method, path=path)
        else:
            error = APIConnectionError(what, method=method, path=path)
        logger.debug(
            "%s %s failed: %s (%s)", method, path, what, "retryable" if retryable else "final"
        )
        return error, retryable

    # -- API operations --

    def create_flow(
        self, request: GenerationRequest, *, deadline: float | None = None
    ) -> Flow[Task]:
        body = _checked_body(request)
        received = yield from self.request_flow(
            "POST", CREATE_PATH, json_body=body, deadline=deadline
        )
        task = self.parse(received, Task, "POST", CREATE_PATH)
        task._answered_at = received.answered_at
        task._request_id = self._request_id(received)
        logger.debug(
            "created task %s (status %s, request id %s)", task.id, task.status, task._request_id
        )
        return task

    def get_task_flow(self, task_id: str, *, deadline: float | None = None) -> Flow[Task]:
        path = TASK_PATH.format(task_id=quote(validate_task_id(task_id), safe=""))
        received = yield from self.request_flow("GET", path, deadline=deadline)
        task = self.parse(received, Task, "GET", path)
        task._answered_at = received.answered_at
        task._request_id = self._request_id(received)
        return task

    def credits_flow(self) -> Flow[Credits]:
        received = yield from self.request_flow("GET", CREDITS_PATH)
        return self.parse(received, Credits, "GET", CREDITS_PATH)

    def wait_flow(
        self,
        task_or_id: Task | str,
        *,
        deadline: float | None = None,
        on_poll: Callable[[Task], object] | None = None,
    ) -> Flow[WaitOutcome]:
        """Poll until the task is terminal; see :class:`PollPolicy` for the schedule."""
        budget = self.poll.deadline if deadline is None else deadline
        start = self.clock()
        task: Task | None
        if isinstance(task_or_id, Task):
            task, task_id = task_or_id, task_or_id.id
            origin = task._answered_at
        else:
            task, task_id, origin = None, validate_task_id(task_or_id), None
        schedule = PollSchedule(
            self.poll, task.estimated_time if task else None, origin, self.latency
        )
        if task is not None and origin is not None:
            schedule.observe(origin, task)
        polls = 0
        while True:
            now = self.clock()
            if task is not None:
                done = self._finished(task_id, task, polls, schedule, now)
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
            left = budget - (self.clock() - start)
            task = yield from self.get_task_flow(
                task_id, deadline=min(self.deadline, max(left, 1.0))
            )
            polls += 1
            schedule.observe(
                task._answered_at if task._answered_at is not None else self.clock(), task
            )
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

    def _finished(
        self, task_id: str, task: Task, polls: int, schedule: PollSchedule, now: float
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
                self.scrub(message),
                is_retryable_task_error_code(code, 1),
                task=task,
            ).with_request_id(task._request_id)
        if status is None:
            raise UnknownTaskStatusError(task_id, str(task.status)).with_request_id(
                task._request_id
            )
        return None

    def _redirect_target(self, received: Received, hops: int, task_id: str | None) -> str:
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
        if not self.allow_internal_redirects and is_internal_host(target.host):
            raise DownloadError(
                f"redirect to an internal address refused ({strip_query(target)}); "
                "allow_internal_redirects=True permits it for local testing",
                url=clean,
                task_id=task_id,
            ).with_request_id(received.request_id)
        return str(target)

    def download_flow(
        self,
        url: str,
        *,
        task_id: str | None = None,
        keep_pixels: bool = False,
        derive: Callable[[Image.Image], Any] | None = None,
    ) -> Flow[DownloadedImage]:
        """Fetch a result image: no API key, capped size (counted after decoding), a total
        deadline (``self.deadline``, across attempts and however slowly bytes come), at most
        ``MAX_REDIRECTS`` redirects and none towards an internal address (unless
        ``allow_internal_redirects``); decoded safely (see :func:`decode_image`, also for
        ``keep_pixels`` and ``derive``). Returns ``DownloadedImage``."""
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadError(f"not an http(s) URL: {strip_query(str(url))!r}", task_id=task_id)
        policy = self.retry
        start = self.clock()
        deadline_at = start + self.deadline
        attempt = 0
        hops = 0
        current = url
        while True:
            clean = strip_query(current)
            remaining = deadline_at - self.clock()
            if remaining <= 0:
                raise DownloadTimeoutError(
                    f"deadline of {self.deadline:.1f} s exhausted downloading",
                    url=clean,
                    task_id=task_id,
                )
            request = httpx.Request(
                "GET",
                current,
                headers={
                    "User-Agent": USER_AGENT,
                    "Accept": "image/*",
                    "Accept-Encoding": DOWNLOAD_ENCODINGS,
                },
                extensions={"timeout": httpx.Timeout(min(self.timeout, remaining)).as_dict()},
            )
            logger.debug("download %s attempt %d", clean, attempt + 1)
            guard = StreamGuard(
                self.max_download_bytes, clean, task_id, deadline_at=deadline_at, clock=self.clock
            )
            outcome = yield Send(request, stream=True, follow_redirects=False, guard=guard)
            cause: BaseException | None = None
            hint: float | None = None
            if isinstance(outcome, Received):
                rid = outcome.request_id
                if outcome.status_code in REDIRECT_STATUSES:
                    current = self._redirect_target(outcome, hops, task_id)
                    hops += 1
                    logger.debug("download %s redirected to %s", clean, strip_query(current))
                    continue
                if outcome.is_success:
                    image = yield Compute(
                        functools.partial(
                            decode_image,
                            outcome.content,
                            max_pixels=self.max_image_pixels,
                            content_type=outcome.headers.get("content-type"),
                            url=clean,
                            task_id=task_id,
                            keep_pixels=keep_pixels,
                            derive=derive,
                        )
                    )
                    if not isinstance(image, DownloadedImage):  # pragma: no cover
                        raise TypeError(f"unexpected decode outcome {image!r}")
                    logger.debug(
                        "downloaded %s: %s %dx%d, %d bytes (request id %s)",
                        clean,
                        image.format,
                        image.width,
                        image.height,
                        image.bytes,
                        rid,
                    )
                    return image
                if outcome.status_code in EXPIRED_STATUSES:
                    raise ResultExpiredError(
                        clean, task_id, status_code=outcome.status_code
                    ).with_request_id(rid)
                error: ZImageError = DownloadError(
                    f"file host answered HTTP {outcome.status_code}", url=clean, task_id=task_id
                ).with_request_id(rid)
                hint = parse_retry_after(outcome.headers)
                retryable = status_is_retryable(policy, outcome.status_code, is_create=False)
            elif isinstance(outcome, Exception):
                cause = self.safe_cause(outcome)
                error = DownloadError(describe_exception(outcome), url=clean, task_id=task_id)
                retryable = exception_is_retryable(outcome)
            else:  # pragma: no cover
                raise TypeError(f"unexpected outcome {outcome!r}")
            if not retryable or attempt >= policy.max_retries:
                raise error from cause
            delay = retry_delay(policy, attempt, hint, self.rng)
            if delay >= deadline_at - self.clock():
                raise error from cause
            logger.debug("download %s failed (%s); retrying in %.2f s", clean, error, delay)
            yield Sleep(delay)
            attempt += 1

    def generate_flow(
        self,
        request: GenerationRequest,
        *,
        tracker: GenerationTracker | None = None,
        max_task_attempts: int | None = None,
        on_task_created: Callable[[Task], object] | None = None,
        on_poll: Callable[[Task], object] | None = None,
    ) -> Flow[GenerationResult]:
        """Create (with a seed, always), wait, download; resubmit retryable task failures."""
        tracker = tracker if tracker is not None else GenerationTracker()
        seed = request.seed if request.seed is not None else draw_seed()
        tracker.seed = seed
        sent = request if request.seed == seed else request.model_copy(update={"seed": seed})
        limit = max_task_attempts if max_task_attempts is not None else self.retry.max_task_attempts
        begin = self.clock()
        attempt = 0
        while True:
            attempt += 1
            task = yield from self.create_flow(sent)
            tracker.task_ids.append(task.id)
            if on_task_created is not None:
                on_task_created(task)
            try:
                outcome = yield from self.wait_flow(task, on_poll=on_poll)
            except TaskFailedError as exc:
                exc.retryable = is_retryable_task_error_code(exc.code, attempt)
                if exc.retryable and attempt < limit:
                    logger.debug(
                        "task %s failed with %s; resubmitting (attempt %d)",
                        task.id,
                        exc.code,
                        attempt + 1,
                    )
                    continue
                raise
            url = outcome.task.result_url
            if not url:
                raise TaskFailedError(
                    task.id,
                    "missing_results",
                    "the task completed but returned no result link",
                    is_retryable_task_error_code("missing_results", attempt),
                    task=outcome.task,
                )
            dl_start = self.clock()
            image = yield from self.download_flow(url, task_id=task.id)
            end = self.clock()
            timings = Timings(
                queued_s=outcome.queued_s,
                generating_s=outcome.generating_s,
                downloading_s=end - dl_start,
                total_s=end - begin,
            )
            return GenerationResult(
                request=sent,
                task=outcome.task,
                image=image,
                seed=seed,
                timings=timings,
                polls=outcome.polls,
                attempts=attempt,
                task_ids=tuple(tracker.task_ids),
            )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else (str(value) if value is not None else None)


def _checked_body(request: GenerationRequest) -> dict[str, Any]:
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
