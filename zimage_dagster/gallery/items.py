"""What the gallery shows of one partition (:class:`GalleryItem`), what a grid asks for
(:class:`Query`) and gets (:class:`Page`), and the status rule: which of a partition's
provenance record and ledger entry says what it is.

A partition's status:

* ``stored``: its image and provenance record are in the store (and the ledger has no newer task);
* ``failed``: its current task failed (the provider's code and message) or was given up;
* ``pending``: its current task is submitted or completed but not stored yet;
* ``expired``: its current task's result link died before it was collected.

>>> from zimage_dagster.engine.provenance import ImageRecord
>>> item = item_of(("hero",), "fox", ImageRecord(seed=7, task_id="t1", prompt="A red fox"), None)
>>> item.status, item.search_text
('stored', 'a red fox\\nfox')
>>> Query.from_params({"q": " owl ", "page": "x", "status": "nope"})
Query(q='owl', partition='', date='', status='', size='', review='', order='newest', page=1, per_page=48, after='', before='')
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zimage_dagster.api.validation import DEFAULT_SIZE
from zimage_dagster.engine.ledger import LedgerEntry, LedgerStatus
from zimage_dagster.engine.provenance import ImageRecord
from zimage_dagster.engine.reviews import REVIEW_STATES

__all__ = ["ORDERS", "STATUSES", "GalleryItem", "Page", "Query", "cursor_of", "date_of", "item_of",
           "parse_cursor"]  # fmt: skip

#: The statuses a partition can have in the gallery, in the order the filters show them.
STATUSES: tuple[str, ...] = ("stored", "failed", "pending", "expired")
#: Grid orders: newest first, or by partition key.
ORDERS: tuple[str, ...] = ("newest", "partition")

_DATE = re.compile(r"(?<![0-9])([0-9]{4}-[0-9]{2}-[0-9]{2})(?![0-9])")
_LEDGER_TO_STATUS = {
    LedgerStatus.SUBMITTED: "pending",
    LedgerStatus.COMPLETED: "pending",
    LedgerStatus.FAILED: "failed",
    LedgerStatus.ABANDONED: "failed",
    LedgerStatus.EXPIRED: "expired",
}


def date_of(partition_key: str) -> str | None:
    """The ``YYYY-MM-DD`` in a partition key (daily assets), if any.

    >>> date_of("2026-11-01|hero"), date_of("fox")
    ('2026-11-01', None)
    """
    found = _DATE.search(partition_key)
    return found.group(1) if found else None


@dataclass(frozen=True)
class GalleryItem:
    """One partition of an asset: its provenance record and/or its ledger entry.

    ``failure`` holds the provider's code and message when they come from elsewhere than a
    ledger entry (a shard manifest's failed row).
    """

    asset: tuple[str, ...]
    partition_key: str
    status: str
    record: ImageRecord | None = None
    entry: LedgerEntry | None = None
    search_text: str = field(default="", repr=False)
    failure: tuple[str | None, str | None] | None = field(default=None, repr=False)

    @property
    def asset_name(self) -> str:
        return "/".join(self.asset)

    @property
    def prompt(self) -> str:
        if self.record is not None:
            return self.record.prompt
        if self.entry is not None:
            return str(self.entry.request.get("prompt", ""))
        return ""

    @property
    def seed(self) -> int | None:
        if self.record is not None:
            return self.record.seed
        return self.entry.seed if self.entry is not None else None

    @property
    def size(self) -> str:
        """Actual ``WxH`` when stored, else the requested size."""
        if self.record is not None and self.record.width and self.record.height:
            return f"{self.record.width}x{self.record.height}"
        if self.record is not None:
            return self.record.size_requested
        return str(self.entry.request.get("size") or DEFAULT_SIZE) if self.entry is not None else ""

    @property
    def date(self) -> str | None:
        """The ``YYYY-MM-DD`` in the partition key (daily assets), if any."""
        return date_of(self.partition_key)

    @property
    def time(self) -> float:
        """When it last changed (created, or the ledger's last update), for newest-first."""
        times = [0.0]
        if self.record is not None and self.record.created_at:
            times.append(float(self.record.created_at))
        if self.entry is not None:
            times.append(self.entry.updated_at)
        return max(times)

    @property
    def error_code(self) -> str | None:
        if self.status != "failed":
            return None
        if self.entry is not None:
            return self.entry.error_code
        return self.failure[0] if self.failure else None

    @property
    def error_message(self) -> str | None:
        if self.status != "failed":
            return None
        if self.entry is not None:
            return self.entry.error_message
        return self.failure[1] if self.failure else None

    @property
    def has_image(self) -> bool:
        return self.record is not None


def item_of(
    asset: tuple[str, ...], key: str, record: ImageRecord | None, entry: LedgerEntry | None
) -> GalleryItem:
    """The partition as the gallery shows it: the status rule over its record and entry."""
    status = "stored"
    if entry is not None and (
        record is None
        or (entry.task_id != record.task_id and entry.status is not LedgerStatus.COLLECTED)
    ):
        status = _LEDGER_TO_STATUS.get(entry.status, "stored" if record else "pending")
    prompt = record.prompt if record else str((entry.request if entry else {}).get("prompt", ""))
    return GalleryItem(
        asset=asset,
        partition_key=key,
        status=status,
        record=record,
        entry=entry,
        search_text=f"{prompt}\n{key}".casefold(),
    )


def cursor_of(item: GalleryItem) -> str:
    """A position in the grid's orders, just past or before ``item``: ``<time>:<key>`` (the
    newest-first order reads both, the partition order the key alone). A link holding one reads
    its page from the index's order at that point (keyset pagination): as fast on the last page as
    on the first, and the same rows whatever was added before it.

    >>> cursor_of(GalleryItem(("hero",), "a:b", "failed"))
    '0.0:a:b'
    >>> parse_cursor("0.0:a:b"), parse_cursor("nope")
    ((0.0, 'a:b'), None)
    """
    return f"{item.time!r}:{item.partition_key}"


def parse_cursor(cursor: str) -> tuple[float, str] | None:
    """``(time, key)`` of a :func:`cursor_of` string, or ``None`` when it is not one."""
    when, sep, key = cursor.partition(":")
    try:
        value = float(when)
    except ValueError:
        return None
    return (value, key) if sep and math.isfinite(value) else None


@dataclass(frozen=True)
class Query:
    """What the grid shows: free-text search in prompts, filters, order and page.

    ``after`` / ``before``: a :func:`cursor_of` position; the page is the rows just after (or
    before) it in the grid's order, and ``page`` is then only the number the pager shows.
    """

    q: str = ""
    partition: str = ""
    date: str = ""
    status: str = ""
    size: str = ""
    review: str = ""
    order: str = "newest"
    page: int = 1
    per_page: int = 48
    after: str = ""
    before: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Query:
        """From query-string parameters; bad numbers and unknown choices fall back to defaults."""

        def number(name: str, default: int, high: int) -> int:
            try:
                return max(1, min(high, int(params.get(name, default))))
            except ValueError:
                return default

        order = params.get("order", "newest")
        status = params.get("status", "")
        review = params.get("review", "")
        return cls(
            q=params.get("q", "").strip()[:2000],
            partition=params.get("partition", "").strip()[:500],
            date=params.get("date", "").strip()[:10],
            status=status if status in STATUSES else "",
            size=params.get("size", "").strip()[:20],
            review=review if review in REVIEW_STATES else "",
            order=order if order in ORDERS else "newest",
            page=number("page", 1, 1_000_000),
            per_page=number("per_page", 48, 500),
            after=params.get("after", "")[:600],
            before=params.get("before", "")[:600] if "after" not in params else "",
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The non-default parameters (with ``changes``), for links that keep the filters (a
        cursor only when ``changes`` names one: a link elsewhere starts from its first page)."""
        values = {**self.__dict__, "after": "", "before": "", **changes}
        defaults = Query().__dict__
        return {k: str(v) for k, v in values.items() if v != defaults[k]}

    @property
    def words(self) -> list[str]:
        """The search's words, case-folded: every one must be in the prompt or the key."""
        return self.q.casefold().split()


@dataclass(frozen=True)
class Page:
    """One page of a query's results. ``capped``: counting stopped at ``total`` (a search over a
    very large asset counts its matches up to a limit; the pager then offers the next page as
    long as the page is full). ``after`` / ``before``: the cursors (:func:`cursor_of`) of the
    next and previous pages' links, empty when there is none."""

    items: Sequence[GalleryItem]
    total: int
    page: int
    pages: int
    capped: bool = False
    after: str = ""
    before: str = ""
