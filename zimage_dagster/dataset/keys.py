"""Partition keys of dataset rows: the rule every key follows, and the key derived from a prompt.

Keys (partition keys and file names) follow :data:`KEY_PATTERN`: ``^[a-z0-9][a-z0-9_-]{0,79}$``,
and not a Windows device name (``con``, ``nul``, ``com1``...). Lowercase only, so two keys never
collide on a case-insensitive filesystem (macOS, Windows); no dot, slash, backslash, colon, space,
``|``, ``,``, ``[``, ``]`` or control character, so a key is safe as a file name on every filesystem
and object store and as a Dagster partition key (Dagster refuses ``...`` and control characters,
and ``| , [ ]`` in multi-partition dimensions). A user key breaking the rule is a bad row: it is
never rewritten. A missing key is derived from the prompt (:func:`derive_key`): a slug and 12 hex
of the prompt's sha256, stable across runs and machines.

>>> check_key("hero-01") is None, derive_key("a red fox")
(True, 'a-red-fox-647c3a6520b8')
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["KEY_PATTERN", "check_key", "derive_key"]

#: The rule every partition key follows (plus: not a Windows device name).
KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,79}$"
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
_RESERVED_KEYS = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
_KEY_RULE = f"must match {KEY_PATTERN} (lowercase letters, digits, '-' and '_'; 1 to 80 characters)"


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def check_key(key: str) -> str | None:
    """``None`` if ``key`` is a valid partition key, else the reason.

    >>> check_key("hero-01"), check_key("con")
    (None, "'con' is a reserved device name on Windows")
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        return _KEY_RULE
    if key in _RESERVED_KEYS:
        return f"{key!r} is a reserved device name on Windows"
    return None


def derive_key(prompt: str) -> str:
    """A stable key for a prompt: up to 40 characters of slug, ``-``, 12 hex of its sha256.

    >>> derive_key("A red fox, in the snow!")
    'a-red-fox-in-the-snow-850d29527006'
    >>> derive_key("東京の夜景")[:7]
    'prompt-'
    """
    ascii_ = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")
    if len(slug) > 40:
        cut = slug[:40]
        slug = (cut.rsplit("-", 1)[0] if "-" in cut else cut).strip("-")
    digest = hashlib.sha256(_utf8(prompt)).hexdigest()[:12]
    return f"{slug or 'prompt'}-{digest}"
