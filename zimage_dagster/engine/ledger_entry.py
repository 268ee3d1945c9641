"""One ledger entry: what the ledger remembers of a partition's task, and its file format.

An entry is one JSON object (see :class:`LedgerEntry`; written by
:class:`~zimage_dagster.engine.ledger.TaskLedger`, which owns the layout and the writes). Its
``ledger_version`` is :data:`LEDGER_VERSION`; older entries are still read (version 1 held the
storage key, version 2 the workflow state as ``extra`` keys).

Statuses: ``submitted`` (task created, not finished as far as we know), ``completed`` (the
provider reports it completed; the image is not stored yet), ``collected`` (image stored),
``failed`` (the provider reports failure; see ``error_code``), ``expired`` (the result link died
before we collected it: regenerate with the same seed), ``abandoned`` (we gave up on it). They
only move forward (:func:`moves_forward`).

Entries hold the request fields sent (:data:`REQUEST_FIELDS`) and never a secret: only those
fields are kept from the request mapping given (``callback_url`` is dropped too, as it may carry a
token). The workflow state is typed fields, listed once in :class:`WorkflowFields`.
"""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypedDict, get_args, get_type_hints

from zimage_dagster.engine.keys import partition_key as decode_key

__all__ = [
    "LEDGER_VERSION",
    "OPEN_STATUSES",
    "REQUEST_FIELDS",
    "WORKFLOW_FIELDS",
    "LedgerEntry",
    "LedgerStatus",
    "PreviousAttempt",
    "WorkflowFields",
    "clip_message",
    "encode_entry",
    "moves_forward",
    "parse_entry",
    "split_workflow",
    "workflow_changes",
]

log = logging.getLogger("zimage_dagster.engine.ledger")

#: The request fields kept in an entry (anything else in the given mapping is dropped).
REQUEST_FIELDS: tuple[str, ...] = ("model", "prompt", "size", "seed", "nsfw_check")

_MAX_MESSAGE_CHARS = 2000

#: Version of the entry layout (2: ``partition_key`` is the Dagster partition key itself; 3: the
#: workflow state is typed fields, no longer ``extra`` keys, which are still read).
LEDGER_VERSION = 3


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


def parse_entry(path: str, raw: bytes) -> LedgerEntry | None:
    """The entry in a ledger file's bytes, or ``None`` (logged) when they are not one."""
    try:
        return LedgerEntry.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        log.debug("skipping unreadable ledger file %s: %s", path, exc)
        return None


class WorkflowFields(TypedDict, total=False):
    """The typed workflow fields of an entry (see :class:`LedgerEntry`), once: the keyword
    arguments :meth:`~zimage_dagster.engine.ledger.TaskLedger.record_submitted` and
    :meth:`~zimage_dagster.engine.ledger.TaskLedger.update` take (``None``: leave as it is), and
    how a value read from JSON is coerced."""

    deferred: bool | None
    resubmits: int | None
    regenerated: bool | None
    recovered_from: str | None
    completed_at: float | None
    via: str | None
    collect_batch: str | None
    collect_requested_at: float | None
    collect_runs: int | None
    handled_at: float | None


def _coercer(hint: Any) -> Any:
    """``bool`` for ``bool | None``."""
    kinds = (
        [k for k in get_args(hint) if k is not type(None)]
        if isinstance(hint, types.UnionType)
        else [hint]
    )
    return kinds[0]


#: The typed workflow fields of an entry, with how a value read from JSON is coerced.
_WORKFLOW_TYPES: dict[str, Any] = {
    name: _coercer(hint) for name, hint in get_type_hints(WorkflowFields).items()
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


def workflow_changes(
    extra: Mapping[str, Any] | None, given: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(other extra keys, workflow fields to set)``: the typed ``given`` ones (not ``None``)
    over those found in ``extra``."""
    others, workflow = split_workflow(extra or {})
    workflow.update({name: value for name, value in given.items() if value is not None})
    return others, workflow


def encode_entry(entry: LedgerEntry) -> bytes:
    """An entry file's bytes (sorted keys, compact)."""
    return json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":")).encode()


def clip_message(message: str | None) -> str | None:
    if message is None:
        return None
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[:_MAX_MESSAGE_CHARS] + "..."
