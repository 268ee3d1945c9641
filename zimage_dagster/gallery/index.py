"""What the gallery knows of an image store: every partition of every asset, and its status,
kept in an index file in the gallery's cache folder and read a page at a time.

The index (:mod:`~zimage_dagster.gallery.catalog`, SQLite) is filled from the store's provenance
records and the ledger's entries by :mod:`~zimage_dagster.gallery.indexer` (through the store's
and the ledger's own readers: nothing here parses a file name), and from shard manifests by
:meth:`GalleryIndex.ingest_manifest`. It never writes to the store.

* Without :meth:`GalleryIndex.start`, a :meth:`~GalleryIndex.snapshot` older than ``refresh_s``
  brings the index up to date first (``refresh_s=0``: on every call); a pass reads only the files
  changed since the last one, so a small store answers at once.
* Started (what the app does), a background thread runs the passes, every ``refresh_s`` or more
  (never more than half the time: a long pass waits as long again), and pages are served from
  the index as it is, meanwhile: a first pass over a very large store shows the partitions
  indexed so far (:attr:`Snapshot.indexing`).

The statuses and the status rule are in :mod:`~zimage_dagster.gallery.items`.

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
>>> index.close()
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zimage_dagster.engine.store import ImageStore, StoredImage, UnsafePathError
from zimage_dagster.gallery.catalog import Catalog
from zimage_dagster.gallery.indexer import Indexer, ingest_manifest_rows
from zimage_dagster.gallery.items import ORDERS, STATUSES, GalleryItem, Page, Query

__all__ = [
    "INDEX_FILE",
    "ORDERS",
    "STATUSES",
    "AssetIndex",
    "GalleryIndex",
    "GalleryItem",
    "KeyFilter",
    "Page",
    "Query",
    "Snapshot",
    "read_image",
]

log = logging.getLogger(__name__)

#: The index's file name in the cache folder.
INDEX_FILE = "index.sqlite"
#: While a pass runs, an asset's counts, sizes and dates are reused for this long.
_FACETS_WHILE_INDEXING_S = 30.0


@dataclass(frozen=True)
class KeyFilter:
    """Keep the partitions whose key is in ``keys`` (with ``exclude``: those not in it): the
    review filter, as the index can apply it in SQL. Also a plain test of an item."""

    keys: frozenset[str]
    exclude: bool = False

    def __call__(self, item: GalleryItem) -> bool:
        return (item.partition_key in self.keys) != self.exclude


class AssetIndex:
    """The partitions of one asset, as the index holds them: pages, counts, previous/next."""

    def __init__(self, owner: GalleryIndex, asset_id: int, asset: tuple[str, ...]) -> None:
        self._owner = owner
        self._catalog = owner.catalog
        self.asset_id = asset_id
        self.asset = asset

    @property
    def name(self) -> str:
        return "/".join(self.asset)

    def counts(self) -> Counter[str]:
        """How many partitions have each status."""
        return Counter(self._owner.facet(self, "counts", self._catalog.counts))

    def count(self) -> int:
        """How many partitions the asset has."""
        return sum(self.counts().values())

    def dates(self) -> list[str]:
        """The dates found in partition keys, newest first."""
        return list(self._owner.facet(self, "dates", self._catalog.dates))

    def sizes(self) -> list[str]:
        """The sizes found, most common first."""
        return list(self._owner.facet(self, "sizes", self._catalog.sizes))

    def latest(self, count: int) -> list[GalleryItem]:
        """The newest stored images."""
        return self._catalog.latest(self.asset_id, count)

    def get(self, key: str) -> GalleryItem | None:
        """The partition ``key``, or ``None``."""
        return self._catalog.get(self.asset_id, key)

    @property
    def by_key(self) -> Mapping[str, GalleryItem]:
        """Every partition by key (read from the index as it is asked)."""
        return _ByKey(self)

    def iterate(self, order: str = "newest") -> Iterator[GalleryItem]:
        """Every partition in ``order`` (``newest`` or ``partition``), 1,000 rows at a time."""
        return self._catalog.iterate(self.asset_id, order)

    @property
    def items(self) -> list[GalleryItem]:
        """Every partition, newest first: all in memory, for small stores (pages use
        :meth:`select`)."""
        return list(self.iterate("newest"))

    @property
    def by_partition(self) -> list[GalleryItem]:
        """Every partition by key: all in memory, for small stores."""
        return list(self.iterate("partition"))

    def select(self, query: Query, keep: Callable[[GalleryItem], bool] | None = None) -> Page:
        """The page of partitions matching ``query`` (and ``keep``: the review filter)."""
        if keep is None or isinstance(keep, KeyFilter):
            keys = keep.keys if keep is not None else None
            exclude = keep.exclude if keep is not None else False
            return self._catalog.select(
                self.asset_id, query, keys, exclude=exclude, known_total=self.count()
            )
        # Any other test runs in Python over the query's matches, a batch at a time.
        everything = dataclasses.replace(query, page=1, per_page=1000)
        found = [i for i in self._matches(everything) if keep(i)]
        pages = max(1, -(-len(found) // query.per_page))
        page = min(query.page, pages)
        start = (page - 1) * query.per_page
        return Page(found[start : start + query.per_page], len(found), page, pages)

    def _matches(self, query: Query) -> Iterable[GalleryItem]:
        while True:
            page = self._catalog.select(self.asset_id, query)
            yield from page.items
            if len(page.items) < query.per_page:
                return
            query = dataclasses.replace(query, page=query.page + 1)

    def neighbours(
        self, key: str, query: Query, keep: KeyFilter | None = None
    ) -> tuple[GalleryItem | None, GalleryItem | None]:
        """The partitions before and after ``key`` in the grid's order, among those the grid's
        filters show (``key`` itself need not match them)."""
        return self._catalog.neighbours(
            self.asset_id,
            key,
            query,
            keep.keys if keep is not None else None,
            exclude=keep.exclude if keep is not None else False,
        )


class _ByKey(Mapping[str, GalleryItem]):
    def __init__(self, index: AssetIndex) -> None:
        self._index = index

    def __getitem__(self, key: str) -> GalleryItem:
        found = self._index.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: str, default: Any = None) -> Any:
        found = self._index.get(key)
        return default if found is None else found

    def __iter__(self) -> Iterator[str]:
        return (i.partition_key for i in self._index.iterate("partition"))

    def __len__(self) -> int:
        return self._index.count()


class Snapshot:
    """The store as the index holds it now: its assets (``indexing``: the first pass, or a
    manifest's rows, are still going in, and ``images`` partitions are indexed so far)."""

    def __init__(self, owner: GalleryIndex) -> None:
        self._owner = owner
        self.assets: Mapping[str, AssetIndex] = {
            "/".join(parts): AssetIndex(owner, asset_id, parts)
            for asset_id, parts in owner.catalog.assets()
        }
        self.indexing = owner.indexing
        self.built_at = owner.updated_at
        self.build_s = owner.indexer.last_pass_s

    @property
    def images(self) -> int:
        """How many partitions the index holds."""
        return self._owner.catalog.partitions()


class GalleryIndex:
    """The gallery's index of ``store``, kept in ``cache_dir`` (a temporary folder, removed at
    :meth:`close`, when ``None``); see the module's doc for when it is brought up to date."""

    def __init__(
        self,
        store: ImageStore,
        *,
        refresh_s: float = 5.0,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._tmp = tempfile.TemporaryDirectory(prefix="zg-index-") if cache_dir is None else None
        folder = Path(self._tmp.name if self._tmp is not None else cache_dir)  # type: ignore[arg-type]
        self.catalog = Catalog(folder / INDEX_FILE, root=str(store.root))
        self.indexer = Indexer(store, self.catalog)
        self.updated_at = 0.0
        self._facets: dict[tuple[int, str], tuple[int, float, Any]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._first_pass = threading.Event()
        self._ingesting = 0

    def update(self) -> None:
        """One pass (a damaged index file is deleted and built again)."""
        try:
            self.indexer.update()
        except sqlite3.DatabaseError as exc:
            log.warning("gallery index damaged (%s): building it again", exc)
            self.catalog.reset()
            self.indexer.update()
        self.updated_at = time.time()
        self._first_pass.set()

    def snapshot(self) -> Snapshot:
        """The index as it is; brought up to date first when not started and stale."""
        if self._thread is None and (
            self.refresh_s <= 0 or time.time() - self.updated_at > self.refresh_s
        ):
            self.update()
        return Snapshot(self)

    def start(self, wait_s: float = 0.0) -> GalleryIndex:
        """Run the passes in a background thread; wait up to ``wait_s`` for the first one."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gallery-index", daemon=True)
            self._thread.start()
        self._first_pass.wait(wait_s)
        return self

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.update()
            except Exception:
                log.exception("gallery index pass failed; trying again later")
            pause = max(self.refresh_s, self.indexer.last_pass_s, 0.05)
            self._stopping.wait(pause)

    def close(self) -> None:
        """Stop the background passes and close the index file."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.catalog.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def ingest_manifest(
        self, asset: str | tuple[str, ...], rows: Iterable[Mapping[str, Any]]
    ) -> int:
        """Index a shard manifest's rows (see :func:`~zimage_dagster.gallery.indexer.
        ingest_manifest_rows`); returns how many. Pages served meanwhile say "indexing"."""
        self._ingesting += 1
        try:
            return ingest_manifest_rows(self.catalog, asset, rows)
        finally:
            self._ingesting -= 1

    @property
    def indexing(self) -> bool:
        """True until the first pass ended, and while a manifest's rows go in (the later passes,
        which keep it up to date, do not count: they change a few partitions)."""
        return self.indexer.passes == 0 or self._ingesting > 0

    def facet(self, asset: AssetIndex, name: str, compute: Callable[[int], Any]) -> Any:
        """An asset's counts, sizes or dates: as the last pass (or manifest) stored them; while
        a pass runs, and none is stored, computed at most every 30 seconds."""
        stored = self.catalog.facets(asset.asset_id)
        if stored is not None and (not self.indexing or name != "counts"):
            return stored[name]
        key = (asset.asset_id, name)
        version = self.catalog.version
        cached = self._facets.get(key)
        if cached is not None and (
            cached[0] == version
            or (self.indexing and time.monotonic() - cached[1] < _FACETS_WHILE_INDEXING_S)
        ):
            return cached[2]
        value = compute(asset.asset_id)
        self._facets[key] = (version, time.monotonic(), value)
        return value


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
