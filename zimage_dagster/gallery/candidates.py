"""A partition's candidates: the images a reviewer picks among, numbered from 0.

Today the store holds one image per partition: candidate 0. A partition made with ``variants=N``
will hold N; the review page lays them out side by side (up to
:data:`~zimage_dagster.engine.reviews.MAX_CANDIDATES`) and a pick names one by its index.

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
from dataclasses import dataclass

from zimage_dagster.engine.provenance import ImageRecord
from zimage_dagster.gallery.index import GalleryItem

__all__ = ["Candidate", "candidate_at", "candidates_of"]

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


def candidates_of(item: GalleryItem) -> list[Candidate]:
    """The partition's candidates (none when it has no stored image)."""
    return [Candidate(item, 0, item.record)] if item.record is not None else []


def candidate_at(item: GalleryItem, text: str) -> Candidate | None:
    """The candidate whose index is ``text`` (decimal digits only), else ``None``."""
    if not _INDEX.fullmatch(text):
        return None
    found = candidates_of(item)
    index = int(text)
    return found[index] if index < len(found) else None
