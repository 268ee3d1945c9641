"""What the gallery knows of an image store: every partition of every asset, and its status.

The index is read with the library's own readers (``ImageStore.records`` for the provenance
records, ``TaskLedger.entries`` for the ledger entries): it parses no file name, and it never
writes. It is rebuilt when older than ``refresh_s`` (in the background once a first copy exists, so
a request never waits for a rescan); ``refresh_s=0`` rebuilds it on every request.

A partition's status:

* ``stored``: its image and provenance record are in the store (and the ledger has no newer task);
* ``failed``: its current task failed (the provider's code and message) or was given up;
* ``pending``: its current task is submitted or completed but not stored yet;
* ``expired``: its current task's result link died before it was collected.

>>> import tempfile
>>> from zimage_dagster.engine.provenance import ImageRecord, to_provenance
>>> from zimage_dagster.engine.store import ImageStore
>>> store = ImageStore(tempfile.mkdtemp())
>>> _ = store.save("hero", "fox", b"png", "png", to_provenance(
...     ImageRecord(seed=7, task_id="task-unified-1-aaaaaaaa", prompt="A red fox", created_at=1.0)))
>>> index = GalleryIndex(store, refresh_s=0)
>>> hero = index.snapshot().assets["hero"]
>>> [(item.partition_key, item.status) for item in hero.select(Query(q="fox")).items]
[('fox', 'stored')]
>>> hero.select(Query(q="lighthouse")).total
0
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zimage_dagster.api.validation import DEFAULT_SIZE
from zimage_dagster.engine.ledger import LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.engine.provenance import ImageRecord
from zimage_dagster.engine.reviews import REVIEW_STATES
from zimage_dagster.engine.scan import ScanCache
from zimage_dagster.engine.store import ImageStore, StoredImage, UnsafePathError

__all__ = [
    "ORDERS",
    "STATUSES",
    "AssetIndex",
    "GalleryIndex",
    "GalleryItem",
    "Page",
    "Query",
    "Snapshot",
    "read_image",
]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class GalleryItem:
    """One partition of an asset: its provenance record and/or its ledger entry."""

    asset: tuple[str, ...]
    partition_key: str
    status: str
    record: ImageRecord | None = None
    entry: LedgerEntry | None = None
    search_text: str = field(default="", repr=False)

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
        found = _DATE.search(self.partition_key)
        return found.group(1) if found else None

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
        return self.entry.error_code if self.entry is not None and self.status == "failed" else None

    @property
    def has_image(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class Query:
    """What the grid shows: free-text search in prompts, filters, order and page."""

    q: str = ""
    partition: str = ""
    date: str = ""
    status: str = ""
    size: str = ""
    review: str = ""
    order: str = "newest"
    page: int = 1
    per_page: int = 48

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
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The non-default parameters (with ``changes``), for links that keep the filters."""
        values = {**self.__dict__, **changes}
        defaults = Query().__dict__
        return {k: str(v) for k, v in values.items() if v != defaults[k]}


@dataclass(frozen=True)
class Page:
    """One page of a query's results."""

    items: Sequence[GalleryItem]
    total: int
    page: int
    pages: int


@dataclass
class AssetIndex:
    """The partitions of one asset, newest first."""

    asset: tuple[str, ...]
    items: list[GalleryItem]
    by_key: dict[str, GalleryItem] = field(init=False)
    by_partition: list[GalleryItem] = field(init=False)

    def __post_init__(self) -> None:
        self.items.sort(key=lambda i: (-i.time, i.partition_key))
        self.by_key = {i.partition_key: i for i in self.items}
        self.by_partition = sorted(self.items, key=lambda i: i.partition_key)

    @property
    def name(self) -> str:
        return "/".join(self.asset)

    def counts(self) -> Counter[str]:
        """How many partitions have each status."""
        return Counter(i.status for i in self.items)

    def dates(self) -> list[str]:
        """The dates found in partition keys, newest first."""
        return sorted({d for i in self.items if (d := i.date)}, reverse=True)

    def sizes(self) -> list[str]:
        """The sizes found, most common first."""
        return [s for s, _ in Counter(i.size for i in self.items if i.size).most_common()]

    def latest(self, count: int) -> list[GalleryItem]:
        """The newest stored images."""
        out: list[GalleryItem] = []
        for item in self.items:
            if item.has_image:
                out.append(item)
                if len(out) == count:
                    break
        return out

    def select(self, query: Query, keep: Callable[[GalleryItem], bool] | None = None) -> Page:
        """The page of items matching ``query`` (and ``keep``: the review filter's test)."""
        words = query.q.casefold().split()
        part = query.partition.casefold()
        found = [
            i
            for i in (self.by_partition if query.order == "partition" else self.items)
            if (not query.status or i.status == query.status)
            and (not query.date or i.date == query.date)
            and (not query.size or i.size == query.size)
            and (not part or part in i.partition_key.casefold())
            and all(w in i.search_text for w in words)
            and (keep is None or keep(i))
        ]
        pages = max(1, math.ceil(len(found) / query.per_page))
        page = min(query.page, pages)
        start = (page - 1) * query.per_page
        return Page(found[start : start + query.per_page], len(found), page, pages)


@dataclass(frozen=True)
class Snapshot:
    """The whole store as the index last read it."""

    assets: Mapping[str, AssetIndex]
    built_at: float
    build_s: float

    @property
    def images(self) -> int:
        return sum(len(a.items) for a in self.assets.values())


def _item(
    asset: tuple[str, ...], key: str, record: ImageRecord | None, entry: LedgerEntry | None
) -> GalleryItem:
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


class GalleryIndex:
    """Reads the store into a :class:`Snapshot`, again when it is older than ``refresh_s``."""

    def __init__(self, store: ImageStore, *, refresh_s: float = 5.0) -> None:
        self.store = store
        self.ledger = TaskLedger(store)
        self.refresh_s = refresh_s
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._refreshing = False
        # What the last build read: a local rebuild reads only the files changed since.
        self._record_cache = ScanCache()
        self._entry_cache = ScanCache()

    def snapshot(self) -> Snapshot:
        """The current snapshot; a stale one triggers a rebuild (in the background if possible)."""
        current = self._snapshot
        if current is None or self.refresh_s <= 0:
            with self._lock:
                if self._snapshot is None or self.refresh_s <= 0:
                    self._snapshot = self.build()
                return self._snapshot
        if time.time() - current.built_at > self.refresh_s and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._refresh, name="gallery-index", daemon=True).start()
        return current

    def _refresh(self) -> None:
        try:
            snapshot = self.build()
            with self._lock:
                self._snapshot = snapshot
        except Exception:
            log.exception("gallery index refresh failed; keeping the previous one")
        finally:
            self._refreshing = False

    def build(self) -> Snapshot:
        """Read every provenance record and ledger entry under the root, through the store's and
        the ledger's own readers (:meth:`ImageStore.records`, :meth:`TaskLedger.entries`).

        On a local store only the files whose modification time, size or inode changed since the
        last build are read and parsed again (a store of 10,000 images is listed in a fraction of
        a second); an object store is read whole.
        """
        with self._build_lock:
            started = time.perf_counter()
            records: dict[tuple[tuple[str, ...], str], ImageRecord] = {}
            for stored in self.store.records(cache=self._record_cache):
                record = stored.image_record
                if record is not None:
                    records[stored.asset, stored.partition_key] = record
            entries = {
                (e.asset, e.partition_key): e for e in self.ledger.entries(cache=self._entry_cache)
            }
            grouped: dict[tuple[str, ...], list[GalleryItem]] = {}
            for asset, key in records.keys() | entries.keys():
                item = _item(asset, key, records.get((asset, key)), entries.get((asset, key)))
                grouped.setdefault(asset, []).append(item)
            assets = {"/".join(a): AssetIndex(a, items) for a, items in sorted(grouped.items())}
            return Snapshot(assets, time.time(), time.perf_counter() - started)


def read_image(store: ImageStore, item: GalleryItem) -> tuple[StoredImage, bytes] | None:
    """The partition's stored image and its bytes, or ``None``.

    ``None`` also when, on a local store, the file resolves outside the root (a symlink planted
    in the store): the gallery serves only files under the root.
    """
    try:
        found = store.find(item.asset, item.partition_key)
    except UnsafePathError:
        return None
    if found is None:
        return None
    if store.is_local:
        root = os.path.realpath(store.root.path)
        if not os.path.realpath(found.path.path).startswith(root + os.sep):
            log.warning("refusing %s: it resolves outside the root %s", found.path, root)
            return None
    data = store.read_bytes_or_none(found.path)
    return None if data is None else (found, data)
