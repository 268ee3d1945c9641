"""Filling the gallery's index (:mod:`~zimage_dagster.gallery.catalog`) from the store, a pass
at a time, reading only what changed; and from shard manifests, a row at a time.

A pass asks the store for its provenance records (:meth:`ImageStore.records
<zimage_dagster.engine.store.ImageStore.records>`) and the ledger for its entries
(:meth:`TaskLedger.entries <zimage_dagster.engine.ledger.TaskLedger.entries>`), handing each a
:class:`~zimage_dagster.engine.scan.ScanCache` of its own kind: instead of keeping every parsed
file in memory, it streams the folder's listing (:func:`~zimage_dagster.engine.scan.iter_stamps`),
1,000 files at a time, looks their stamps up in the index, and has the store (or the ledger)
parse only the files whose stamp changed, with its own parser: nothing here decodes a file name.
A file not seen by a pass was removed: its partition is recomputed (or dropped). The index is
committed after every batch, so pages served meanwhile show the partitions indexed so far.

An object store has no inode to stamp a file with: it is read whole, as the store reads it, and
a file's stamp is a hash of its bytes (only the changed ones are parsed and written).

Shards write a manifest per shard (one row per image); :func:`ingest_manifest_rows` takes those
rows as they come (:data:`MANIFEST_COLUMNS`).

>>> import tempfile, pathlib
>>> from zimage_dagster.engine.provenance import ImageRecord, to_provenance
>>> from zimage_dagster.engine.store import ImageStore
>>> from zimage_dagster.gallery.catalog import Catalog
>>> store = ImageStore(tempfile.mkdtemp())
>>> _ = store.save("hero", "fox", b"png", "png",
...                to_provenance(ImageRecord(seed=7, task_id="t1", prompt="A red fox")))
>>> catalog = Catalog(pathlib.Path(tempfile.mkdtemp()) / "i.sqlite", root=str(store.root))
>>> indexer = Indexer(store, catalog)
>>> indexer.update(); indexer.update(); indexer.files_read
1
>>> ingest_manifest_rows(catalog, "shards", [{"key": "k1", "prompt": "an owl", "seed": 3,
...     "task_id": "t-9", "status": "failed", "error_code": "content_policy_violation"}])
1
>>> catalog.partitions()
2
>>> catalog.close()
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from zimage_dagster.api.validation import DEFAULT_SIZE
from zimage_dagster.engine.keys import split_candidate
from zimage_dagster.engine.ledger import LedgerEntry, TaskLedger
from zimage_dagster.engine.provenance import from_provenance
from zimage_dagster.engine.scan import ScanCache, iter_stamps
from zimage_dagster.engine.store import ImageStore, StoredRecord, asset_parts
from zimage_dagster.gallery.catalog import Catalog
from zimage_dagster.gallery.items import STATUSES, GalleryItem, date_of

if TYPE_CHECKING:
    from upath import UPath

__all__ = [
    "BATCH",
    "MANIFEST_COLUMNS",
    "Indexer",
    "ingest_manifest_rows",
    "manifest_fields",
    "manifest_item",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Files looked up, read and committed together.
BATCH = 1000
#: The columns of a shard manifest's row the gallery reads.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "key", "prompt", "seed", "task_id", "path", "sha256", "width", "height", "credits", "status",
    "error_code", "error_message",
)  # fmt: skip
_STORED = frozenset({"stored", "reused"})


def _body(kind: str, value: object) -> tuple[tuple[str, ...], str, Mapping[str, Any] | None]:
    """The asset, key and body (``None``: not a whole record) of a parsed file. A partition's
    candidates ``i >= 1`` (``variants=N``) are not partitions: their record and ledger entry
    are left out (:mod:`zimage_dagster.gallery.candidates` reads them from the store)."""
    if kind == "record" and isinstance(value, StoredRecord) and not value.candidate:
        whole = value.image_record is not None
        return value.asset, value.partition_key, value.provenance if whole else None
    if (
        kind == "entry"
        and isinstance(value, LedgerEntry)
        and not split_candidate(value.partition_key)[1]
    ):
        return value.asset, value.partition_key, value.to_json()
    return (), "", None


class _Feed(ScanCache):
    """A :class:`ScanCache` that hands what changed to the index and keeps nothing: its
    :meth:`read` returns an empty mapping (the reader's own result is not used)."""

    def __init__(self, indexer: Indexer, kind: str, gen: int) -> None:
        super().__init__()
        self.indexer, self.kind, self.gen = indexer, kind, gen

    def read(
        self,
        store: ImageStore,
        folder: UPath,
        suffix: str,
        parse: Callable[[str, bytes], T],
        *,
        kind: str,
    ) -> dict[str, T]:
        if store.is_local:
            stamps: Iterator[tuple[str, str]] = (
                (path, "{}:{}:{}".format(*stamp))
                for path, stamp in iter_stamps(folder.path, suffix)
            )
            raw_of: Callable[[str], bytes | None] = _read_local
        else:
            everything = store.read_all(folder, suffix)
            stamps = ((p, hashlib.blake2b(raw, digest_size=16).hexdigest())
                      for p, raw in everything.items())  # fmt: skip
            raw_of = everything.get
        while batch := list(itertools.islice(stamps, BATCH)):
            self.indexer.ingest(self.kind, self.gen, batch, raw_of, parse)
        return {}


def _read_local(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None  # removed since it was listed


class Indexer:
    """Brings the index up to date with the store: :meth:`update` is one pass.

    ``files_read`` counts the files read and parsed (an unchanged file is not);
    ``indexing`` is true while a pass runs.
    """

    def __init__(self, store: ImageStore, catalog: Catalog) -> None:
        self.store = store
        self.ledger = TaskLedger(store)
        self.catalog = catalog
        self.files_read = 0
        self.passes = 0
        self.indexing = False
        self.last_pass_s = 0.0
        self._gen = 0
        self._touched: set[int] = set()
        self._lock = threading.Lock()

    def update(self) -> None:
        """One pass: every changed, new or removed record and ledger entry."""
        with self._lock, self.catalog.write_lock:
            self.indexing = True
            started = time.perf_counter()
            try:
                self._gen = self._next_gen()
                self._touched = set()
                self.store.records(cache=_Feed(self, "record", self._gen))
                self.ledger.entries(cache=_Feed(self, "entry", self._gen))
                gone = self.catalog.sweep(self._gen)
                self.catalog.refresh_items(gone)
                self.catalog.store_facets(self._touched | {a for a, _ in gone if a})
                self.catalog.commit()
                self.passes += 1
            finally:
                self.indexing = False
                self.last_pass_s = time.perf_counter() - started

    def _next_gen(self) -> int:
        return max(self._gen, self.catalog.max_gen()) + 1

    def ingest(
        self,
        kind: str,
        gen: int,
        batch: list[tuple[str, str]],
        raw_of: Callable[[str], bytes | None],
        parse: Callable[[str, bytes], Any],
    ) -> None:
        """Index one batch of ``(path, stamp)``: parse the changed files, mark the others."""
        catalog = self.catalog
        known = catalog.stamps([path for path, _ in batch])
        catalog.touch((path for path, stamp in batch if known.get(path) == stamp), gen)
        touched: set[tuple[int, str]] = set()
        for path, stamp in batch:
            if known.get(path) == stamp:
                continue
            raw = raw_of(path)
            if raw is None:
                continue
            self.files_read += 1
            asset, key, body = _body(kind, parse(path, raw))
            asset_id = catalog.asset_id(asset) if asset else 0
            touched |= catalog.put_file(kind, path, stamp, gen, asset_id, key, body)
        catalog.refresh_items({pair for pair in touched if pair[0]})
        self._touched |= {a for a, _ in touched if a}
        catalog.commit()


def manifest_fields(key: str, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A shard manifest's row as an index row: ``(key, status, time, date, size, has_image,
    search text, record JSON, entry JSON, failure JSON)``. ``stored`` and ``reused`` rows have an
    image (their provenance record is made of the row's columns); ``failed`` rows keep the
    provider's code and message.

    >>> manifest_fields("k", {"prompt": "A Fox", "seed": 4, "task_id": "t", "width": 512,
    ...                       "height": 512, "status": "stored"})[:7]
    ('k', 'stored', 0.0, None, '512x512', 1, 'a fox\\nk')
    """
    status = str(row.get("status") or "stored")
    prompt = str(row.get("prompt") or "")
    width, height = row.get("width"), row.get("height")
    search = f"{prompt}\n{key}".casefold()
    when = float(row.get("created_at") or 0.0)
    if status in _STORED:
        record = {
            "seed": int(row.get("seed") or 0),
            "task_id": str(row.get("task_id") or ""),
            "prompt": prompt,
            "width": width,
            "height": height,
            "sha256": row.get("sha256"),
            "credits_reserved": row.get("credits"),
            "reused": status == "reused",
            "partition_key": key,
            "created_at": row.get("created_at"),
        }
        size = f"{width}x{height}" if width and height else DEFAULT_SIZE
        return (key, "stored", when, date_of(key), size, 1, search, json.dumps(record), None, None)
    failure = json.dumps([row.get("error_code"), row.get("error_message")])
    shown = status if status in STATUSES else "pending"
    return (key, shown, when, date_of(key), "", 0, search, None, None, failure)


def manifest_item(asset: str | tuple[str, ...], row: Mapping[str, Any]) -> GalleryItem:
    """A shard manifest's row as the gallery shows it (what :func:`ingest_manifest_rows`
    writes, read back).

    >>> item = manifest_item("hero", {"key": "k", "prompt": "a fox", "seed": 4, "task_id": "t",
    ...                              "width": 512, "height": 512, "status": "stored"})
    >>> item.status, item.size, item.record.seed
    ('stored', '512x512', 4)
    """
    key, status, _, _, _, _, search, record, _, failure = manifest_fields(str(row["key"]), row)
    return GalleryItem(
        asset=asset_parts(asset),
        partition_key=key,
        status=status,
        record=from_provenance(json.loads(record)) if record else None,
        search_text=search,
        failure=tuple(json.loads(failure)) if failure else None,
    )


def ingest_manifest_rows(
    catalog: Catalog, asset: str | tuple[str, ...], rows: Iterable[Mapping[str, Any]]
) -> int:
    """Index a shard manifest's rows (:data:`MANIFEST_COLUMNS`; any iterable: a pyarrow table's
    ``to_pylist()`` in batches, a generator), :data:`BATCH` rows at a time, each batch committed;
    returns how many. A row whose key is indexed already replaces it."""
    count = 0
    with catalog.write_lock:
        asset_id = catalog.asset_id(asset_parts(asset))
        rows = iter(rows)
        while batch := list(itertools.islice(rows, BATCH)):
            catalog.put_rows(asset_id, [manifest_fields(str(r["key"]), r) for r in batch])
            catalog.commit()
            count += len(batch)
        catalog.store_facets([asset_id])
        catalog.commit()
    return count
