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

Self-repair: an entry that cannot be read is moved aside and, when its task ID can be recovered,
re-made for that task, so the run re-attaches to it instead of paying again
(:mod:`zimage_dagster.engine.ledger_repair`). Scans of one asset never see the entries of another
(``a`` does not see ``a/b``).

The entry itself (its fields, statuses, workflow state and JSON format, ``ledger_version`` 3,
older versions still read) is :mod:`zimage_dagster.engine.ledger_entry`; its names are importable
from here too.

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
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from upath import UPath

from zimage_dagster.dataset.request import request_fingerprint
from zimage_dagster.engine.atomic import (
    ConditionalFiles,
    PreconditionFailedError,
    conditional_files,
)
from zimage_dagster.engine.claims import ClaimBook, RunAliveFn
from zimage_dagster.engine.keys import partition_key as decode_key
from zimage_dagster.engine.ledger_entry import (
    LEDGER_VERSION,
    OPEN_STATUSES,
    REQUEST_FIELDS,
    WORKFLOW_FIELDS,
    LedgerEntry,
    LedgerStatus,
    PreviousAttempt,
    clip_message,
    encode_entry,
    moves_forward,
    parse_entry,
    split_workflow,
    workflow_changes,
)
from zimage_dagster.engine.ledger_repair import repair_entry, with_request
from zimage_dagster.engine.scan import ScanCache
from zimage_dagster.engine.store import (
    LEDGER_DIR,
    AssetLike,
    ImageStore,
    asset_parts,
    check_path_component,
    file_stem,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from zimage_dagster.engine.ledger_entry import WorkflowFields

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
# LedgerEntry, its statuses and format are ledger_entry's; imported here, where callers find them.

log = logging.getLogger(__name__)

#: Reserved folders under ``<root>/_ledger`` (not assets): the task-ID index and sensor state.
INDEX_DIR = "_by_task"
STATE_DIR = "_state"
_RESERVED = frozenset({INDEX_DIR, STATE_DIR})
_CAS_ROUNDS = 32


class LedgerConflictError(RuntimeError):
    """The entry now belongs to another task than the one the caller is updating."""


def _ledger_asset_parts(asset: AssetLike) -> tuple[str, ...]:
    parts = asset_parts(asset)
    if parts[0] in _RESERVED:
        raise ValueError(f"asset key {parts!r}: {parts[0]!r} is reserved in the ledger")
    return parts


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
                repair_entry(
                    self.store,
                    self.files,
                    index_folder=self.store.join(LEDGER_DIR, INDEX_DIR),
                    asset=_ledger_asset_parts(asset),
                    partition_key=partition_key,
                    path=path,
                    data=current.data,
                    version=current.version,
                    error=exc,
                    clock=self._clock,
                )  # then read what the repair left (a recovered entry, or nothing)
        raise LedgerConflictError(f"ledger entry {path} kept changing while being repaired")

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
            for e in scan.read(self.store, folder, ".json", parse_entry, kind="entries").values()
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
                    self.files.create(path, encode_entry(new))
                else:
                    self.files.replace(path, encode_entry(new), version)
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
        **workflow_fields: Unpack[WorkflowFields],
    ) -> LedgerEntry:
        """Record a freshly created task (call it before waiting on the task).

        ``request`` is the request sent (e.g. ``GenerationRequest.model_dump()``); only
        :data:`REQUEST_FIELDS` are kept and ``seed`` must be an int. The fingerprint defaults to
        :func:`zimage_dagster.dataset.request.request_fingerprint` of those fields. An earlier entry for
        the partition moves into ``previous`` (an open one as ``abandoned``) and ``attempt``
        grows by one, keeping what each earlier task reserved (``credits_reserved``: the
        partition's spend stays known). Recording the same task ID again is a no-op returning
        the entry. The keyword arguments of
        :class:`~zimage_dagster.engine.ledger_entry.WorkflowFields` (``deferred``,
        ``resubmits``, ``regenerated``, ``collect_batch``, ...) are the entry's workflow fields;
        workflow keys given in ``extra`` (the version 2 way) go to them too.
        """
        others, workflow = workflow_changes(extra, workflow_fields)
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
        **workflow_fields: Unpack[WorkflowFields],
    ) -> LedgerEntry:
        """Set the status of the partition's current task ``task_id`` (a compare-and-set).

        Raises ``KeyError`` when there is no entry and :class:`LedgerConflictError` when the
        entry's current task is another one. ``extra`` is merged into the entry's ``extra``
        (its workflow keys go to the typed fields); the workflow fields given (keyword arguments
        of :class:`~zimage_dagster.engine.ledger_entry.WorkflowFields`, not ``None``) are set. A
        status that would move the entry back (:func:`moves_forward`) leaves it unchanged and
        returns it as it is.
        """
        new_status = LedgerStatus(status)
        others, workflow = workflow_changes(extra, workflow_fields)

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
                error_message=clip_message(error_message),
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
        request of the job that re-attaches to its task (see
        :func:`~zimage_dagster.engine.ledger_repair.with_request`)."""

        def decide(old: LedgerEntry | None) -> LedgerEntry:
            if old is None:
                raise KeyError(f"no ledger entry for partition {partition_key!r}")
            if old.task_id != task_id:
                raise LedgerConflictError(f"ledger entry for {partition_key!r} moved on")
            return with_request(old, request=request, fingerprint=fingerprint)

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
