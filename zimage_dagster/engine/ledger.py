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

Concurrency: two runs (or a run, the sensor and the callback receiver) may act on the same
partition at once. Every write is a compare-and-set on the entry (the storage's own conditional
write, see :mod:`zimage_dagster.engine.atomic`): read it with its version, decide, write only if
it is still that version, else read again. So statuses only move forward (``submitted`` ->
``completed`` -> ``failed``/``expired``/``abandoned`` -> ``collected``; a new attempt is a new
task via :meth:`TaskLedger.record_submitted`): a writer that would move an entry back (the receiver
marking ``completed`` an entry a collect run already marked ``collected``) leaves it as it is. The
``mark_*`` methods take the ``task_id`` they are about and raise :class:`LedgerConflictError` when
the entry has since moved to another task. Who may *create* a partition's task is decided by its
claim (:mod:`zimage_dagster.engine.claims`), which lives next to the entry (:meth:`claim_path`).

Self-repair: an entry that cannot be read (truncated, garbage, ``{}``, binary) is moved aside to
``<storage key>.json.unreadable-<time>-<random>`` with a warning naming both files, and the partition is
rebuilt: when a task ID can be recovered (from the damaged bytes or the task-ID index), the entry
is re-made for that task (``recovered_from``) so the run re-attaches to it instead of
paying again; otherwise the partition has no entry and is generated again with its same seed.
Scans of one asset never see the entries of another (``a`` does not see ``a/b``).

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

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, cast

from upath import UPath

from zimage_dagster.dataset.request import request_fingerprint
from zimage_dagster.engine.atomic import (
    ConditionalFiles,
    PreconditionFailedError,
    conditional_files,
)
from zimage_dagster.engine.claims import ClaimBook, RunAliveFn
from zimage_dagster.engine.keys import partition_key as decode_key
from zimage_dagster.engine.scan import ScanCache
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
    "WORKFLOW_FIELDS",
    "LedgerConflictError",
    "LedgerEntry",
    "LedgerStatus",
    "PreviousAttempt",
    "TaskLedger",
    "moves_forward",
    "split_workflow",
]

log = logging.getLogger(__name__)

#: The request fields kept in an entry (anything else in the given mapping is dropped).
REQUEST_FIELDS: tuple[str, ...] = ("model", "prompt", "size", "seed", "nsfw_check")

_MAX_MESSAGE_CHARS = 2000

#: Version of the entry layout (2: ``partition_key`` is the Dagster partition key itself; 3: the
#: workflow state is typed fields, no longer ``extra`` keys, which are still read).
LEDGER_VERSION = 3

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


#: How far along a task's life each status is; an update may not lower it (see ``moves_forward``).
_STAGE: dict[LedgerStatus, int] = {
    LedgerStatus.SUBMITTED: 0,
    LedgerStatus.COMPLETED: 1,
    LedgerStatus.FAILED: 2,
    LedgerStatus.EXPIRED: 2,
    LedgerStatus.ABANDONED: 2,
    LedgerStatus.COLLECTED: 3,
}


def moves_forward(old: LedgerStatus, new: LedgerStatus) -> bool:
    """Whether one task's entry may go from ``old`` to ``new``: never back, never past collected.

    >>> moves_forward(LedgerStatus.SUBMITTED, LedgerStatus.COMPLETED)
    True
    >>> moves_forward(LedgerStatus.COLLECTED, LedgerStatus.COMPLETED)  # the receiver, too late
    False
    >>> moves_forward(LedgerStatus.EXPIRED, LedgerStatus.COLLECTED)  # stored before it expired
    True
    """
    return _STAGE[new] >= _STAGE[old]


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
    #: What the provider reserved for the task (``usage.credits_reserved``), when known.
    credits_reserved: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "submitted_at": self.submitted_at,
            "ended_at": self.ended_at,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "credits_reserved": self.credits_reserved,
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
            credits_reserved=_credits(data.get("credits_reserved")),
        )


def _credits(value: Any) -> float | None:
    return None if value is None else float(value)


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
    #: Anything else a caller recorded (unknown keys of older or newer writers are kept here).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: What the provider reserved for the current task (``usage.credits_reserved``), when known.
    credits_reserved: float | None = None
    # -- workflow state (typed; version 2 ledgers kept these in ``extra``, still read there) ----
    #: Watched by the task-status sensor (a deferred submit's task, or a collect run's).
    deferred: bool = False
    #: Tasks created for this very request (same fingerprint) before the current one: the count
    #: the resubmission budget reads (:mod:`zimage_dagster.engine.decide`).
    resubmits: int = 0
    #: The task replaces one whose result link expired.
    regenerated: bool = False
    #: Re-made from a damaged entry file (its name): the request is not known yet.
    recovered_from: str | None = None
    #: When the task was first seen completed (unix s).
    completed_at: float | None = None
    #: ``"callback"`` when the callback receiver recorded the task's end.
    via: str | None = None
    #: The collect batch last asked to collect the entry, and when (unix s).
    collect_batch: str | None = None
    collect_requested_at: float | None = None
    #: Collect runs that ended without collecting the entry.
    collect_runs: int = 0
    #: When a failure of the entry was reported (it is reported once).
    handled_at: float | None = None

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
            "credits_reserved": self.credits_reserved,
            **{name: getattr(self, name) for name in WORKFLOW_FIELDS},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LedgerEntry:
        """Inverse of :meth:`to_json`; raises ``KeyError``/``ValueError`` on a malformed record.

        A version 1 record held the storage key: its partition key is read back through the codec.
        """
        key = str(data["partition_key"])
        if int(data.get("ledger_version", 1)) < 2:
            key = decode_key(key)
        extra, workflow = split_workflow(data.get("extra") or {})
        for name in WORKFLOW_FIELDS:
            if data.get(name) is not None:
                workflow[name] = _WORKFLOW_TYPES[name](data[name])
        if "resubmits" not in workflow:  # older entries: every earlier task counts (never less)
            workflow["resubmits"] = max(int(data.get("attempt", 1)) - 1, 0)
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
            extra=extra,
            credits_reserved=_credits(data.get("credits_reserved")),
            **workflow,
        )


def _parse_entry(path: str, raw: bytes) -> LedgerEntry | None:
    """The entry in a ledger file's bytes, or ``None`` (logged) when they are not one."""
    try:
        return LedgerEntry.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        log.debug("skipping unreadable ledger file %s: %s", path, exc)
        return None


#: The typed workflow fields of an entry, with how a value read from JSON is coerced.
_WORKFLOW_TYPES: dict[str, Any] = {
    "deferred": bool,
    "resubmits": int,
    "regenerated": bool,
    "recovered_from": str,
    "completed_at": float,
    "via": str,
    "collect_batch": str,
    "collect_requested_at": float,
    "collect_runs": int,
    "handled_at": float,
}
WORKFLOW_FIELDS: tuple[str, ...] = tuple(_WORKFLOW_TYPES)


def split_workflow(extra: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(other keys, typed workflow fields)`` of an ``extra`` mapping: version 2 entries (and
    callers of ``extra=``) kept the workflow state there; it goes to the typed fields.

    >>> split_workflow({"deferred": True, "collect_runs": "2", "note": "x"})
    ({'note': 'x'}, {'deferred': True, 'collect_runs': 2})
    """
    rest: dict[str, Any] = {}
    typed: dict[str, Any] = {}
    for name, value in extra.items():
        kind = _WORKFLOW_TYPES.get(name)
        if kind is None:
            rest[name] = value
        elif value is not None:
            typed[name] = kind(value)
    return rest, typed


def _workflow_changes(
    extra: Mapping[str, Any] | None, given: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(other extra keys, workflow fields to set)``: the typed ``given`` ones (not ``None``)
    over those found in ``extra``."""
    others, workflow = split_workflow(extra or {})
    workflow.update({name: value for name, value in given.items() if value is not None})
    return others, workflow


def _ledger_asset_parts(asset: AssetLike) -> tuple[str, ...]:
    parts = asset_parts(asset)
    if parts[0] in _RESERVED:
        raise ValueError(f"asset key {parts!r}: {parts[0]!r} is reserved in the ledger")
    return parts


_TASK_ID_IN_JSON = re.compile(rb'"task_id"\s*:\s*"([A-Za-z0-9_.:-]{1,200})"')
_CAS_ROUNDS = 32


def _encode(entry: LedgerEntry) -> bytes:
    return json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":")).encode()


def _clip(message: str | None) -> str | None:
    if message is None:
        return None
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[:_MAX_MESSAGE_CHARS] + "..."


class TaskLedger:
    """Submitted tasks, one JSON file per partition under ``<root>/_ledger/``.

    Args:
        store: the :class:`~zimage_dagster.engine.store.ImageStore` (or a root for one).
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
        self._files: ConditionalFiles | None = None

    @property
    def files(self) -> ConditionalFiles:
        """The storage's conditional writes (raises ``AtomicWritesUnsupportedError`` for a
        storage without them: the ledger refuses to pretend two writers cannot collide)."""
        if self._files is None:
            self._files = conditional_files(self.store.root)
        return self._files

    def claim_book(
        self, *, lease_s: float | None = None, is_run_alive: RunAliveFn | None = None
    ) -> ClaimBook:
        """A :class:`~zimage_dagster.engine.claims.ClaimBook` on this ledger's storage."""
        if lease_s is None:
            return ClaimBook(self.files, clock=self._clock, is_run_alive=is_run_alive)
        return ClaimBook(self.files, lease_s=lease_s, clock=self._clock, is_run_alive=is_run_alive)

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

    def claim_path(self, asset: AssetLike, partition_key: str) -> UPath:
        """``<root>/_ledger/<asset path...>/<storage key>.claim``: who may create its task."""
        stem = file_stem(partition_key)
        return self.store.join(LEDGER_DIR, *_ledger_asset_parts(asset), f"{stem}.claim")

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
        """The partition's entry, or ``None`` (an unreadable one is repaired: see the module doc)."""
        return self._read(asset, partition_key)[0]

    def _read(self, asset: AssetLike, partition_key: str) -> tuple[LedgerEntry | None, str | None]:
        """The entry and its storage version; repairs an unreadable file first."""
        path = self.path(asset, partition_key)
        for _ in range(_CAS_ROUNDS):
            current = self.files.read(path)
            if current is None:
                return None, None
            try:
                return LedgerEntry.from_json(json.loads(current.data)), current.version
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if self._repair(asset, partition_key, path, current.data, current.version, exc):
                    continue  # read what the repair left (a recovered entry, or nothing)
        raise LedgerConflictError(f"ledger entry {path} kept changing while being repaired")

    def _repair(
        self,
        asset: AssetLike,
        partition_key: str,
        path: UPath,
        data: bytes,
        version: str,
        error: Exception,
    ) -> bool:
        """Move an unreadable entry aside and re-make it for its task if the ID is recoverable."""
        aside = self.store.aside_path(path)
        self.store.write_atomic(aside, data)
        try:
            self.files.delete(path, version)
        except PreconditionFailedError:
            self.store.delete_file(aside)  # someone rewrote it meanwhile: nothing to repair
            return True
        task_id = self._recover_task_id(asset, partition_key, data)
        log.warning(
            "unreadable ledger entry %s (%s: %s) moved aside to %s; %s",
            path,
            type(error).__name__,
            error,
            aside.name,
            f"re-attaching the partition to task {task_id}"
            if task_id
            else "no task ID recoverable: the partition will be generated again with its seed",
        )
        if task_id is None:
            return True
        now = float(self._clock())
        entry = LedgerEntry(
            asset=_ledger_asset_parts(asset),
            partition_key=partition_key,
            task_id=task_id,
            seed=0,
            fingerprint="",
            request={},
            status=LedgerStatus.SUBMITTED,
            submitted_at=now,
            updated_at=now,
            recovered_from=aside.name,
        )
        with contextlib.suppress(FileExistsError):
            self.files.create(path, _encode(entry))
        return True

    def _recover_task_id(self, asset: AssetLike, partition_key: str, data: bytes) -> str | None:
        """The task ID in damaged entry bytes, else the newest index file naming this partition."""
        found = _TASK_ID_IN_JSON.search(data)
        if found:
            return found.group(1).decode()
        parts = list(_ledger_asset_parts(asset))
        best: tuple[str, str] | None = None
        for key, raw in self.store.read_all(
            self.store.join(LEDGER_DIR, INDEX_DIR), ".json"
        ).items():
            try:
                ref = json.loads(raw)
                if ref["asset"] != parts or ref["partition_key"] != partition_key:
                    continue
            except (ValueError, KeyError, TypeError):
                continue
            task_id = key.replace("\\", "/").rsplit("/", 1)[-1][: -len(".json")]
            order = task_id.split("-")[2] if task_id.count("-") >= 3 else task_id  # created at
            if best is None or order > best[0]:
                best = (order, task_id)
        return best[1] if best else None

    def iter_entries(
        self,
        asset: AssetLike | None = None,
        statuses: Iterable[LedgerStatus | str] | None = None,
    ) -> Iterator[LedgerEntry]:
        """Every entry (of one asset, or all), optionally only those with the given statuses.

        One listing plus one read per file (a single concurrent ``cat`` on object stores).
        The entries of one asset exclude those of assets nested under its key (``a`` does not
        list ``a/b``). Unreadable files are repaired (see the module doc). Order: by path.
        """
        wanted = None if statuses is None else {LedgerStatus(s) for s in statuses}
        root = str(self.folder()).replace("\\", "/")
        reserved = tuple(f"{root}/{name}/" for name in _RESERVED)
        folder = str(self.folder(asset)).replace("\\", "/").rstrip("/") + "/"
        for key, raw in sorted(self.store.read_all(self.folder(asset), ".json").items()):
            norm = key.replace("\\", "/")
            if asset is None and norm.startswith(reserved):
                continue
            if asset is not None and "/" in norm[len(folder) :]:
                continue  # a nested asset's entry
            entry: LedgerEntry | None
            try:
                entry = LedgerEntry.from_json(json.loads(raw))
            except (ValueError, KeyError, TypeError, AttributeError):
                entry = self._entry_of_file(norm[len(root) + 1 :])
            if entry is not None and (wanted is None or entry.status in wanted):
                yield entry

    def entries(
        self,
        asset: AssetLike | None = None,
        *,
        statuses: Iterable[LedgerStatus | str] | None = None,
        cache: ScanCache | None = None,
    ) -> list[LedgerEntry]:
        """Every readable entry of one asset (not of assets nested under it) or of all, in path
        order, optionally only those with the given statuses. Read-only, unlike
        :meth:`iter_entries`: an unreadable file is skipped (logged), never repaired. With a
        :class:`~zimage_dagster.engine.scan.ScanCache` kept between calls, a local ledger reads
        only the entries that changed since.

        >>> import tempfile
        >>> ledger = TaskLedger(tempfile.mkdtemp())
        >>> _ = ledger.record_submitted("hero", "fox", task_id="t-1", request={"prompt": "p", "seed": 4})
        >>> [(e.asset_name, e.partition_key, e.status.value) for e in ledger.entries()]
        [('hero', 'fox', 'submitted')]
        """
        wanted = None if statuses is None else {LedgerStatus(s) for s in statuses}
        parts = None if asset is None else _ledger_asset_parts(asset)
        root = self.folder()
        folders = [self.folder(parts)] if parts else self.store.subfolders(root)
        scan = cache if cache is not None else ScanCache()
        return [
            e
            for folder in folders
            if parts or folder.name not in _RESERVED
            for e in scan.read(self.store, folder, ".json", _parse_entry, kind="entries").values()
            if e and (not parts or e.asset == parts) and (wanted is None or e.status in wanted)
        ]

    def _entry_of_file(self, relative: str) -> LedgerEntry | None:
        """Re-read (and so repair) the entry at ``<asset...>/<stem>.json`` under the ledger."""
        *parts, name = relative.split("/")
        if not parts:
            return None
        try:
            return self.get(tuple(parts), decode_key(name[: -len(".json")]))
        except (ValueError, LedgerConflictError) as exc:
            log.warning("skipping ledger file %s: %s", relative, exc)
            return None

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

    def _change(
        self,
        asset: AssetLike,
        partition_key: str,
        decide: Any,
    ) -> LedgerEntry | None:
        """Compare-and-set: ``decide(current entry or None)`` returns the entry to write (or the
        current one / ``None`` to write nothing); retried on a lost race with a fresh read."""
        path = self.path(asset, partition_key)
        for _ in range(_CAS_ROUNDS):
            old, version = self._read(asset, partition_key)
            new = decide(old)
            if new is None or new is old:
                return old
            try:
                if version is None:
                    self.files.create(path, _encode(new))
                else:
                    self.files.replace(path, _encode(new), version)
            except (FileExistsError, PreconditionFailedError):
                continue  # someone wrote first: decide again on what they wrote
            return cast(LedgerEntry, new)
        raise LedgerConflictError(f"ledger entry {path} kept changing ({_CAS_ROUNDS} tries)")

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
        credits_reserved: float | None = None,
        deferred: bool | None = None,
        resubmits: int | None = None,
        regenerated: bool | None = None,
        collect_batch: str | None = None,
    ) -> LedgerEntry:
        """Record a freshly created task (call it before waiting on the task).

        ``request`` is the request sent (e.g. ``GenerationRequest.model_dump()``); only
        :data:`REQUEST_FIELDS` are kept and ``seed`` must be an int. The fingerprint defaults to
        :func:`zimage_dagster.dataset.request.request_fingerprint` of those fields. An earlier entry for
        the partition moves into ``previous`` (an open one as ``abandoned``) and ``attempt``
        grows by one, keeping what each earlier task reserved (``credits_reserved``: the
        partition's spend stays known). Recording the same task ID again is a no-op returning
        the entry. ``deferred``, ``resubmits``, ``regenerated`` and ``collect_batch`` are the
        entry's workflow fields (see :class:`LedgerEntry`); workflow keys given in ``extra``
        (the version 2 way) go to them too.
        """
        others, workflow = _workflow_changes(
            extra,
            dict(
                deferred=deferred,
                resubmits=resubmits,
                regenerated=regenerated,
                collect_batch=collect_batch,
            ),
        )
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

        def decide(old: LedgerEntry | None) -> LedgerEntry:
            if old is not None and old.task_id == task_id:
                return old
            now = float(self._clock())
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
                        old.credits_reserved,
                    ),
                )
                attempt = old.attempt + 1
            return LedgerEntry(
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
                extra=others,
                credits_reserved=credits_reserved,
                **workflow,
            )

        entry = self._change(parts, partition_key, decide)
        assert entry is not None
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
        deferred: bool | None = None,
        completed_at: float | None = None,
        via: str | None = None,
        collect_batch: str | None = None,
        collect_requested_at: float | None = None,
        collect_runs: int | None = None,
        handled_at: float | None = None,
    ) -> LedgerEntry:
        """Set the status of the partition's current task ``task_id`` (a compare-and-set).

        Raises ``KeyError`` when there is no entry and :class:`LedgerConflictError` when the
        entry's current task is another one. ``extra`` is merged into the entry's ``extra``
        (its workflow keys go to the typed fields); the workflow fields given (not ``None``)
        are set. A status that would move the entry back (:func:`moves_forward`) leaves it
        unchanged and returns it as it is.
        """
        new_status = LedgerStatus(status)
        others, workflow = _workflow_changes(
            extra,
            dict(
                deferred=deferred,
                completed_at=completed_at,
                via=via,
                collect_batch=collect_batch,
                collect_requested_at=collect_requested_at,
                collect_runs=collect_runs,
                handled_at=handled_at,
            ),
        )

        def decide(old: LedgerEntry | None) -> LedgerEntry:
            if old is None:
                raise KeyError(
                    f"no ledger entry for {asset_parts(asset)} partition {partition_key!r}"
                )
            if old.task_id != task_id:
                raise LedgerConflictError(
                    f"ledger entry for partition {partition_key!r} is now task {old.task_id}, "
                    f"not {task_id}"
                )
            if not moves_forward(old.status, new_status):
                log.info(
                    "ledger entry for partition %r stays %s (not moved back to %s)",
                    partition_key,
                    old.status.value,
                    new_status.value,
                )
                return old
            return replace(
                old,
                status=new_status,
                updated_at=float(self._clock()),
                error_code=error_code,
                error_message=_clip(error_message),
                extra={**old.extra, **others},
                **workflow,
            )

        entry = self._change(asset, partition_key, decide)
        assert entry is not None
        return entry

    def restore_request(
        self,
        asset: AssetLike,
        partition_key: str,
        task_id: str,
        *,
        request: Mapping[str, Any],
        fingerprint: str,
    ) -> LedgerEntry:
        """Give an entry recovered from a damaged file (``recovered_from``, no fingerprint) the
        request of the job that re-attaches to its task."""
        kept = {k: request[k] for k in REQUEST_FIELDS if k in request}

        def decide(old: LedgerEntry | None) -> LedgerEntry:
            if old is None:
                raise KeyError(f"no ledger entry for partition {partition_key!r}")
            if old.task_id != task_id:
                raise LedgerConflictError(f"ledger entry for {partition_key!r} moved on")
            if old.fingerprint:
                return old
            return replace(old, seed=int(kept["seed"]), fingerprint=fingerprint, request=kept)

        entry = self._change(asset, partition_key, decide)
        assert entry is not None
        return entry

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
