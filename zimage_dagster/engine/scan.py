"""Reading a folder of small files again and again, and only what changed: :class:`ScanCache`.

The gallery's index rereads a whole store every few seconds (keeping its stamps in its own file,
not in a ``ScanCache``: it streams the listing with :func:`iter_stamps`); the dataset sensor rereads
an asset's records on every tick. :meth:`ImageStore.records <zimage_dagster.engine.store.ImageStore.records>` and
:meth:`TaskLedger.entries <zimage_dagster.engine.ledger.TaskLedger.entries>` take a cache, so that
a reader who keeps one pays, on a local store, for a listing plus the files that changed:

* the files under the folder are listed with their ``(mtime_ns, size, inode)``; hidden files
  (temp files of writes in flight) and symlinked folders are skipped;
* a file whose stamp is the one read last time is not read nor parsed again (its parsed value is
  kept). The store writes by renaming a new file over the old one, so a rewritten file always
  has a new inode, even within the filesystem's timestamp granularity;
* a file gone since is forgotten.

An object store is read whole each time (one listing, one concurrent read): its listings carry no
inode, and a cached listing would hide other writers' files.

A cache holds one kind of file (records, or ledger entries): using it for another is an error.

>>> import tempfile
>>> from zimage_dagster.engine.store import ImageStore
>>> store = ImageStore(tempfile.mkdtemp())
>>> _ = store.write_atomic(store.join("notes", "a.json"), b"1")
>>> cache, reads = ScanCache(), []
>>> def parse(path: str, raw: bytes) -> int:
...     reads.append(path)
...     return int(raw)
>>> first = cache.read(store, store.join("notes"), ".json", parse, kind="notes")
>>> second = cache.read(store, store.join("notes"), ".json", parse, kind="notes")
>>> list(first.values()), list(second.values()), len(reads)
([1], [1], 1)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from upath import UPath

    from zimage_dagster.engine.store import ImageStore

__all__ = ["ScanCache", "Stamp", "iter_stamps", "local_stamps"]

T = TypeVar("T")

#: What says a local file changed: ``(mtime_ns, size, inode)``.
Stamp = tuple[int, int, int]


class ScanCache:
    """What earlier reads of a store's folders found: path -> (stamp, parsed value)."""

    def __init__(self) -> None:
        self._kind: str | None = None
        self._files: dict[str, tuple[Stamp, Any]] = {}

    def __len__(self) -> int:
        return len(self._files)

    def read(
        self,
        store: ImageStore,
        folder: UPath,
        suffix: str,
        parse: Callable[[str, bytes], T],
        *,
        kind: str,
    ) -> dict[str, T]:
        """``{path: parse(path, bytes)}`` for the files under ``folder`` (recursively) whose name
        ends with ``suffix``, in path order; on a local store only changed files are read again."""
        if self._kind is None:
            self._kind = kind
        elif self._kind != kind:
            raise ValueError(f"this ScanCache holds {self._kind}; keep another one for {kind}")
        if not store.is_local:
            return {p: parse(p, raw) for p, raw in sorted(store.read_all(folder, suffix).items())}
        stamps = local_stamps(folder.path, suffix)
        inside = folder.path.rstrip(os.sep) + os.sep
        for gone in [p for p in self._files if p.startswith(inside) and p not in stamps]:
            del self._files[gone]
        for path, stamp in stamps.items():
            known = self._files.get(path)
            if known is not None and known[0] == stamp:
                continue
            try:
                with open(path, "rb") as fh:
                    raw = fh.read()
            except FileNotFoundError:
                continue  # removed since it was listed
            self._files[path] = (stamp, parse(path, raw))
        return {p: cast(T, self._files[p][1]) for p in sorted(stamps) if p in self._files}


def local_stamps(folder: str, suffix: str) -> dict[str, Stamp]:
    """``{path: (mtime_ns, size, inode)}`` of the files under ``folder`` ending with ``suffix``;
    hidden files and folders, and symlinked folders, are skipped; a missing folder is empty.

    >>> local_stamps("/no/such/folder", ".json")
    {}
    """
    return dict(iter_stamps(folder, suffix))


def iter_stamps(folder: str, suffix: str) -> Iterator[tuple[str, Stamp]]:
    """:func:`local_stamps` one file at a time, in listing order: a reader of a very large folder
    (the gallery's index) holds one listing entry, not the whole listing.

    >>> list(iter_stamps("/no/such/folder", ".json"))
    []
    """
    todo = [folder]
    while todo:
        try:
            listing = os.scandir(todo.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with listing:
            for entry in listing:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
                    elif entry.name.endswith(suffix):
                        st = entry.stat(follow_symlinks=False)
                        yield entry.path, (st.st_mtime_ns, st.st_size, st.st_ino)
                except FileNotFoundError:
                    continue
