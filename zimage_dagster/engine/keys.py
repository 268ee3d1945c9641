"""The one codec between Dagster partition keys and storage keys (file stems in the store).

A Dagster multi-partition key joins its dimensions with ``|`` (``2026-01-01|hero``), which is a
poor file-name character (refused on Windows, awkward in shells and URLs). In storage it becomes
``__``: ``2026-01-01__hero.png``. The mapping is reversible for every string, so a storage key
always leads back to the exact partition key:

* ``|`` is written ``__``;
* ``~`` is written ``~~``;
* a ``_`` that is followed by ``_`` or ``|`` is written ``~_``, so that every ``__`` in a storage
  key stands for a ``|``.

Keys without ``|``, ``~`` or ``__`` (every dataset key and date) are stored as they are.

Only the image store and the ledger call :func:`storage_key` (they take partition keys and
encode them when they build a path) and :func:`partition_key` (they read their file names back:
:meth:`ImageStore.records <zimage_dagster.engine.store.ImageStore.records>`,
:meth:`TaskLedger.entries <zimage_dagster.engine.ledger.TaskLedger.entries>`); everything else, the
gallery and the sensors included, asks them, and the ledger entries and provenance records hold
the partition key itself.

:func:`storage_key` applies the rule every partition key of an image asset follows, whatever
brought it (:func:`~zimage_dagster.dataset.keys.partition_key_problem`, re-exported here; it
lives with the dataset, the lowest layer that needs it): the store and the ledger skip dot-files
when they scan, so a key starting with ``.`` would be written and then never found again (a
deferred task for it would be paid and never collected). Nothing is ever written for one.

>>> storage_key("2026-01-01|hero")
'2026-01-01__hero'
>>> partition_key("2026-01-01__hero")
'2026-01-01|hero'
>>> all(partition_key(storage_key(k)) == k for k in ["a__b|c", "x_|y", "~|_~", "plain-key"])
True
"""

from __future__ import annotations

from zimage_dagster.dataset.keys import (
    InvalidPartitionKeyError,
    check_partition_key,
    partition_key_problem,
)

__all__ = [
    "InvalidPartitionKeyError",
    "check_partition_key",
    "partition_key",
    "partition_key_problem",
    "storage_key",
]


def storage_key(key: str) -> str:
    """The storage key (file stem) of a Dagster partition key.

    >>> storage_key("fox"), storage_key("2026-01-02|fox"), storage_key("a__b")
    ('fox', '2026-01-02__fox', 'a~__b')

    A key :func:`check_partition_key` refuses raises :class:`InvalidPartitionKeyError`.
    """
    text = check_partition_key(key)
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch == "|":
            out.append("__")
        elif ch == "~":
            out.append("~~")
        elif ch == "_" and i + 1 < len(text) and text[i + 1] in "_|":
            out.append("~_")
        else:
            out.append(ch)
    return "".join(out)


def partition_key(stored: str) -> str:
    """The Dagster partition key of a storage key (the inverse of :func:`storage_key`).

    >>> partition_key("a~__b"), partition_key("2026-01-02__fox")
    ('a__b', '2026-01-02|fox')
    """
    out: list[str] = []
    i = 0
    while i < len(stored):
        pair = stored[i : i + 2]
        if pair in ("~~", "~_"):
            out.append(pair[1])
            i += 2
        elif pair == "__":
            out.append("|")
            i += 2
        else:
            out.append(stored[i])
            i += 1
    return "".join(out)
