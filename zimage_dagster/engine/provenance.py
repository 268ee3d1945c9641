"""The provenance record of one image: :class:`ImageRecord`, stored as JSON beside the image.

The record holds the facts of one generated (or reused) image: seed, task ID, request, actual
dimensions, sha256, timings, and the Dagster partition key itself (``partition_key``). It holds
no secret: it has no field for one. Dagster metadata is made from it in
:mod:`zimage_dagster.metadata`.

Example:
    >>> rec = ImageRecord(seed=42, task_id="task-unified-1700000000-abcd1234", prompt="a red fox",
    ...                   size_requested="1:1", width=1024, height=1024, format="PNG",
    ...                   path="/tmp/out/hero/fox.png", sha256="ab" * 32, bytes=1234,
    ...                   partition_key="2026-01-01|fox")
    >>> from_provenance(to_provenance(rec)) == rec
    True
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zimage_dagster.api.validation import DEFAULT_SIZE

__all__ = ["FIELD_NAMES", "PROVENANCE_VERSION", "ImageRecord", "from_provenance", "to_provenance"]

#: Version of the provenance JSON layout (``"provenance_version"`` in the record).
PROVENANCE_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    """Everything recorded for one materialized image partition.

    Times are seconds (``None`` when unknown, e.g. for a reused image). ``reused`` means the image
    came from storage or from a live task found in the ledger rather than from a new task;
    ``regenerated`` means an expired result was generated again with the same seed.
    ``extra`` holds the dataset's extra columns (e.g. ``category``).

    >>> ImageRecord(seed=1, task_id="t", prompt="p").model
    'z-image-turbo'
    """

    seed: int
    task_id: str
    prompt: str
    model: str = "z-image-turbo"
    size_requested: str = DEFAULT_SIZE
    nsfw_check: bool = False
    width: int | None = None
    height: int | None = None
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    credits_reserved: float | None = None
    queued_s: float | None = None
    generating_s: float | None = None
    downloading_s: float | None = None
    polls: int = 0
    attempts: int = 1
    reused: bool = False
    regenerated: bool = False
    asset: str | None = None
    partition_key: str | None = None
    fingerprint: str | None = None
    previous_task_ids: tuple[str, ...] = ()
    #: Credits reserved by the earlier tasks of this partition (failed, expired, lost), as the
    #: ledger recorded them: with ``credits_reserved`` what the partition's image cost in all.
    credits_earlier_tasks: float | None = None
    created_at: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


#: The record's field names, in order.
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ImageRecord))


def to_provenance(record: ImageRecord) -> dict[str, Any]:
    """The JSON-ready provenance record stored beside the image (see ``ImageStore.save``).

    >>> to_provenance(ImageRecord(seed=3, task_id="t", prompt="p"))["seed"]
    3
    """
    out: dict[str, Any] = {"provenance_version": PROVENANCE_VERSION}
    for name in FIELD_NAMES:
        value = getattr(record, name)
        if name == "previous_task_ids":
            value = list(value)
        elif name == "extra":
            value = json.loads(json.dumps(dict(value), default=str))
        out[name] = value
    return out


def from_provenance(data: Mapping[str, Any]) -> ImageRecord:
    """Rebuild an :class:`ImageRecord` from a provenance record; unknown keys are ignored.

    Raises ``ValueError`` when a required field (seed, task_id, prompt) is missing.

    >>> from_provenance({"seed": 3, "task_id": "t", "prompt": "p", "future_field": 1}).seed
    3
    """
    missing = [n for n in ("seed", "task_id", "prompt") if n not in data]
    if missing:
        raise ValueError(f"provenance record lacks {', '.join(missing)}")
    kwargs: dict[str, Any] = {n: data[n] for n in FIELD_NAMES if n in data}
    if "previous_task_ids" in kwargs:
        kwargs["previous_task_ids"] = tuple(kwargs["previous_task_ids"] or ())
    if "extra" in kwargs:
        kwargs["extra"] = dict(kwargs["extra"] or {})
    return ImageRecord(**kwargs)
