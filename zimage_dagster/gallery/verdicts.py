"""The review verdicts joined to the gallery's index: per-asset verdicts, the review filter, and
the previous/next partition a review page links to.

Verdicts are read from the store with :func:`zimage_dagster.engine.reviews.current_verdicts` (the
one home of the winner rule) and kept per asset for ``refresh_s``, like the index; the gallery
forgets an asset's copy when it writes a verdict there, so its own verdicts show at once and
another reviewer's within ``refresh_s``.

>>> import tempfile
>>> from zimage_dagster.engine.provenance import ImageRecord, to_provenance
>>> from zimage_dagster.engine.reviews import record_verdict
>>> from zimage_dagster.engine.store import ImageStore
>>> from zimage_dagster.gallery.index import GalleryIndex, Query
>>> store = ImageStore(tempfile.mkdtemp())
>>> for key in ("a", "b", "c"):
...     _ = store.save("hero", key, b"png", "png",
...                    to_provenance(ImageRecord(seed=1, task_id=key, prompt=key)))
>>> _ = record_verdict(store, "hero", "b", "pick", reviewer="ana", candidate=0)
>>> cache = VerdictCache(store, refresh_s=0)
>>> hero = GalleryIndex(store).snapshot().assets["hero"]
>>> [i.partition_key for i in hero.select(Query(), cache.keep(hero, "unreviewed")).items]
['a', 'c']
>>> [i and i.partition_key for i in neighbours(hero, "a", Query(order="partition"), None)]
[None, 'b']
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from zimage_dagster.engine.reviews import Verdict, current_verdicts, review_state
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery.index import AssetIndex, GalleryItem, KeyFilter, Query

__all__ = ["VerdictCache", "neighbours"]


class VerdictCache:
    """``{partition key: Verdict}`` per asset, read again when older than ``refresh_s``."""

    def __init__(self, store: ImageStore, *, refresh_s: float = 5.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._by_asset: dict[tuple[str, ...], tuple[float, Mapping[str, Verdict]]] = {}

    def of(self, asset: tuple[str, ...]) -> Mapping[str, Verdict]:
        """The asset's current verdicts."""
        with self._lock:
            cached = self._by_asset.get(asset)
        if cached is not None and time.monotonic() - cached[0] < self.refresh_s:
            return cached[1]
        verdicts = current_verdicts(self.store, asset)
        with self._lock:
            self._by_asset[asset] = (time.monotonic(), verdicts)
        return verdicts

    def forget(self, asset: tuple[str, ...]) -> None:
        """Drop the asset's copy (after a verdict was written there)."""
        with self._lock:
            self._by_asset.pop(asset, None)

    def keep(self, index: AssetIndex, wanted: str) -> KeyFilter | None:
        """The review filter ``wanted`` (``unreviewed``, ``picked``, ``rejected``) as the keys
        it keeps (or, for ``unreviewed``, leaves out: the reviewed ones), or ``None`` when there
        is no filter. Verdicts are people's work: thousands, not millions."""
        if not wanted:
            return None
        verdicts = self.of(index.asset)
        if wanted == "unreviewed":
            reviewed = (k for k, v in verdicts.items() if review_state(v) != "unreviewed")
            return KeyFilter(frozenset(reviewed), exclude=True)
        return KeyFilter(frozenset(k for k, v in verdicts.items() if review_state(v) == wanted))


def neighbours(
    index: AssetIndex,
    key: str,
    query: Query,
    keep: KeyFilter | None,
) -> tuple[GalleryItem | None, GalleryItem | None]:
    """The partitions before and after ``key`` in the grid's order among those the grid's
    filters show (``key`` itself need not match them any more: a verdict may have just moved it
    out of an "unreviewed" filter)."""
    return index.neighbours(key, query, keep)
