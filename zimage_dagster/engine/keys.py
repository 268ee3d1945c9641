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

**Candidates.** With ``variants=N`` a partition is N units of work (one task each). Candidate 0
*is* the partition (its unit key is the partition key: nothing changes for ``variants=1``);
candidate ``i >= 1`` has the unit key ``<partition key>...<i>`` (:func:`candidate_key`: Dagster
refuses ``...`` in a partition key, so no partition key ever looks like it), stored as
``<storage key>~<i>`` (a ``~`` followed by a digit is never written for a partition key, so no
stem of an existing store looks like it). The store and the ledger take unit keys wherever they
take partition keys; :func:`split_candidate` is the one reader of a unit key.

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
>>> keys = ["a__b|c", "x_|y", "~|_~", "plain-key", "a~1", "a...1", "a...01", "a...1...2"]
>>> all(partition_key(storage_key(k)) == k for k in keys)
True
"""

from __future__ import annotations

import re

from zimage_dagster.dataset.keys import (
    InvalidPartitionKeyError,
    check_partition_key,
    partition_key_problem,
)

__all__ = [
    "CANDIDATE_MARK",
    "InvalidPartitionKeyError",
    "candidate_key",
    "check_partition_key",
    "describe_unit",
    "partition_key",
    "partition_key_problem",
    "split_candidate",
    "storage_key",
]

#: Between a partition key and a candidate index in a unit key (Dagster refuses it in keys).
CANDIDATE_MARK = "..."
_UNIT = re.compile(r"(.*)\.\.\.([1-9][0-9]{0,2})", re.DOTALL)
_STEM_CANDIDATE = re.compile(r"~[1-9][0-9]{0,2}")


def candidate_key(partition_key: str, candidate: int = 0) -> str:
    """The unit key of one candidate of a partition: the partition key for candidate 0.

    >>> candidate_key("fox"), candidate_key("fox", 2), candidate_key("2026-01-01|fox", 1)
    ('fox', 'fox...2', '2026-01-01|fox...1')
    """
    if not 0 <= candidate < 1000:
        raise ValueError(f"candidate index {candidate} out of range 0..999")
    return partition_key if candidate == 0 else f"{partition_key}{CANDIDATE_MARK}{candidate}"


def split_candidate(unit_key: str) -> tuple[str, int]:
    """The partition key and candidate index of a unit key (the inverse of
    :func:`candidate_key`).

    >>> split_candidate("fox...2"), split_candidate("fox"), split_candidate("a...0")
    (('fox', 2), ('fox', 0), ('a...0', 0))
    """
    found = _UNIT.fullmatch(unit_key)
    if found is None:
        return unit_key, 0
    return found.group(1), int(found.group(2))


def describe_unit(unit_key: str) -> str:
    """A unit key as people read it in a message: the partition, and the candidate numbered as
    the gallery numbers it (from 1) when it is not the partition's first one.

    Candidate 0 reads as its partition, exactly as a partition of one image (``variants=1``)
    does.

    >>> describe_unit("fox"), describe_unit("fox...2"), describe_unit("2026-01-01|fox...1")
    ('fox', 'fox (candidate 3)', '2026-01-01|fox (candidate 2)')
    """
    partition, candidate = split_candidate(unit_key)
    return f"{partition} (candidate {candidate + 1})" if candidate else partition


def storage_key(key: str) -> str:
    """The storage key (file stem) of a Dagster partition key.

    >>> storage_key("fox"), storage_key("2026-01-02|fox"), storage_key("a__b")
    ('fox', '2026-01-02__fox', 'a~__b')

    A key :func:`check_partition_key` refuses raises :class:`InvalidPartitionKeyError`.
    """
    text, candidate = split_candidate(check_partition_key(key))
    suffix = f"~{candidate}" if candidate else ""
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
    return "".join(out) + suffix


def partition_key(stored: str) -> str:
    """The Dagster partition key of a storage key (the inverse of :func:`storage_key`).

    >>> partition_key("a~__b"), partition_key("2026-01-02__fox")
    ('a__b', '2026-01-02|fox')
    >>> storage_key("2026-01-02|fox...3"), partition_key("2026-01-02__fox~3")
    ('2026-01-02__fox~3', '2026-01-02|fox...3')
    """
    out: list[str] = []
    i = 0
    while i < len(stored):
        pair = stored[i : i + 2]
        if pair[:1] == "~" and _STEM_CANDIDATE.fullmatch(stored, i):  # a candidate's stem
            return candidate_key("".join(out), int(stored[i + 1 :]))
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
