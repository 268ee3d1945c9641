"""The task ledger: every task we created, written before we wait on it.

The API has no idempotency key, so the only protection against paying twice is memory: right after
a create succeeds, the task ID goes into the ledger, *before* any wait. A retried step or a re-run
after a crash reads the ledger and picks the live task up instead of creating a new one; the
deferred-mode sensor scans it in bulk for tasks to collect.

Layout: one small JSON file per partition, in the image store::

    <root>/_ledger/<asset path...>/<storage key>.json

Entries hold the Dagster partition key itself (``LedgerEntry.partition_key``, e.g.
``2026-01-01|hero``); only the file name is the storage key (``2026-01-01__hero``, from the one
codec in :mod:`zimage_dagster.engine.keys`). Every method takes the partition key.

Writes are atomic (temp file + ``os.replace`` locally, a single PUT on object stores).

A small task-ID index sits beside the entries, so that a callback naming a task finds its entry in
O(1) (:meth:`TaskLedger.find_task`)::

    <root>/_ledger/_by_task/<task_id>.json      {"asset": [...], "partition_key": "..."}

It is written right after the entry by :meth:`TaskLedger.record_submitted` (a crash in between
only costs the O(1) lookup: the sensor still polls the task). ``_by_task`` and ``_state`` (small
state files of the sensors) are reserved: no asset key may start with them, and scans skip them.

Concurrency: two steps working on different partitions never touch the same file. Two writers
on the *same* partition are not expected (Dagster runs one step per partition at a time); if it
happens the last complete write wins, files are never torn, and the ``mark_*`` methods take the
``task_id`` they are about and raise :class:`LedgerConflictError` when the entry has since moved
to another task (e.g. a collector for an old task after a resubmission), so a stale writer cannot
overwrite a newer attempt's state. (On object stores the check-then-write is not a lock.)

Statuses: ``submitted`` (task created, not finished as far as we know), ``completed`` (the
provider reports it completed; the image is not stored yet), ``collected`` (image stored),
``failed`` (the provider reports failure; see ``error_code``), ``expired`` (the result link died
before we collected it: regenerate with the same seed), ``abandoned`` (we gave up on it).

Entries hold the request fields sent (model, prompt, size, seed, nsfw_check) and never a secret:
only those fields are kept from the request mapping given (``callback_url`` is dropped too, as it
may carry a token).

Example:
    >>> import tempfile
    >>> from zimage_dagster.engine.store import ImageStore
    >>> ledger = TaskLedger(ImageStore(tempfile.mkdtemp()))
    >>> e = ledger.record_submitted("hero", "2026-01-01|fox", task_id="task-unified-1-aaaaaaaa",
    ...                             request={"prompt": "a fox", "size": "1:1", "seed": 42})
    >>> ledger.get("hero", "2026-01-01|fox").status
    <LedgerStatus.SUBMITTED: 'submitted'>
    >>> ledger.mark_collected("hero", "2026-01-01|fox", "task-unified-1-aaaaaaaa").status.value
    'collected'
    >>> [x.partition_key for x in ledger.iter_entries(statuses=["collected"])]
    ['2026-01-01|fox']
    >>> ledger.path("hero", "2026-01-01|fox").name
    '2026-01-01__fox.json'
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from upath import UPath

from zimage_dagster.engine.keys import partition_key as decode_key
from zimage_dagster.engine.request import request_fingerprint
from zimage_dagster.engine.store import (
    LEDGER_DIR,
    AssetLike,
    ImageStore,
    asset_parts,
    check_path_component,
    file_stem,
)

__all__ = [
    "INDEX_DIR",
    "LEDGER_VERSION",
    "OPEN_STATUSES",
    "REQUEST_FIELDS",
    "STATE_DIR",
    "LedgerConflictError",
    "LedgerEntry",
    "LedgerStatus",
    "PreviousAttempt",
    "TaskLedger",
]

log = logging.getLogger(__name__)

#: The request fields kept in an entry (anything else in the given mapping is dropped).
REQUEST_FIELDS: tuple[str, ...] = ("model", "prompt", "size", "seed", "nsfw_check")

_MAX_MESSAGE_CHARS = 2000

#: Version of the entry layout (2: ``partition_key`` is the Dagster partition key itself).
LEDGER_VERSION = 2

#: Reserved folders under ``<root>/_ledger`` (not assets): the task-ID index and sensor state.
INDEX_DIR = "_by_task"
STATE_DIR = "_state"
_RESERVED = frozenset({INDEX_DIR, STATE_DIR})


class LedgerStatus(str, Enum):
    """Where a ledger entry's task stands (see the module doc)."""

    SUBMITTED = "submitted"
    COMPLETED = "completed"
    FAILED = "failed"
    COLLECTED = "collected"
    EXPIRED = "expired"
    ABANDONED = "abandoned"


#: Statuses of tasks still worth watching or collecting (the sensor scans these).
OPEN_STATUSES: frozenset[LedgerStatus] = frozenset({LedgerStatus.SUBMITTED, LedgerStatus.COMPLETED})


class LedgerConflictError(RuntimeError):
    """The entry now belongs to another task than the one the caller is updating."""


@dataclass(frozen=True)
class PreviousAttempt:
    """An earlier task for the same partition and how it ended."""

    task_id: str
    status: LedgerStatus
    submitted_at: float
    ended_at: float
    error_code: str | None = None
    error_message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "submitted_at": self.submitted_at,
            "ended_at": self.ended_at,
            "error_code": self.error_code,
            "error_message": self.error_message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreviousAttempt:
        """Inverse of :meth:`to_json`."""
        return cls(
            task_id=str(data["task_id"]),
            status=LedgerStatus(data["status"]),
            submitted_at=float(data["submitted_at"]),
            ended_at=float(data["ended_at"]),
            error_code=data.get("error_code"),
            error_message=data.get("error_message"),
        )


@dataclass(frozen=True)
class LedgerEntry:
    """The ledger's record of one partition's current task (and its earlier ones).

    ``asset`` is the asset key's parts; ``asset_name`` joins them with ``/``. Times are unix
    seconds. ``attempt`` counts tasks created for this partition (1 for the first).
    """

    asset: tuple[str, ...]
    partition_key: str
    task_id: str
    seed: int
    fingerprint: str
    request: Mapping[str, Any]
    status: LedgerStatus
    submitted_at: float
    updated_at: float
    attempt: int = 1
    previous: tuple[PreviousAttempt, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    run_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def asset_name(self) -> str:
        """``"catalog/hero"`` for ``("catalog", "hero")``."""
        return "/".join(self.asset)

    @property
    def is_open(self) -> bool:
        """True while the task is still to be watched or collected."""
        return self.status in OPEN_STATUSES

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the file's content)."""
        return {
            "ledger_version": LEDGER_VERSION,
            "asset": list(self.asset),
            "partition_key": self.partition_key,
            "task_id": self.task_id,
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "request": dict(self.request),
            "status": self.status.value,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "attempt": self.attempt,
            "previous": [p.to_json() for p in self.previous],
            "error_code": self.error_code,
            "error_message": self.error_message,
            "run_id": self.run_id,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LedgerEntry:
        """Inverse of :meth:`to_json`; raises ``KeyError``/``ValueError`` on a malformed record.

        A version 1 record held the storage key: its partition key is read back through the codec.
        """
        key = str(data["partition_key"])
        if int(data.get("ledger_version", 1)) < 2:
            key = decode_key(key)
        return cls(
            asset=tuple(str(p) for p in data["asset"]),
            partition_key=key,
            task_id=str(data["task_id"]),
            seed=int(data["seed"]),
            fingerprint=str(data["fingerprint"]),
            request=dict(data.get("request") or {}),
            status=LedgerStatus(data["status"]),
            submitted_at=float(data["submitted_at"]),
            updated_at=float(data["updated_at"]),
            attempt=int(data.get("attempt", 1)),
            previous=tuple(PreviousAttempt.from_json(p) for p in data.get("previous") or ()),
            error_code=data.get("error_code"),
            error_message=data.get("error_message"),
            run_id=data.get("run_id"),
            extra=dict(data.get("extra") or {}),
        )


def _ledger_asset_parts(asset: AssetLike) -> tuple[str, ...]:
    parts = asset_parts(asset)
    if parts[0] in _RESERVED:
        raise ValueError(f"asset key {parts!r}: {parts[0]!r} is reserved in the ledger")
    return parts


def _clip(message: str | None) -> str | None:
    if message is None:
        return None
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[:_MAX_MESSAGE_CHARS] + "..."


class TaskLedger:
    """Submitted tasks, one JSON file per partition under ``<root>/_ledger/``.

    Args:
        store: the :class:`~zimage_dagster.storage.ImageStore` (or a root for one).
        clock: returns unix seconds (tests pass a fake clock).
    """

    def __init__(
        self,
        store: ImageStore | str | os.PathLike[str] | UPath,
        *,
        clock: Any = time.time,
    ) -> None:
        self.store = store if isinstance(store, ImageStore) else ImageStore(store)
        self._clock = clock

    def __repr__(self) -> str:
        return f"TaskLedger({self.store.root!s})"

    # -- paths ---------------------------------------------------------------------------------

    def folder(self, asset: AssetLike | None = None) -> UPath:
        """``<root>/_ledger`` or ``<root>/_ledger/<asset path...>``."""
        if asset is None:
            return self.store.join(LEDGER_DIR)
        return self.store.join(LEDGER_DIR, *_ledger_asset_parts(asset))

    def path(self, asset: AssetLike, partition_key: str) -> UPath:
        """``<root>/_ledger/<asset path...>/<storage key>.json``."""
        stem = file_stem(partition_key)
        return self.store.join(LEDGER_DIR, *_ledger_asset_parts(asset), f"{stem}.json")

    def index_path(self, task_id: str) -> UPath:
        """``<root>/_ledger/_by_task/<task_id>.json`` (raises ``UnsafePathError`` for a bad ID)."""
        check_path_component(task_id, "task ID")
        return self.store.join(LEDGER_DIR, INDEX_DIR, f"{task_id}.json")

    def state_path(self, asset: AssetLike, name: str) -> UPath:
        """``<root>/_ledger/_state/<asset path...>/<name>.json``: small state of a sensor."""
        check_path_component(name, "state name")
        return self.store.join(LEDGER_DIR, STATE_DIR, *asset_parts(asset), f"{name}.json")

    # -- reading -------------------------------------------------------------------------------

    def get(self, asset: AssetLike, partition_key: str) -> LedgerEntry | None:
        """The partition's entry, or ``None``."""
        data = self.store.read_bytes_or_none(self.path(asset, partition_key))
        if data is None:
            return None
        return LedgerEntry.from_json(json.loads(data))

    def iter_entries(
        self,
        asset: AssetLike | None = None,
        statuses: Iterable[LedgerStatus | str] | None = None,
    ) -> Iterator[LedgerEntry]:
        """Every entry (of one asset, or all), optionally only those with the given statuses.

        One listing plus one read per file (a single concurrent ``cat`` on object stores).
        Unreadable files are logged and skipped. Order: by path.
        """
        wanted = None if statuses is None else {LedgerStatus(s) for s in statuses}
        reserved = tuple(f"{self.folder()}/{name}/".replace("\\", "/") for name in _RESERVED)
        for key, raw in sorted(self.store.read_all(self.folder(asset), ".json").items()):
            if asset is None and key.replace("\\", "/").startswith(reserved):
                continue
            try:
                entry = LedgerEntry.from_json(json.loads(raw))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable ledger file %s: %s", key, exc)
                continue
            if wanted is None or entry.status in wanted:
                yield entry

    def find_task(self, task_id: str) -> LedgerEntry | None:
        """The entry whose *current* task is ``task_id``, through the index: O(1) reads.

        ``None`` when the task is unknown, its ID is not a safe file name, or the partition has
        since moved on to another task.
        """
        try:
            path = self.index_path(task_id)
        except ValueError:
            return None
        raw = self.store.read_bytes_or_none(path)
        if raw is None:
            return None
        try:
            ref = json.loads(raw)
            entry = self.get(tuple(ref["asset"]), str(ref["partition_key"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable ledger index file %s: %s", path, exc)
            return None
        if entry is None or entry.task_id != task_id:
            return None
        return entry

    # -- writing -------------------------------------------------------------------------------

    def _write_index(self, entry: LedgerEntry) -> None:
        try:
            path = self.index_path(entry.task_id)
        except ValueError:
            log.warning("task ID %r is not a safe file name: not indexed", entry.task_id)
            return
        ref = {"asset": list(entry.asset), "partition_key": entry.partition_key}
        self.store.write_atomic(path, json.dumps(ref, separators=(",", ":")).encode(), fsync=False)

    def _write(self, entry: LedgerEntry) -> LedgerEntry:
        data = json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":")).encode()
        self.store.write_atomic(self.path(entry.asset, entry.partition_key), data)
        return entry

    def record_submitted(
        self,
        asset: AssetLike,
        partition_key: str,
        *,
        task_id: str,
        request: Mapping[str, Any],
        fingerprint: str | None = None,
        run_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> LedgerEntry:
        """Record a freshly created task (call it before waiting on the task).

        ``request`` is the request sent (e.g. ``GenerationRequest.model_dump()``); only
        :data:`REQUEST_FIELDS` are kept and ``seed`` must be an int. The fingerprint defaults to
        :func:`zimage_dagster.engine.request.request_fingerprint` of those fields. An earlier entry for
        the partition moves into ``previous`` (an open one as ``abandoned``) and ``attempt``
        grows by one. Recording the same task ID again is a no-op returning the entry.
        """
        parts = _ledger_asset_parts(asset)
        kept = {k: request[k] for k in REQUEST_FIELDS if k in request}
        seed = kept.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("the ledger needs the request's integer seed (we always send one)")
        if not isinstance(kept.get("prompt"), str):
            raise ValueError("the ledger needs the request's prompt")
        fp = fingerprint or request_fingerprint(
            kept["prompt"], kept.get("size"), seed, kept.get("nsfw_check")
        )
        now = float(self._clock())
        old = self.get(parts, partition_key)
        if old is not None and old.task_id == task_id:
            return old
        previous: tuple[PreviousAttempt, ...] = ()
        attempt = 1
        if old is not None:
            ended = LedgerStatus.ABANDONED if old.is_open else old.status
            previous = (
                *old.previous,
                PreviousAttempt(
                    old.task_id,
                    ended,
                    old.submitted_at,
                    now,
                    old.error_code,
                    old.error_message,
                ),
            )
            attempt = old.attempt + 1
        entry = LedgerEntry(
            asset=parts,
            partition_key=partition_key,
            task_id=task_id,
            seed=seed,
            fingerprint=fp,
            request=kept,
            status=LedgerStatus.SUBMITTED,
            submitted_at=now,
            updated_at=now,
            attempt=attempt,
            previous=previous,
            run_id=run_id,
            extra=dict(extra or {}),
        )
        self._write(entry)
        self._write_index(entry)
        return entry

    def update(
        self,
        asset: AssetLike,
        partition_key: str,
        task_id: str,
        status: LedgerStatus | str,
        *,
        error_code: str | None = None,
        error_message: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> LedgerEntry:
        """Set the status of the partition's current task ``task_id``.

        Raises ``KeyError`` when there is no entry and :class:`LedgerConflictError` when the
        entry's current task is another one. ``extra`` is merged into the entry's ``extra``.
        """
        old = self.get(asset, partition_key)
        if old is None:
            raise KeyError(f"no ledger entry for {asset_parts(asset)} partition {partition_key!r}")
        if old.task_id != task_id:
            raise LedgerConflictError(
                f"ledger entry for partition {partition_key!r} is now task {old.task_id}, "
                f"not {task_id}"
            )
        entry = replace(
            old,
            status=LedgerStatus(status),
            updated_at=float(self._clock()),
            error_code=error_code,
            error_message=_clip(error_message),
            extra={**old.extra, **(extra or {})},
        )
        return self._write(entry)

    def mark_completed(self, asset: AssetLike, partition_key: str, task_id: str) -> LedgerEntry:
        """The provider reports the task completed (image not stored yet)."""
        return self.update(asset, partition_key, task_id, LedgerStatus.COMPLETED)

    def mark_collected(self, asset: AssetLike, partition_key: str, task_id: str) -> LedgerEntry:
        """The image is stored."""
        return self.update(asset, partition_key, task_id, LedgerStatus.COLLECTED)

    def mark_failed(
        self,
        asset: AssetLike,
        partition_key: str,
        task_id: str,
        error_code: str | None,
        error_message: str | None = None,
    ) -> LedgerEntry:
        """The task failed with the provider's error code and message."""
        return self.update(
            asset,
            partition_key,
            task_id,
            LedgerStatus.FAILED,
            error_code=error_code,
            error_message=error_message,
        )

    def mark_expired(self, asset: AssetLike, partition_key: str, task_id: str) -> LedgerEntry:
        """The result link expired before collection."""
        return self.update(asset, partition_key, task_id, LedgerStatus.EXPIRED)

    def mark_abandoned(
        self, asset: AssetLike, partition_key: str, task_id: str, reason: str | None = None
    ) -> LedgerEntry:
        """We gave up on the task (``reason`` goes to ``error_message``)."""
        return self.update(
            asset, partition_key, task_id, LedgerStatus.ABANDONED, error_message=reason
        )

    def remove(self, asset: AssetLike, partition_key: str) -> bool:
        """Delete the partition's entry; ``False`` if there was none."""
        return self.store.delete_file(self.path(asset, partition_key))
