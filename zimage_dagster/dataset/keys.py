"""Partition keys of dataset rows: the rule every key follows, and the key derived from a prompt.

Keys (partition keys and file names) follow :data:`KEY_PATTERN`: ``^[a-z0-9][a-z0-9_-]{0,79}$``,
and not a Windows device name (``con``, ``nul``, ``com1``...). Lowercase only, so two keys never
collide on a case-insensitive filesystem (macOS, Windows); no dot, slash, backslash, colon, space,
``|``, ``,``, ``[``, ``]`` or control character, so a key is safe as a file name on every filesystem
and object store and as a Dagster partition key (Dagster refuses ``...`` and control characters,
and ``| , [ ]`` in multi-partition dimensions). A user key breaking the rule is a bad row: it is
never rewritten. A missing key is derived from the prompt (:func:`derive_key`): a slug and 12 hex
of the prompt's sha256, stable across runs and machines.

Every partition key of an image asset, a dataset's or not (a date, a dynamic partition added by
hand), follows :func:`partition_key_problem`: a non-empty string not starting with ``.`` (the
image store's and the task ledger's scans skip dot-files). Its one home is here, the lowest layer
that needs it; the engine's storage codec applies it too.

>>> check_key("hero-01") is None, derive_key("a red fox")
(True, 'a-red-fox-647c3a6520b8')
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = [
    "KEY_PATTERN",
    "InvalidPartitionKeyError",
    "check_key",
    "check_partition_key",
    "derive_key",
    "partition_key_problem",
]

#: The rule every partition key follows (plus: not a Windows device name).
KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,79}$"
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
_RESERVED_KEYS = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
_KEY_RULE = f"must match {KEY_PATTERN} (lowercase letters, digits, '-' and '_'; 1 to 80 characters)"


class InvalidPartitionKeyError(ValueError):
    """A partition key the image store and the ledger cannot hold; the message names it.

    >>> str(InvalidPartitionKeyError(".hidden", "starts with '.'"))
    "partition key '.hidden' refused: starts with '.'"
    """

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"partition key {key!r} refused: {reason}")

    def __reduce__(self) -> tuple[type[InvalidPartitionKeyError], tuple[object, str]]:
        return (type(self), (self.key, self.reason))


def partition_key_problem(key: object) -> str | None:
    """``None`` when ``key`` can be a partition key of an image asset, else why not: it must be a
    non-empty string that does not start with ``.`` (the store's and the ledger's scans skip
    dot-files, so its image and its task would be invisible to them).

    >>> partition_key_problem("fox"), partition_key_problem("2026-01-01|hero")
    (None, None)
    >>> partition_key_problem(".hidden")
    "starts with '.': the image store and the task ledger skip dot-files when they scan, so its image and its task could never be found"
    """
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    if key.startswith("."):
        return (
            "starts with '.': the image store and the task ledger skip dot-files when they scan, "
            "so its image and its task could never be found"
        )
    return None


def check_partition_key(key: object) -> str:
    """``key`` when :func:`partition_key_problem` finds nothing, else
    :class:`InvalidPartitionKeyError` naming it.

    >>> check_partition_key("fox")
    'fox'
    >>> check_partition_key("..x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    zimage_dagster.dataset.keys.InvalidPartitionKeyError: partition key '..x' refused: starts with '.'...
    """
    problem = partition_key_problem(key)
    if problem is not None:
        raise InvalidPartitionKeyError(key, problem)
    assert isinstance(key, str)
    return key


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def check_key(key: str) -> str | None:
    """``None`` if ``key`` is a valid partition key, else the reason.

    >>> check_key("hero-01"), check_key("con")
    (None, "'con' is a reserved device name on Windows")
    >>> check_key(".hidden")[:16]
    "starts with '.':"
    """
    problem = partition_key_problem(key)  # the rule of every partition key, whatever its source
    if problem is not None:
        return problem
    if not _KEY_RE.fullmatch(key):
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
