"""Which shard a dataset row belongs to: the one rule of sharded mode (``partitioning="shards"``).

A shard is a Dagster partition holding many rows. A row's shard depends on its key and the
shard count only, never on the other rows or their order: the key's SHA-256 goes through
Lamping and Veach's *jump consistent hash* ("A Fast, Minimal Memory, Consistent Hash
Algorithm", 2014). So:

* adding or removing rows moves no other row while the shard count stays the same;
* when the count grows from ``n`` to ``m``, a row either stays where it was or moves to one of
  the new shards ``n..m-1`` (about ``(m - n) / m`` of the rows move, never between old shards).

The count is :func:`shard_count`: the one given (``shard_count``, pinned: the layout never
changes), else ``ceil(rows / shard_size)`` of the dataset as loaded (it grows with the dataset).
A row that moves to a new shard costs nothing: images, the ledger and the claims are per row
(its key), so the new shard's run reuses the stored image; the old shard's manifest lists the
row until that shard is materialized again.

>>> shard_count(600, 200), shard_count(650, 200), shard_count(650, 200, pinned=3)
(3, 4, 3)
>>> shard_of("fox", 3), shard_key(2), shard_index_of("shard-00002")
('shard-00000', 'shard-00002', 2)
>>> all(shard_of(f"k{i}", 4) in (shard_of(f"k{i}", 3), "shard-00003") for i in range(500))
True
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable

__all__ = [
    "SHARD_PREFIX",
    "group_by_shard",
    "is_shard_key",
    "shard_count",
    "shard_index",
    "shard_index_of",
    "shard_key",
    "shard_keys",
    "shard_of",
]

#: Shard partition keys are ``shard-00000``, ``shard-00001``... (sorted as numbers sort).
SHARD_PREFIX = "shard-"
_SHARD_RE = re.compile(r"^shard-(\d{5,})$")
_MASK = (1 << 64) - 1


def shard_count(rows: int, shard_size: int, pinned: int | None = None) -> int:
    """The number of shards: ``pinned`` when given, else ``ceil(rows / shard_size)`` (at least 1).

    >>> shard_count(0, 1000), shard_count(1000, 1000), shard_count(1001, 1000)
    (1, 1, 2)
    """
    if pinned is not None:
        if pinned < 1:
            raise ValueError("shard_count must be >= 1")
        return pinned
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return max(1, math.ceil(rows / shard_size))


def _jump(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit ``key`` into ``0..buckets-1``."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_index(row_key: str, count: int) -> int:
    """The index (``0..count-1``) of the shard holding ``row_key``.

    >>> shard_index("fox", 1)
    0
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    digest = hashlib.sha256(row_key.encode("utf-8")).digest()
    return _jump(int.from_bytes(digest[:8], "big"), count)


def shard_key(index: int) -> str:
    """The partition key of shard ``index``."""
    return f"{SHARD_PREFIX}{index:05d}"


def shard_keys(count: int) -> list[str]:
    """Every shard's partition key, in order."""
    return [shard_key(i) for i in range(count)]


def shard_of(row_key: str, count: int) -> str:
    """The partition key of the shard holding ``row_key``."""
    return shard_key(shard_index(row_key, count))


def is_shard_key(key: str) -> bool:
    """True for a shard's partition key.

    >>> is_shard_key("shard-00012"), is_shard_key("fox")
    (True, False)
    """
    return _SHARD_RE.match(key) is not None


def shard_index_of(key: str) -> int:
    """The index of a shard's partition key (``ValueError`` for another key)."""
    match = _SHARD_RE.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a shard key ({SHARD_PREFIX}NNNNN)")
    return int(match.group(1))


def group_by_shard(row_keys: Iterable[str], count: int) -> dict[str, list[str]]:
    """``shard key -> row keys`` (in the given order) for the shards that hold any row.

    >>> group_by_shard(["a", "b", "c"], 1)
    {'shard-00000': ['a', 'b', 'c']}
    """
    out: dict[str, list[str]] = {}
    for key in row_keys:
        out.setdefault(shard_of(key, count), []).append(key)
    return out
