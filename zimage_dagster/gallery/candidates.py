"""A partition's candidates: the images a reviewer picks among, numbered from 0.

A partition made with ``variants=N`` holds N images: candidate 0 where a partition of one image
keeps it, the others beside it (the store's layout, :meth:`ImageStore.candidates
<zimage_dagster.engine.store.ImageStore.candidates>`). The review page lays them out side by
side (up to :data:`~zimage_dagster.engine.reviews.MAX_CANDIDATES`) and a pick names one by its
index. Without a store at hand only candidate 0 (the gallery index's record) is known.

>>> from zimage_dagster.engine.provenance import ImageRecord
>>> from zimage_dagster.gallery.index import GalleryItem
>>> item = GalleryItem(("hero",), "fox", "stored", ImageRecord(seed=7, task_id="t1", prompt="p"))
>>> [c.index for c in candidates_of(item)], candidate_at(item, "0").number
([0], 1)
>>> candidate_at(item, "1"), candidate_at(item, "../0"), candidate_at(item, "-1")
(None, None, None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from zimage_dagster.engine.keys import candidate_key
from zimage_dagster.engine.provenance import ImageRecord, from_provenance
from zimage_dagster.engine.reviews import MAX_CANDIDATES
from zimage_dagster.engine.store import ImageStore, StoredImage, UnsafePathError
from zimage_dagster.gallery.index import GalleryItem, read_image

__all__ = ["Candidate", "candidate_at", "candidates_of", "read_candidate"]

_INDEX = re.compile(r"[0-9]{1,2}")


@dataclass(frozen=True)
class Candidate:
    """One image of a partition: its index (0-based) and its provenance record."""

    item: GalleryItem
    index: int
    record: ImageRecord

    @property
    def number(self) -> int:
        """What the reviewer sees and types: ``index + 1``."""
        return self.index + 1

    @property
    def unit_key(self) -> str:
        """The key the store holds this candidate under
        (:func:`~zimage_dagster.engine.keys.candidate_key`)."""
        return candidate_key(self.item.partition_key, self.index)


def candidates_of(item: GalleryItem, store: ImageStore | None = None) -> list[Candidate]:
    """The partition's candidates, by index (none when it has no stored image). With ``store``,
    every stored candidate; without, candidate 0 alone (the index's record).

    >>> import tempfile
    >>> from zimage_dagster.engine.provenance import to_provenance
    >>> store = ImageStore(tempfile.mkdtemp())
    >>> for i, seed in enumerate((7, 8, 9)):
    ...     rec = ImageRecord(seed=seed, task_id=f"t{i}", prompt="p")
    ...     _ = store.save("hero", candidate_key("fox", i), b"img", "png", to_provenance(rec))
    >>> item = GalleryItem(("hero",), "fox", "stored", ImageRecord(seed=7, task_id="t0", prompt="p"))
    >>> [(c.number, c.record.seed, c.unit_key) for c in candidates_of(item, store)]
    [(1, 7, 'fox'), (2, 8, 'fox...1'), (3, 9, 'fox...2')]
    """
    if item.record is None:
        return []
    if store is None:
        return [Candidate(item, 0, item.record)]
    found: list[Candidate] = []
    try:
        stored = store.candidates(item.asset, item.partition_key, MAX_CANDIDATES)
    except UnsafePathError:
        return []
    for index, image in stored:
        try:
            record = item.record if index == 0 else from_provenance(image.provenance)
        except (ValueError, TypeError, KeyError):
            continue  # a partial record: not a candidate to pick
        found.append(Candidate(item, index, record))
    return found


def candidate_at(item: GalleryItem, text: str, store: ImageStore | None = None) -> Candidate | None:
    """The candidate whose index is ``text`` (decimal digits only), else ``None``."""
    if not _INDEX.fullmatch(text):
        return None
    index = int(text)
    return next((c for c in candidates_of(item, store) if c.index == index), None)


def read_candidate(store: ImageStore, candidate: Candidate) -> tuple[StoredImage, bytes] | None:
    """The candidate's stored image and its bytes (the index's reader, with its checks), or
    ``None``."""
    return read_image(store, replace(candidate.item, partition_key=candidate.unit_key))
