"""Who may write a verdict: the review token, the signed-in session, and the cross-site checks.

The gallery is read-only unless started with ``--review``. Then a verdict needs the review token
(generated and printed once at start, or read from ``--review-token-file``), shown one of two ways:

* a browser signs in once by pasting the token in the sign-in form; it gets a session cookie
  (``HttpOnly``, ``SameSite=Strict``) holding a random nonce and an HMAC of it under the token, so
  the token itself is never in a page, a cookie or a log, and a restart with another token ends
  every session. Each verdict form carries a CSRF value, the HMAC of the session's nonce under
  the token: a page of another site can neither read it nor forge it.
* a script sends ``Authorization: Bearer <token>`` (browsers never add that header by themselves).

Every write also refuses cross-site requests outright: a ``Sec-Fetch-Site`` other than
``same-origin`` or ``none``, or an ``Origin`` other than the gallery's own.

>>> access = ReviewAccess("a-review-token-of-32-characters!", reviewer="ana")
>>> cookie = access.new_session()
>>> nonce = access.session_nonce(cookie)
>>> access.csrf_for(nonce) == access.csrf_for(access.session_nonce(cookie))
True
>>> access.session_nonce(cookie + "x") is None, access.token_matches("wrong")
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from zimage_dagster.engine.reviews import check_reviewer

__all__ = [
    "MIN_TOKEN_LENGTH",
    "SESSION_COOKIE",
    "ReviewAccess",
    "Visitor",
    "cross_site_reason",
    "new_token",
    "read_token_file",
]

#: The session cookie's name.
SESSION_COOKIE = "zimage_review"
#: The shortest review token accepted from a file.
MIN_TOKEN_LENGTH = 16


def new_token() -> str:
    """A fresh review token (32 URL-safe characters, 192 random bits)."""
    return secrets.token_urlsafe(24)


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace removed); a clear error if it is too short.

    >>> import os, tempfile
    >>> fd, name = tempfile.mkstemp(); _ = os.write(fd, b"short\\n"); os.close(fd)
    >>> try:
    ...     read_token_file(name)
    ... except ValueError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    the token must be at least 16 characters (it has 5) and hold no whitespace
    """
    with open(path, encoding="utf-8") as fh:
        token = fh.read().strip()
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ValueError(
            f"review token file {path}: the token must be at least {MIN_TOKEN_LENGTH} characters "
            f"(it has {len(token)}) and hold no whitespace"
        )
    return token


def cross_site_reason(headers: Mapping[str, str], own_origin: str) -> str | None:
    """Why a write request looks cross-site, or ``None`` when it does not.

    >>> cross_site_reason({"origin": "http://127.0.0.1:8080"}, "http://127.0.0.1:8080") is None
    True
    >>> cross_site_reason({"origin": "https://evil.example"}, "http://127.0.0.1:8080")
    "Origin 'https://evil.example' is not this gallery's"
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {fetch_site!r}: a write must come from the gallery's own pages"
    origin = headers.get("origin")
    if origin is not None and origin != own_origin:
        return f"Origin {origin!r} is not this gallery's"
    return None


@dataclass(frozen=True)
class Visitor:
    """What a page may offer to the one who asked for it.

    Attributes:
        review: the gallery takes verdicts (``--review``).
        reviewer: whose verdicts they are.
        csrf: the verdict forms' CSRF value when signed in, else ``None``.
    """

    review: bool = False
    reviewer: str = ""
    csrf: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.csrf is not None


class ReviewAccess:
    """The review token and what is derived from it (sessions, CSRF values)."""

    def __init__(self, token: str, *, reviewer: str) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the review token must be at least {MIN_TOKEN_LENGTH} characters")
        self._key = token.encode("utf-8")
        self.reviewer = check_reviewer(reviewer)

    def __repr__(self) -> str:  # never the token
        return f"ReviewAccess(reviewer={self.reviewer!r})"

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        """Constant-time comparison with the review token."""
        return hmac.compare_digest(given.encode("utf-8"), self._key)

    def new_session(self) -> str:
        """A session cookie's value: ``<nonce>.<HMAC of the nonce>``."""
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._mac('session', nonce)}"

    def session_nonce(self, cookie: str | None) -> str | None:
        """The nonce of a valid session cookie, else ``None``."""
        if not cookie or "." not in cookie:
            return None
        nonce, _, mac = cookie.partition(".")
        return nonce if hmac.compare_digest(mac, self._mac("session", nonce)) else None

    def csrf_for(self, nonce: str | None) -> str | None:
        """The CSRF value of the session's forms."""
        return None if nonce is None else self._mac("csrf", nonce)

    def visitor(self, cookies: Mapping[str, str]) -> Visitor:
        """What the pages offer the bearer of these cookies."""
        nonce = self.session_nonce(cookies.get(SESSION_COOKIE))
        return Visitor(True, self.reviewer, self.csrf_for(nonce))

    def refusal(
        self, headers: Mapping[str, str], cookies: Mapping[str, str], form: Mapping[str, str]
    ) -> str | None:
        """Why a verdict request is refused (the 403's message), or ``None`` to accept it:
        not cross-site, and either the Bearer token or a session with its form's CSRF value."""
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            if self.token_matches(authorization[7:].strip()):
                return None
            return "the review token is wrong"
        csrf = self.csrf_for(self.session_nonce(cookies.get(SESSION_COOKIE)))
        if csrf is None:
            return "a verdict needs the review token: sign in first"
        if not hmac.compare_digest(form.get("csrf", ""), csrf):
            return "the form's CSRF value is missing or stale: reload the page"
        return None
