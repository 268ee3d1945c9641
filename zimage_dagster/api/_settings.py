"""A client's settings: where it goes (base URL, the API key from the arguments or the
environment), how long it may take, what it may download, and the ``httpx`` options of the client
it makes for itself. Also what keeps the key out of sight: :class:`Secret`, :func:`redact_headers`,
:func:`strip_query`, and :class:`ClientSettings`'s ``scrub``/``safe_cause``.
"""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from zimage_dagster._version import __version__
from zimage_dagster.api.errors import ConfigurationError
from zimage_dagster.api.policies import PollPolicy, RetryPolicy

DEFAULT_BASE_URL = "https://api.evolink.ai"
ENV_API_KEY = "ZIMAGE_API_KEY"
ENV_BASE_URL = "ZIMAGE_BASE_URL"
#: A descriptive User-Agent: the provider sits behind Cloudflare, which has refused generic ones.
USER_AGENT = f"zimage-dagster/{__version__} httpx/{httpx.__version__}"

#: Connection pool of the clients we make: as many connections as a big batch has requests in
#: flight, but only 16 kept idle. httpcore scans every pooled connection (and, for each idle
#: one, all of them again) twice per request: with the 30-odd idle connections a batch's first
#: burst of polls leaves, that scan was most of a batch's client CPU (1.5-3 s tasks, 200 images:
#: 13 s of 22 s profiled on the event loop; 4 s with 16 kept, and 8 kept churned connections).
HTTP_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=16, keepalive_expiry=30.0)


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


@dataclass(frozen=True)
class ClientSettings:
    """What every flow of one client reads: the key, the base URL, the per-attempt ``timeout``
    and the call ``deadline`` (seconds), the retry and poll policies, the download caps, the
    clock (and the jitter's ``rng``, ``None``: the module's), and whether a download may be
    redirected to an internal address. Its ``repr`` never shows the key.

    >>> s = ClientSettings(Secret("sk-1"), "https://api.example", 30.0, 120.0, RetryPolicy(),
    ...     PollPolicy(), 1024, 1024, clock=lambda: 0.0)
    >>> s.scrub("key sk-1 echoed"), "sk-1" in repr(s)
    ('key [REDACTED] echoed', False)
    """

    api_key: Secret
    base_url: str
    timeout: float
    deadline: float
    retry: RetryPolicy
    poll: PollPolicy
    max_download_bytes: int
    max_image_pixels: int
    clock: Callable[[], float]
    rng: random.Random | None = None
    allow_internal_redirects: bool = False

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.deadline <= 0:
            raise ConfigurationError("timeout and deadline must be > 0 seconds")
        if self.max_download_bytes <= 0 or self.max_image_pixels <= 0:
            raise ConfigurationError("max_download_bytes and max_image_pixels must be > 0")

    def scrub(self, text: str) -> str:
        """``text`` with the API key (should a server echo it) replaced by ``[REDACTED]``."""
        key = self.api_key.get()
        return text.replace(key, "[REDACTED]") if key and key in text else text

    def safe_cause(self, exc: BaseException) -> BaseException | None:
        """``exc`` to chain as ``__cause__``, unless its text holds the API key (then nothing)."""
        key = self.api_key.get()
        return None if key and key in f"{exc}{exc!r}" else exc
