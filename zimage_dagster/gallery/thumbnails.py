"""Grid thumbnails, generated once per image and kept in a local cache folder.

The store is read-only to the gallery, so thumbnails live apart from it, in ``cache_dir``. A file
is named after the image's sha256 (from its provenance record) and the thumbnail's side, so a
regenerated image gets a new thumbnail and an unchanged one is never decoded again, even by the
next gallery process. Concurrent requests for the same thumbnail generate it once.

>>> import io, tempfile
>>> from PIL import Image
>>> from zimage_dagster.engine.provenance import ImageRecord, to_provenance
>>> from zimage_dagster.engine.store import ImageStore
>>> from zimage_dagster.gallery.index import GalleryIndex
>>> buf = io.BytesIO(); Image.new("RGB", (1024, 768), "teal").save(buf, "PNG")
>>> store = ImageStore(tempfile.mkdtemp())
>>> _ = store.save("hero", "fox", buf.getvalue(), "png",
...                to_provenance(ImageRecord(seed=1, task_id="t", prompt="p", sha256="ab" * 32)))
>>> item = GalleryIndex(store).snapshot().assets["hero"].by_key["fox"]
>>> cache = ThumbnailCache(tempfile.mkdtemp())
>>> Image.open(io.BytesIO(cache.get(store, item))).size
(320, 240)
>>> _ = cache.get(store, item); (cache.generated, cache.hits)
(1, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import threading
from pathlib import Path

from zimage_dagster.engine.store import ImageStore
from zimage_dagster.engine.thumbnails import fit_image
from zimage_dagster.gallery.index import GalleryItem, read_image

__all__ = ["ThumbnailCache", "default_cache_dir"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_cache_dir(root: str) -> Path:
    """``$XDG_CACHE_HOME/zimage-gallery/<hash of the root>`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zimage-gallery" / hashlib.sha256(root.encode()).hexdigest()[:16]


class ThumbnailCache:
    """JPEG thumbnails fitting ``side`` x ``side``, made on first request and then served as is.

    ``generated`` counts thumbnails made (each one decoded its image), ``hits`` those served from
    the cache folder.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], side: int = 320) -> None:
        self.folder = Path(cache_dir)
        self.side = side
        self.generated = 0
        self.hits = 0
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def name(self, item: GalleryItem) -> str:
        """The cache file's name: the image's sha256, else a hash of where and what it is."""
        record = item.record
        sha = record.sha256 if record is not None else None
        if not sha or not _SHA256.fullmatch(sha):
            ident = f"{item.asset_name}\n{item.partition_key}\n{record.task_id if record else ''}"
            sha = "k" + hashlib.sha256(ident.encode()).hexdigest()
        return f"{sha}-{self.side}.jpg"

    def get(self, store: ImageStore, item: GalleryItem) -> bytes | None:
        """The thumbnail's JPEG bytes, or ``None`` when the image is missing or does not decode."""
        path = self.folder / self.name(item)
        with self._guard:
            lock = self._locks.setdefault(path.name, threading.Lock())
        with lock:
            try:
                cached = path.read_bytes()
            except FileNotFoundError:
                pass
            else:
                with self._guard:
                    self.hits += 1
                return cached
            data = self._make(store, item)
            if data is not None:
                self._write(path, data)
                with self._guard:
                    self.generated += 1
        with self._guard:
            self._locks.pop(path.name, None)
        return data

    def _make(self, store: ImageStore, item: GalleryItem) -> bytes | None:
        found = read_image(store, item)
        if found is None:
            return None
        try:
            image = fit_image(found[1], self.side)
        except (OSError, ValueError, SyntaxError):
            return None
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=82, optimize=True)
        return buf.getvalue()

    def _write(self, path: Path, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
