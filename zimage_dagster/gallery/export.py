"""The picks of an asset as a zip, streamed: one image at a time in memory, whatever their number.

The archive holds ``images/<storage key>.<ext>`` (the picked candidate's file, stored as is) and
``manifest.csv``: one row per image with its partition key, file, prompt, seed, task ID, the
sha256 of the bytes in the archive, the verdict, the candidate, the reviewer, when and the note.
The zip is written to a non-seekable sink (sizes follow each file in a data descriptor), and its
bytes are handed on once 256 KiB have gathered (so at most one image and that much are held).

>>> import io, tempfile, zipfile
>>> from zimage_dagster.engine.provenance import ImageRecord, to_provenance
>>> from zimage_dagster.engine.reviews import current_verdicts, record_verdict
>>> from zimage_dagster.engine.store import ImageStore
>>> from zimage_dagster.gallery.index import GalleryIndex
>>> store = ImageStore(tempfile.mkdtemp())
>>> for key in ("fox", "owl"):
...     _ = store.save("hero", key, b"img-" + key.encode(), "png",
...                    to_provenance(ImageRecord(seed=3, task_id="t-" + key, prompt="a " + key)))
>>> _ = record_verdict(store, "hero", "owl", "pick", reviewer="ana", candidate=0)
>>> hero = GalleryIndex(store).snapshot().assets["hero"]
>>> data = b"".join(export_picks(store, hero, current_verdicts(store, "hero")))
>>> archive = zipfile.ZipFile(io.BytesIO(data))
>>> archive.namelist(), archive.read("images/owl.png")
(['images/owl.png', 'manifest.csv'], b'img-owl')
>>> archive.read("manifest.csv").decode().splitlines()[0]
'key,file,prompt,seed,task_id,sha256,verdict,candidate,reviewer,reviewed_at,note'
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import zipfile
from collections.abc import Iterator, Mapping

from zimage_dagster.engine.reviews import Verdict
from zimage_dagster.engine.store import ImageStore, file_stem
from zimage_dagster.gallery.candidates import candidates_of, read_candidate
from zimage_dagster.gallery.index import AssetIndex

__all__ = ["MANIFEST_FIELDS", "export_picks"]

log = logging.getLogger(__name__)

#: The manifest's columns.
MANIFEST_FIELDS: tuple[str, ...] = (
    "key",
    "file",
    "prompt",
    "seed",
    "task_id",
    "sha256",
    "verdict",
    "candidate",
    "reviewer",
    "reviewed_at",
    "note",
)


_CHUNK_BYTES = 256 * 1024


class _Sink:
    """A write-only, non-seekable file whose bytes are taken away as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def size(self) -> int:
        return sum(len(p) for p in self._parts)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def export_picks(
    store: ImageStore, index: AssetIndex, verdicts: Mapping[str, Verdict]
) -> Iterator[bytes]:
    """The zip's bytes, in chunks: every picked partition of ``index`` (by partition key),
    each looked up in the index by its key (the asset's other partitions are not read)."""
    sink = _Sink()
    manifest = io.StringIO()
    rows = csv.DictWriter(manifest, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    rows.writeheader()
    with zipfile.ZipFile(sink, "w") as archive:
        for key in sorted(k for k, v in verdicts.items() if v.verdict == "pick"):
            verdict = verdicts[key]
            item = index.get(key)
            if item is None:
                log.warning("export: %s is picked but not in the index", key)
                continue
            picked = verdict.candidate if verdict.candidate is not None else -1
            chosen = next((c for c in candidates_of(item, store) if c.index == picked), None)
            read = read_candidate(store, chosen) if chosen is not None else None
            if chosen is None or read is None:
                log.warning("export: no image for the pick of %s", item.partition_key)
                continue
            found, data = read
            record = chosen.record
            name = f"images/{file_stem(item.partition_key)}{found.path.suffix}"
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
            rows.writerow(
                {
                    "key": item.partition_key,
                    "file": name,
                    "prompt": record.prompt,
                    "seed": record.seed,
                    "task_id": record.task_id,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "verdict": verdict.verdict,
                    "candidate": picked,
                    "reviewer": verdict.reviewer,
                    "reviewed_at": _iso(verdict.at),
                    "note": verdict.note,
                }
            )
            del data
            if sink.size >= _CHUNK_BYTES:
                yield sink.take()
        archive.writestr(
            "manifest.csv", manifest.getvalue().encode("utf-8"), compress_type=zipfile.ZIP_DEFLATED
        )
    yield sink.take()
