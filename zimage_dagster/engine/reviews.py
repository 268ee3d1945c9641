"""Review verdicts: append-only records in the store, and the one rule for which verdict wins.

A person judges a partition's images: *pick* one candidate, *reject* the partition, or *undo*
their own last verdict. Each verdict is one new file, never rewritten::

    <root>/_reviews/<asset path...>/<storage key>/<record id>.json

written with the storage's own create-if-absent (:meth:`ImageStore.create_new`), so two
reviewers writing at once lose nothing: there is no read-modify-write to race on. A record id is
``<unix time in ns, 19 digits>-<8 random hex>``, so the files of a partition sort by time.

Candidates: a partition may hold up to :data:`MAX_CANDIDATES` images (``variants=N``); a pick
names the candidate's index (``0`` is the first, and today the only, image of a partition).

**Which verdict wins** (:func:`winning_verdict`): order a partition's records by ``(at, id)``.
A pick or reject *stands* unless an undo record by the same reviewer names it (``undoes``). The
partition's verdict is the last standing pick or reject; with none standing it is unreviewed. So
of two reviewers the later verdict wins, and when its author undoes it the earlier one is back.
An undo naming another reviewer's record, or none that exists, changes nothing; undoing twice
the same record counts once (a double click cannot undo two verdicts).

>>> import tempfile
>>> from zimage_dagster.engine.store import ImageStore
>>> store = ImageStore(tempfile.mkdtemp())
>>> _ = record_verdict(store, "hero", "fox", "pick", reviewer="ana", candidate=0)
>>> _ = record_verdict(store, "hero", "fox", "reject", reviewer="bo", note="blurry")
>>> current_verdicts(store, "hero")["fox"].verdict
'reject'
>>> _ = record_verdict(store, "hero", "fox", "undo", reviewer="bo")
>>> found = current_verdicts(store, "hero")["fox"]
>>> (found.verdict, found.candidate, found.reviewer)
('pick', 0, 'ana')
>>> len(read_records(store, "hero", "fox"))  # every record is kept
3
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from upath import UPath

from zimage_dagster.engine.store import (
    REVIEWS_DIR,
    AssetLike,
    ImageStore,
    asset_parts,
    file_stem,
)

__all__ = [
    "MAX_CANDIDATES",
    "REVIEW_STATES",
    "VERDICTS",
    "NothingToUndoError",
    "ReviewError",
    "ReviewRecord",
    "Verdict",
    "check_reviewer",
    "current_verdicts",
    "read_records",
    "record_verdict",
    "review_state",
    "reviews_folder",
    "winning_verdict",
]

log = logging.getLogger(__name__)

#: What a record says: pick a candidate, reject the partition, or undo one's own verdict.
VERDICTS: tuple[str, ...] = ("pick", "reject", "undo")
#: A partition's review state, from its verdict (what filters and checks show).
REVIEW_STATES: tuple[str, ...] = ("unreviewed", "picked", "rejected")
#: The most candidates a partition may hold (``variants`` is at most 8).
MAX_CANDIDATES = 8
_MAX_REVIEWER = 100
_MAX_NOTE = 2000
_RECORD_ID = re.compile(r"[0-9]{19}-[0-9a-f]{8}")


class ReviewError(ValueError):
    """A verdict that cannot be recorded: the message names the field and the value."""


class NothingToUndoError(ReviewError):
    """An undo with no standing verdict of that reviewer on the partition."""


def check_reviewer(name: object) -> str:
    """``name`` if it is a reviewer's name (1-100 characters, no control character), else raise.

    >>> check_reviewer("ana")
    'ana'
    >>> check_reviewer("")
    Traceback (most recent call last):
    ...
    zimage_dagster.engine.reviews.ReviewError: reviewer '': must be 1 to 100 characters
    """
    if not isinstance(name, str) or not 1 <= len(name) <= _MAX_REVIEWER or name != name.strip():
        raise ReviewError(f"reviewer {name!r}: must be 1 to {_MAX_REVIEWER} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ReviewError(f"reviewer {name!r}: holds a control character")
    return name


def _check_note(note: object) -> str:
    if not isinstance(note, str) or len(note) > _MAX_NOTE:
        raise ReviewError(f"note: must be text of at most {_MAX_NOTE} characters")
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in note):
        raise ReviewError("note: holds a control character (only new lines and tabs may)")
    return note


def _check_candidate(verdict: str, candidate: object) -> int | None:
    if verdict != "pick":
        if candidate is not None:
            raise ReviewError(f"candidate {candidate!r}: only a pick names a candidate")
        return None
    if isinstance(candidate, bool) or not isinstance(candidate, int):
        raise ReviewError(f"candidate {candidate!r}: a pick needs a candidate index")
    if not 0 <= candidate < MAX_CANDIDATES:
        raise ReviewError(f"candidate {candidate}: must be 0 to {MAX_CANDIDATES - 1}")
    return candidate


@dataclass(frozen=True)
class ReviewRecord:
    """One verdict, as stored: who said what of which partition (and candidate), and when.

    Attributes:
        asset: the asset's key parts.
        partition_key: the Dagster partition key (the file's folder is its storage key).
        verdict: ``pick``, ``reject`` or ``undo``.
        reviewer: who (the gallery's ``--reviewer``).
        at: when, in unix seconds.
        id: the record's unique id, also its file name: ``<at in ns>-<8 random hex>``.
        candidate: the picked candidate's index (a pick only).
        note: free text (a reject's reason, say).
        undoes: the id of the record an undo cancels (an undo only).

    >>> record = ReviewRecord(("hero",), "fox", "pick", "ana", 1.5, "0000000001500000000-0a1b2c3d", 0)
    >>> ReviewRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    True
    """

    asset: tuple[str, ...]
    partition_key: str
    verdict: str
    reviewer: str
    at: float
    id: str
    candidate: int | None = None
    note: str = ""
    undoes: str | None = None

    def __post_init__(self) -> None:
        asset_parts(self.asset)
        file_stem(self.partition_key)
        if self.verdict not in VERDICTS:
            raise ReviewError(f"verdict {self.verdict!r}: must be one of {', '.join(VERDICTS)}")
        check_reviewer(self.reviewer)
        _check_candidate(self.verdict, self.candidate)
        _check_note(self.note)
        if not isinstance(self.at, (int, float)) or not math.isfinite(self.at):
            raise ReviewError(f"at {self.at!r}: must be unix seconds")
        if not isinstance(self.id, str) or not _RECORD_ID.fullmatch(self.id):
            raise ReviewError(f"id {self.id!r}: must look like <19 digits>-<8 hex>")
        wants_target = self.verdict == "undo"
        if wants_target != (
            isinstance(self.undoes, str) and bool(_RECORD_ID.fullmatch(self.undoes))
        ):
            raise ReviewError(
                f"undoes {self.undoes!r}: an undo (and only an undo) names a record id"
            )

    @property
    def order(self) -> tuple[float, str]:
        """The sort key of the winner rule: ``(at, id)``."""
        return (float(self.at), self.id)

    def to_json(self) -> dict[str, Any]:
        """The stored JSON object (a ``version`` for later formats)."""
        return {
            "version": 1,
            "asset": list(self.asset),
            "partition_key": self.partition_key,
            "verdict": self.verdict,
            "candidate": self.candidate,
            "note": self.note,
            "reviewer": self.reviewer,
            "at": self.at,
            "id": self.id,
            "undoes": self.undoes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewRecord:
        """Parse and check a stored record (``ReviewError``/``ValueError`` if it is not one)."""
        asset = data.get("asset")
        if not isinstance(asset, list):
            raise ReviewError(f"asset {asset!r}: must be a list of key parts")
        return cls(
            asset=tuple(asset),
            partition_key=data.get("partition_key"),  # type: ignore[arg-type]
            verdict=str(data.get("verdict")),
            reviewer=data.get("reviewer"),  # type: ignore[arg-type]  # checked by __post_init__
            at=data.get("at"),  # type: ignore[arg-type]
            id=data.get("id"),  # type: ignore[arg-type]
            candidate=data.get("candidate"),
            note=data.get("note", ""),
            undoes=data.get("undoes"),
        )


@dataclass(frozen=True)
class Verdict:
    """A partition's current verdict: the winning record (see the module doc for the rule).

    Attributes:
        verdict: ``pick`` or ``reject``.
        candidate: the picked candidate (a pick), else ``None``.
        reviewer, at, note: of the winning record.
        record_id: the winning record's id.
        records: how many records the partition has (the history behind the verdict).
    """

    verdict: str
    candidate: int | None
    reviewer: str
    at: float
    note: str
    record_id: str
    records: int


def winning_verdict(records: Iterable[ReviewRecord]) -> Verdict | None:
    """The verdict of one partition's records, or ``None`` (unreviewed): the last standing pick
    or reject by ``(at, id)``; an undo by a record's own reviewer cancels it.

    >>> def rec(n, verdict, who, undoes=None, candidate=None):
    ...     return ReviewRecord(("a",), "k", verdict, who, float(n), f"{n:019d}-00000000",
    ...                         candidate, undoes=undoes)
    >>> pick, reject = rec(1, "pick", "ana", candidate=2), rec(2, "reject", "bo")
    >>> winning_verdict([reject, pick]).verdict
    'reject'
    >>> winning_verdict([pick, reject, rec(3, "undo", "ana", undoes=reject.id)]).verdict
    'reject'
    >>> winning_verdict([pick, reject, rec(3, "undo", "bo", undoes=reject.id)]).candidate
    2
    >>> winning_verdict([pick, rec(2, "undo", "ana", undoes=pick.id)]) is None
    True
    """
    ordered = sorted(records, key=lambda r: r.order)
    authors = {r.id: r.reviewer for r in ordered if r.verdict != "undo"}
    undone = {
        r.undoes
        for r in ordered
        if r.verdict == "undo" and authors.get(r.undoes or "") == r.reviewer
    }
    for record in reversed(ordered):
        if record.verdict != "undo" and record.id not in undone:
            return Verdict(
                verdict=record.verdict,
                candidate=record.candidate,
                reviewer=record.reviewer,
                at=record.at,
                note=record.note,
                record_id=record.id,
                records=len(ordered),
            )
    return None


def review_state(verdict: Verdict | None) -> str:
    """``unreviewed`` (no verdict), ``picked`` or ``rejected``.

    >>> review_state(None), review_state(Verdict("reject", None, "bo", 1.0, "", "i", 1))
    ('unreviewed', 'rejected')
    """
    if verdict is None:
        return "unreviewed"
    return "picked" if verdict.verdict == "pick" else "rejected"


def _standing_of(records: Sequence[ReviewRecord], reviewer: str) -> ReviewRecord | None:
    """The reviewer's last pick or reject that no undo of theirs cancelled (what undo cancels)."""
    undone = {r.undoes for r in records if r.verdict == "undo" and r.reviewer == reviewer}
    mine = [r for r in records if r.reviewer == reviewer and r.verdict != "undo"]
    standing = [r for r in mine if r.id not in undone]
    return max(standing, key=lambda r: r.order) if standing else None


def reviews_folder(store: ImageStore, asset: AssetLike, partition_key: str | None = None) -> UPath:
    """``<root>/_reviews/<asset path...>[/<storage key>]``.

    >>> reviews_folder(ImageStore("memory://r"), ["catalog", "hero"], "2026-01-01|fox").path
    '/r/_reviews/catalog/hero/2026-01-01__fox'
    """
    store.asset_dir(asset)  # the asset's own checks (no reserved name)
    parts = asset_parts(asset)
    if partition_key is None:
        return store.join(REVIEWS_DIR, *parts)
    return store.join(REVIEWS_DIR, *parts, file_stem(partition_key))


def _parse(path: str, raw: bytes) -> ReviewRecord | None:
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ReviewError("not a JSON object")
        return ReviewRecord.from_json(data)
    except (ValueError, TypeError) as exc:
        log.warning("skipping review record %s: %s", path, exc)
        return None


def read_records(
    store: ImageStore, asset: AssetLike, partition_key: str | None = None
) -> list[ReviewRecord]:
    """Every review record of the asset (or of one partition), ordered by ``(at, id)``.

    One bulk read of the folder; an unreadable record is logged and skipped (never changed: the
    records are append-only). Records are matched by their content, so a nested asset's records
    (``catalog/hero`` under ``catalog``) are not the outer asset's.
    """
    parts = asset_parts(asset)
    folder = reviews_folder(store, asset, partition_key)
    found = []
    for path, raw in store.read_all(folder, ".json").items():
        record = _parse(path, raw)
        if record is None or record.asset != parts:
            continue
        if partition_key is not None and record.partition_key != partition_key:
            continue
        found.append(record)
    return sorted(found, key=lambda r: r.order)


def current_verdicts(store: ImageStore, asset: AssetLike) -> dict[str, Verdict]:
    """``{partition key: Verdict}`` of every reviewed partition of the asset (unreviewed ones,
    and those whose every verdict was undone, are absent)."""
    by_key: dict[str, list[ReviewRecord]] = {}
    for record in read_records(store, asset):
        by_key.setdefault(record.partition_key, []).append(record)
    out = {}
    for key, records in by_key.items():
        verdict = winning_verdict(records)
        if verdict is not None:
            out[key] = verdict
    return out


def record_verdict(
    store: ImageStore,
    asset: AssetLike,
    partition_key: str,
    verdict: str,
    *,
    reviewer: str,
    candidate: int | None = None,
    note: str = "",
    clock: Callable[[], int] = time.time_ns,
) -> ReviewRecord:
    """Write one new review record and return it.

    ``undo`` cancels the reviewer's own last standing verdict on the partition (it reads the
    partition's records to name it; :class:`NothingToUndoError` if there is none). Bad input
    raises :class:`ReviewError` naming the field and the value, before anything is written.
    """
    undoes = None
    if verdict == "undo":
        target = _standing_of(read_records(store, asset, partition_key), check_reviewer(reviewer))
        if target is None:
            raise NothingToUndoError(
                f"reviewer {reviewer!r} has no verdict to undo on partition {partition_key!r}"
            )
        undoes = target.id
    for _ in range(5):
        now = clock()
        record = ReviewRecord(
            asset=asset_parts(asset),
            partition_key=partition_key,
            verdict=verdict,
            reviewer=reviewer,
            at=now / 1e9,
            id=f"{now:019d}-{secrets.token_hex(4)}",
            candidate=candidate,
            note=note,
            undoes=undoes,
        )
        path = reviews_folder(store, asset, partition_key) / f"{record.id}.json"
        data = json.dumps(record.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8")
        try:
            store.create_new(path, data)
        except FileExistsError:  # the same nanosecond and random part: draw another id
            continue
        return record
    raise ReviewError(f"could not find a free record id under {path.parent}")
