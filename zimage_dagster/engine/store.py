"""Where generated images live: the image store (no Dagster; the IO manager is in ``storage``).

Layout under a root (a local folder by default, any fsspec URL such as ``s3://bucket/prefix`` or
``memory://demo`` in production)::

    <root>/<asset path...>/<storage key>.<ext>    the image (png, jpg, webp)
    <root>/<asset path...>/<storage key>.json     its provenance record
    <root>/<asset path...>/<storage key>~<i>.<ext>, .json   candidate i >= 1 of the partition
                                                  (``variants=N``; candidate 0 is the above)
    <root>/_ledger/<asset path...>/<storage key>.json   the task ledger (see ``engine.ledger``)
    <root>/_reviews/<asset path...>/<storage key>/<record id>.json   review verdicts
                                                  (append-only, see ``engine.reviews``)
    <root>/_manifests/<asset path...>/<shard key>.parquet   a shard's manifest (sharded mode,
                                                  see ``engine.manifest``); its rows' images
                                                  are the asset's, keyed by row

Every method takes the Dagster partition key itself (or a candidate's unit key,
:func:`zimage_dagster.engine.keys.candidate_key`); the store turns it into the file stem with
the one codec, :func:`zimage_dagster.engine.keys.storage_key` (``2026-01-01|hero`` is stored as
``2026-01-01__hero``). Only the store reads its file names back: :meth:`ImageStore.records` (every
provenance record with its asset and partition key) and :meth:`ImageStore.partitions`; the gallery
and the sensors ask them instead of parsing paths.

A multi-part Dagster asset key (``AssetKey(["catalog", "hero"])``) maps to nested folders
(``<root>/catalog/hero/...``). The first folder names ``_ledger``, ``_reviews`` and ``_manifests``
are reserved for the ledger, the review records and the shards' manifests (:data:`RESERVED_DIRS`).

Writes are atomic. On a local filesystem the bytes go to a hidden temp file in the same folder,
which is flushed, fsynced and then renamed over the target with ``os.replace``, so a reader sees the
old file or the new one, never half of one. On an object store a single PUT (or a completed
multipart upload) is atomic by itself. The image is always written before its provenance record,
so a provenance record always points at a complete image.

The provenance record stores exactly the mapping it is given, as JSON. It must never hold a secret
(an API key, a signed URL, an ``Authorization`` header): the caller builds it from
``zimage_dagster.engine.provenance.to_provenance``, which holds none.

Every asset name part and partition key is checked before it touches a path: empty names, ``.``,
``..``, ``/``, ``\\``, NUL and other control characters, drive prefixes such as ``C:`` and names
longer than 200 bytes are refused with :class:`UnsafePathError`, and every built path is checked to
lie under the root. Nothing is ever written outside the root.

Example:
    >>> import tempfile
    >>> store = ImageStore(tempfile.mkdtemp())
    >>> path = store.write_image("hero", "p1", b"not really a png", "png")
    >>> store.read_bytes("hero", "p1", "png")
    b'not really a png'
    >>> store.exists("hero", "p1")
    True
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Protocol

from PIL import Image
from upath import UPath
from upath.implementations.local import LocalPath

from zimage_dagster.engine.atomic import ConditionalFiles, conditional_files, replace_file
from zimage_dagster.engine.keys import (
    InvalidPartitionKeyError,
    candidate_key,
    split_candidate,
    storage_key,
)
from zimage_dagster.engine.keys import partition_key as decode_key
from zimage_dagster.engine.provenance import ImageRecord, from_provenance
from zimage_dagster.engine.scan import ScanCache

__all__ = [
    "DEFAULT_STORAGE",
    "IMAGE_EXTENSIONS",
    "LEDGER_DIR",
    "MANIFESTS_DIR",
    "RESERVED_DIRS",
    "REVIEWS_DIR",
    "STORAGE_URL_ENV",
    "AssetLike",
    "ImageStore",
    "StoredImage",
    "StoredRecord",
    "UnsafePathError",
    "asset_parts",
    "check_path_component",
    "extension_for_format",
    "file_stem",
    "resolve_storage",
]

log = logging.getLogger(__name__)


class _HasPath(Protocol):
    """Anything with key parts in ``path`` (a Dagster ``AssetKey``)."""

    @property
    def path(self) -> Sequence[str]: ...


#: An asset named by a Dagster ``AssetKey``, a sequence of path parts, or a single-part name.
AssetLike = _HasPath | Sequence[str] | str

#: Environment variable naming the default storage root (a folder or an fsspec URL).
STORAGE_URL_ENV = "ZIMAGE_STORAGE_URL"
#: The default storage root when neither an argument nor the variable names one.
DEFAULT_STORAGE = "zimage_output"

#: Reserved first-level folder under the root holding the task ledger.
LEDGER_DIR = "_ledger"
#: Reserved first-level folder under the root holding the review records (``engine.reviews``).
REVIEWS_DIR = "_reviews"
#: Reserved first-level folder under the root holding the shards' manifests (``engine.manifest``).
MANIFESTS_DIR = "_manifests"
#: First-level folder names that are never an asset's: the store's own records live there.
RESERVED_DIRS: frozenset[str] = frozenset({LEDGER_DIR, REVIEWS_DIR, MANIFESTS_DIR})
_MANIFEST_SUFFIX = ".parquet"

#: Image file extensions the store knows, in the order ``find`` probes them.
IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "gif")

_FORMAT_TO_EXT = {"PNG": "png", "JPEG": "jpg", "JPG": "jpg", "WEBP": "webp", "GIF": "gif"}
_EXT_TO_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
_MAX_COMPONENT_BYTES = 200


class UnsafePathError(ValueError):
    """An asset name or partition key that could escape the store's root or break a filesystem."""


def resolve_storage(storage: str | os.PathLike[str] | None = None) -> str:
    """The storage root: ``storage`` if given, else ``$ZIMAGE_STORAGE_URL``, else ``zimage_output``.

    >>> resolve_storage("s3://bucket/images")
    's3://bucket/images'
    >>> resolve_storage() == (os.environ.get(STORAGE_URL_ENV) or "zimage_output")
    True
    """
    if storage is not None and os.fspath(storage) != "":
        return os.fspath(storage)
    return os.environ.get(STORAGE_URL_ENV) or DEFAULT_STORAGE


def extension_for_format(fmt: str) -> str:
    """File extension for a Pillow format name.

    >>> extension_for_format("JPEG")
    'jpg'
    """
    try:
        return _FORMAT_TO_EXT[fmt.upper()]
    except KeyError:
        raise ValueError(f"unsupported image format {fmt!r}") from None


def check_path_component(value: object, what: str = "partition key") -> str:
    """Return ``value`` if it is safe as one file or folder name under the root, else raise.

    Refused: non-strings, empty names, ``.`` and ``..``, ``/`` and ``\\``, NUL and other control
    characters, leading or trailing whitespace, drive or UNC prefixes (``C:``), and names over 200
    UTF-8 bytes. Everything else (Dagster date keys, ``2024-01-01-00:00``, unicode) is allowed.

    >>> check_path_component("2024-01-01")
    '2024-01-01'
    >>> check_path_component("../etc")
    Traceback (most recent call last):
    ...
    zimage_dagster.engine.store.UnsafePathError: unsafe partition key '../etc': contains a path separator
    """
    if not isinstance(value, str):
        raise UnsafePathError(f"unsafe {what} {value!r}: not a string")
    reason = _unsafe_because(value)
    if reason is not None:
        raise UnsafePathError(f"unsafe {what} {value!r}: {reason}")
    return value


@functools.lru_cache(maxsize=4096)
def _unsafe_because(value: str) -> str | None:
    """Why ``value`` is unsafe as a file name, or None. Cached: every path of a partition
    (image, record, ledger entry, claim) checks the same few names again and again, and the
    drive-prefix test builds two path objects."""
    reason: str | None = None
    if value == "":
        reason = "empty"
    elif value in (".", ".."):
        reason = "is a relative path reference"
    elif "/" in value or "\\" in value:
        reason = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        reason = "contains a control character"
    elif value != value.strip():
        reason = "has leading or trailing whitespace"
    elif PureWindowsPath(value).anchor or PurePosixPath(value).anchor:
        reason = "is an absolute path or has a drive prefix"
    elif len(value.encode("utf-8")) > _MAX_COMPONENT_BYTES:
        reason = f"longer than {_MAX_COMPONENT_BYTES} bytes"
    return reason


def asset_parts(asset: AssetLike) -> tuple[str, ...]:
    """The checked folder parts for an asset.

    A ``str`` is one part (``"a/b"`` is refused: pass ``AssetKey(["a", "b"])`` or ``["a", "b"]``).

    >>> asset_parts(["catalog", "hero"]), asset_parts("hero")
    (('catalog', 'hero'), ('hero',))
    """
    if isinstance(asset, str):
        parts: tuple[str, ...] = (asset,)
    elif hasattr(asset, "path"):  # a Dagster AssetKey
        parts = tuple(asset.path)
    else:
        parts = tuple(asset)
    if not parts:
        raise UnsafePathError("unsafe asset name: no parts")
    for part in parts:
        check_path_component(part, "asset name")
    return parts


def file_stem(partition_key: str) -> str:
    """The checked file stem of a partition key (its storage key).

    >>> file_stem("2026-01-01|hero")
    '2026-01-01__hero'

    A key the scans could not see again (a leading ``.``) is refused like any unsafe one.
    """
    check_path_component(partition_key)
    try:
        stem = storage_key(partition_key)
    except InvalidPartitionKeyError as exc:
        raise UnsafePathError(str(exc)) from None
    return check_path_component(stem)


def _check_ext(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    if not (1 <= len(ext) <= 8 and ext.isascii() and ext.isalnum()):
        raise UnsafePathError(f"unsafe file extension {ext!r}")
    return ext


@dataclass(frozen=True)
class StoredImage:
    """An image found in the store.

    Attributes:
        path: where the image is.
        format: ``"PNG"``, ``"JPEG"``, ``"WEBP"`` (from the provenance, else from the extension).
        sha256: hex digest recorded in the provenance (``None`` if no provenance record).
        provenance: the provenance record (empty if none).
    """

    path: UPath
    format: str
    sha256: str | None
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredRecord:
    """One provenance record found in the store, by :meth:`ImageStore.records`.

    Attributes:
        asset: the asset key's parts (``("catalog", "hero")``).
        partition_key: the Dagster partition key (decoded from the file name by the store).
        provenance: the JSON object as stored (any object: a record written by another version,
            or a partial one, is still reported; :attr:`image_record` says if it is whole).
        path: where the record file is (a string: no path object per record).
        candidate: which candidate of the partition it is (0: the first, or only, image).

    >>> rec = StoredRecord(("hero",), "fox", {"seed": 7, "task_id": "t", "prompt": "p"}, "x.json")
    >>> rec.image_record.seed, StoredRecord(("hero",), "fox", {"seed": 7}, "x.json").image_record
    (7, None)
    """

    asset: tuple[str, ...]
    partition_key: str
    provenance: Mapping[str, Any]
    path: str
    candidate: int = 0

    @functools.cached_property
    def image_record(self) -> ImageRecord | None:
        """The record as an :class:`~zimage_dagster.engine.provenance.ImageRecord` (parsed once),
        or ``None`` when it lacks a required field or holds a field of the wrong shape."""
        try:
            return from_provenance(self.provenance)
        except (ValueError, TypeError, KeyError) as exc:
            log.debug("%s is not a whole provenance record: %s", self.path, exc)
            return None


class ImageStore:
    """Images and their provenance records under one root (local folder or fsspec URL).

    Args:
        root: a folder path, ``PathLike``, ``UPath`` or fsspec URL (``s3://bucket/prefix``).
        storage_options: fsspec options for the root's filesystem (credentials belong in the
            environment or here, never in a provenance record).

    Example:
        >>> store = ImageStore("memory://doctest-store")
        >>> _ = store.save("hero", "p1", b"img", "png", {"seed": 7, "sha256": "ab"})
        >>> found = store.find("hero", "p1")
        >>> (found.format, found.sha256, found.path.name)
        ('PNG', 'ab', 'p1.png')
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | UPath,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        opts = dict(storage_options or {})
        root_str = os.fspath(root) if not isinstance(root, UPath) else str(root)
        if "://" in root_str and not root_str.startswith(("file://", "local://", "memory://")):
            # Other processes write the ledger; a cached folder listing would hide their entries.
            opts.setdefault("use_listings_cache", False)
        if isinstance(root, UPath) and not opts:
            self._root = root
        else:
            self._root = UPath(
                os.fspath(root) if not isinstance(root, UPath) else str(root), **opts
            )
        self._is_local = isinstance(self._root, LocalPath)
        if self._is_local:
            self._root = UPath(os.path.abspath(self._root.path))
        self._root_str = str(self._root).rstrip("/")
        self._conditional: ConditionalFiles | None = None  # made on the first create_new

    def __repr__(self) -> str:
        return f"ImageStore({self._root_str!r})"

    @property
    def root(self) -> UPath:
        """The root folder."""
        return self._root

    @property
    def is_local(self) -> bool:
        """True when the root is on the local filesystem."""
        return self._is_local

    # -- paths -------------------------------------------------------------------------------

    def join(self, *parts: str) -> UPath:
        """Join checked parts onto the root, refusing anything that would land outside it."""
        for part in parts:
            check_path_component(part, "path part")
        path = self._root.joinpath(*parts)
        if not str(path).startswith(self._root_str + "/"):
            raise UnsafePathError(f"path {path} is outside the root {self._root_str}")
        return path

    def asset_dir(self, asset: AssetLike) -> UPath:
        """The folder of an asset's images."""
        parts = asset_parts(asset)
        if parts[0] in RESERVED_DIRS:
            raise UnsafePathError(
                f"asset name {parts[0]!r} is reserved for the store's own records "
                f"({', '.join(sorted(RESERVED_DIRS))})"
            )
        return self.join(*parts)

    def image_path(self, asset: AssetLike, partition_key: str, ext: str = "png") -> UPath:
        """``<root>/<asset>/<storage key>.<ext>``."""
        return self.asset_dir(asset) / f"{file_stem(partition_key)}.{_check_ext(ext)}"

    def provenance_path(self, asset: AssetLike, partition_key: str) -> UPath:
        """``<root>/<asset>/<storage key>.json``."""
        return self.asset_dir(asset) / f"{file_stem(partition_key)}.json"

    def manifests_dir(self, asset: AssetLike) -> UPath:
        """``<root>/_manifests/<asset>``: the folder of an asset's shard manifests."""
        self.asset_dir(asset)  # the same checks as the asset's own folder
        return self.join(MANIFESTS_DIR, *asset_parts(asset))

    def manifest_path(self, asset: AssetLike, shard_key: str) -> UPath:
        """``<root>/_manifests/<asset>/<shard key>.parquet``: a shard's manifest.

        >>> ImageStore("memory://doctest-manifest").manifest_path("hero", "shard-00001").name
        'shard-00001.parquet'
        """
        return self.manifests_dir(asset) / f"{file_stem(shard_key)}{_MANIFEST_SUFFIX}"

    def manifests(self, asset: AssetLike) -> dict[str, UPath]:
        """``shard key -> manifest path`` of every manifest of the asset (the one reader of
        their file names)."""
        folder = self.manifests_dir(asset)
        found: dict[str, UPath] = {}
        for path in self.list_files(folder, _MANIFEST_SUFFIX):
            if str(path.parent).rstrip("/") == str(folder).rstrip("/"):
                found[decode_key(path.name[: -len(_MANIFEST_SUFFIX)])] = path
        return dict(sorted(found.items()))

    # -- low-level I/O (also used by the ledger) ----------------------------------------------

    def write_atomic(self, path: UPath, data: bytes, *, fsync: bool = True) -> UPath:
        """Write ``data`` to ``path`` so that readers see the old or new content, never a part.

        ``path`` must come from this store (``join``, ``image_path``...): it is re-checked.
        """
        if not str(path).startswith(self._root_str + "/"):
            raise UnsafePathError(f"path {path} is outside the root {self._root_str}")
        if self._is_local:
            # The temp file honours the umask (not mkstemp's 0600); a killed writer's leftovers
            # are removed by remove_stale_temp_files.
            replace_file(path.path, data, fsync=fsync)
        else:
            # One put: atomic on object stores (S3, GCS, Azure) and in memory://.
            with contextlib.suppress(OSError, NotImplementedError):
                path.parent.mkdir(parents=True, exist_ok=True)
            path.fs.pipe_file(path.path, data)
        return path

    def create_new(self, path: UPath, data: bytes) -> UPath:
        """Write ``data`` to ``path`` only if no file is there yet, atomically; ``FileExistsError``
        otherwise. Append-only records use it: a record is never overwritten, and a reader sees a
        whole file or none. The storage's own create-if-absent does it
        (:func:`~zimage_dagster.engine.atomic.conditional_files`: a hard link locally,
        ``If-None-Match`` on S3...).

        >>> import tempfile
        >>> store = ImageStore(tempfile.mkdtemp())
        >>> path = store.join("notes", "a.json")
        >>> store.create_new(path, b"{}").name
        'a.json'
        >>> store.create_new(path, b"{}")
        Traceback (most recent call last):
        ...
        FileExistsError: ...
        """
        if not str(path).startswith(self._root_str + "/"):
            raise UnsafePathError(f"path {path} is outside the root {self._root_str}")
        if self._conditional is None:
            self._conditional = conditional_files(self._root)
        self._conditional.create(path, data)
        return path

    def read_bytes_or_none(self, path: UPath) -> bytes | None:
        """The file's bytes, or ``None`` when it does not exist."""
        try:
            if self._is_local:
                with open(path.path, "rb") as fh:
                    return fh.read()
            return bytes(path.fs.cat_file(path.path))
        except FileNotFoundError:
            return None

    def list_files(self, folder: UPath, suffix: str = "") -> list[UPath]:
        """Every file under ``folder`` (recursively) whose name ends with ``suffix``.

        Hidden files (temp files of in-flight writes) are skipped. Missing folder: empty list.
        """
        out: list[UPath] = []
        if self._is_local:
            for dirpath, dirnames, filenames in os.walk(folder.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                out.extend(
                    UPath(os.path.join(dirpath, name))
                    for name in sorted(filenames)
                    if name.endswith(suffix) and not name.startswith(".")
                )
            return out
        # Other processes (runs, the sensor, the callback receiver) write here: never trust a
        # cached listing.
        folder.fs.invalidate_cache(folder.path)
        try:
            found = folder.fs.find(folder.path)
        except FileNotFoundError:
            return []
        for p in sorted(found):
            name = p.rsplit("/", 1)[-1]
            if name.endswith(suffix) and not name.startswith("."):
                out.append(_child(folder, p))
        return out

    def read_many(self, paths: Sequence[UPath]) -> dict[str, bytes]:
        """Read many files at once: ``{str(path): bytes}``; files that vanished are left out.

        On object stores this is one concurrent ``fs.cat`` call, not one round trip per file.
        """
        if not paths:
            return {}
        if self._is_local:
            result: dict[str, bytes] = {}
            for p in paths:
                data = self.read_bytes_or_none(p)
                if data is not None:
                    result[str(p)] = data
            return result
        fs = paths[0].fs
        by_inner = {p.path: p for p in paths}
        raw = fs.cat(list(by_inner), on_error="omit")
        if isinstance(raw, bytes):  # a single path gives bytes, not a dict
            raw = {next(iter(by_inner)): raw}
        return {str(by_inner[k]): bytes(v) for k, v in raw.items() if k in by_inner}

    def read_all(self, folder: UPath, suffix: str = "") -> dict[str, bytes]:
        """``{str(path): bytes}`` for every file under ``folder`` whose name ends with ``suffix``.

        The bulk read behind the ledger scan: locally one ``os.walk`` and plain reads (no path
        objects per file); on object stores one ``find`` and one concurrent ``cat``. Hidden files
        (in-flight temp files) and files that vanish meanwhile are left out.
        """
        if not str(folder).startswith(self._root_str):
            raise UnsafePathError(f"path {folder} is outside the root {self._root_str}")
        if not self._is_local:
            return self.read_many(self.list_files(folder, suffix))
        result: dict[str, bytes] = {}
        for dirpath, dirnames, filenames in os.walk(folder.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.endswith(suffix) and not name.startswith("."):
                    full = os.path.join(dirpath, name)
                    try:
                        with open(full, "rb") as fh:
                            result[full] = fh.read()
                    except FileNotFoundError:
                        continue
        return result

    def delete_file(self, path: UPath) -> bool:
        """Delete one file; ``False`` if it did not exist."""
        if not str(path).startswith(self._root_str + "/"):
            raise UnsafePathError(f"path {path} is outside the root {self._root_str}")
        try:
            if self._is_local:
                os.unlink(path.path)
            else:
                path.fs.rm_file(path.path)
        except FileNotFoundError:
            return False
        return True

    # -- images and provenance ----------------------------------------------------------------

    def write_image(
        self, asset: AssetLike, partition_key: str, data: bytes, ext: str = "png"
    ) -> UPath:
        """Write image bytes atomically; returns the path."""
        return self.write_atomic(self.image_path(asset, partition_key, ext), data)

    def write_provenance(
        self, asset: AssetLike, partition_key: str, record: Mapping[str, Any]
    ) -> UPath:
        """Write the provenance record (exactly ``record``, as JSON) atomically.

        Write it after the image. It must hold no secret: it stores what it is given.
        """
        data = json.dumps(dict(record), indent=2, sort_keys=True, default=str).encode("utf-8")
        return self.write_atomic(self.provenance_path(asset, partition_key), data)

    def save(
        self,
        asset: AssetLike,
        partition_key: str,
        data: bytes,
        ext: str,
        provenance: Mapping[str, Any],
    ) -> StoredImage:
        """Image, then provenance, then remove stale siblings with another extension."""
        path = self.write_image(asset, partition_key, data, ext)
        self.write_provenance(asset, partition_key, provenance)
        ext = _check_ext(ext)
        for other in IMAGE_EXTENSIONS:
            if other != ext:
                self.delete_file(self.image_path(asset, partition_key, other))
        fmt = str(provenance.get("format") or _EXT_TO_FORMAT.get(ext, ext.upper()))
        sha = provenance.get("sha256")
        return StoredImage(path, fmt, str(sha) if sha else None, dict(provenance))

    def read_provenance(self, asset: AssetLike, partition_key: str) -> dict[str, Any] | None:
        """The provenance record, or ``None`` if there is none.

        An unreadable record (truncated, garbage, not a JSON object, empty object) is moved aside
        to ``<storage key>.json.unreadable-<time>`` with a warning naming both files, and ``None``
        is returned: the partition is then rebuilt from its ledger entry (re-attaching to its
        task) instead of failing on every run.
        """
        path = self.provenance_path(asset, partition_key)
        data = self.read_bytes_or_none(path)
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if isinstance(record, dict) and record:
                return record
            problem = f"not a provenance record: {type(record).__name__} {str(record)[:40]}"
        self.move_aside(path, problem)
        return None

    @staticmethod
    def aside_path(path: UPath) -> UPath:
        """Where an unreadable file is kept: ``<name>.unreadable-<UTC time>-<random>`` beside it
        (no scan reads it: it does not end with ``.json``)."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return path.with_name(f"{path.name}.unreadable-{stamp}-{os.urandom(3).hex()}")

    def move_aside(self, path: UPath, problem: str) -> UPath:
        """Keep an unreadable file under :meth:`aside_path` (never read again) and log it."""
        aside = self.aside_path(path)
        data = self.read_bytes_or_none(path)
        if data is not None:
            self.write_atomic(aside, data)
            self.delete_file(path)
            log.warning("unreadable file %s (%s) moved aside to %s", path, problem, aside.name)
        return aside

    def find(self, asset: AssetLike, partition_key: str) -> StoredImage | None:
        """The stored image for a partition, or ``None``.

        The extension comes from the provenance's ``format`` when there is one; otherwise the known
        extensions are probed in order.
        """
        prov = self.read_provenance(asset, partition_key) or {}
        candidates: list[str] = []
        fmt = prov.get("format")
        if isinstance(fmt, str) and fmt.upper() in _FORMAT_TO_EXT:
            candidates.append(_FORMAT_TO_EXT[fmt.upper()])
        candidates += [e for e in IMAGE_EXTENSIONS if e not in candidates]
        for ext in candidates:
            path = self.image_path(asset, partition_key, ext)
            if path.exists():
                sha = prov.get("sha256")
                return StoredImage(
                    path=path,
                    format=_EXT_TO_FORMAT.get(ext, ext.upper()),
                    sha256=str(sha) if sha else None,
                    provenance=prov,
                )
        return None

    def exists(self, asset: AssetLike, partition_key: str) -> bool:
        """True when an image is stored for the partition."""
        return self.find(asset, partition_key) is not None

    def read_bytes(self, asset: AssetLike, partition_key: str, ext: str | None = None) -> bytes:
        """The image's bytes; raises ``FileNotFoundError`` when there is none."""
        if ext is not None:
            data = self.read_bytes_or_none(self.image_path(asset, partition_key, ext))
        else:
            found = self.find(asset, partition_key)
            data = self.read_bytes_or_none(found.path) if found else None
        if data is None:
            raise FileNotFoundError(
                f"no image for asset {'/'.join(asset_parts(asset))!r} partition {partition_key!r} "
                f"under {self._root_str}"
            )
        return data

    def open_image(self, asset: AssetLike, partition_key: str) -> Image.Image:
        """The image, decoded and loaded (the file is not kept open)."""
        image = Image.open(io.BytesIO(self.read_bytes(asset, partition_key)))
        image.load()
        return image

    def partitions(self, asset: AssetLike) -> list[str]:
        """Partition keys that have a provenance record (of their candidate 0), sorted."""
        folder = self.asset_dir(asset)
        keys = []
        for p in self.list_files(folder, ".json"):
            if str(p.parent).rstrip("/") == str(folder).rstrip("/"):
                _, key, candidate = self._locate(str(p))
                if candidate == 0:
                    keys.append(key)
        return sorted(keys)

    def candidates(
        self, asset: AssetLike, partition_key: str, variants: int = 8
    ) -> list[tuple[int, StoredImage]]:
        """``(index, image)`` of each stored candidate of a partition among the first
        ``variants``, by index (candidate 0 is the partition's own image).

        >>> store = ImageStore("memory://doctest-candidates")
        >>> _ = store.save("hero", "fox", b"a", "png", {"seed": 7})
        >>> _ = store.save("hero", candidate_key("fox", 2), b"c", "png", {"seed": 9})
        >>> [(i, found.path.name, found.provenance["seed"]) for i, found in
        ...  store.candidates("hero", "fox")]
        [(0, 'fox.png', 7), (2, 'fox~2.png', 9)]
        """
        found: list[tuple[int, StoredImage]] = []
        for index in range(variants):
            image = self.find(asset, candidate_key(partition_key, index))
            if image is not None:
                found.append((index, image))
        return found

    def records(
        self,
        asset: AssetLike | None = None,
        *,
        cache: ScanCache | None = None,
        candidates: bool = False,
    ) -> list[StoredRecord]:
        """Every provenance record of one asset (not those of assets nested under its key), or
        of every asset, in path order. Read-only. One record per partition (its candidate 0),
        unless ``candidates``: then the records of candidates ``i >= 1`` too, each with its
        partition key and :attr:`StoredRecord.candidate`.

        A file that is not a JSON object is left out (logged at debug level), and so are hidden
        files (writes in flight) and moved-aside files (``.json.unreadable-...``). With a
        :class:`~zimage_dagster.engine.scan.ScanCache` kept between calls, a local store reads
        only the records that changed since (a store of 10,000 images is listed in a fraction of
        a second); an object store is read whole, in one listing and one concurrent read.

        >>> store = ImageStore("memory://doctest-records")
        >>> _ = store.save(["catalog", "hero"], "2026-01-01|fox", b"img", "png", {"seed": 7})
        >>> [(r.asset, r.partition_key, r.provenance["seed"]) for r in store.records()]
        [(('catalog', 'hero'), '2026-01-01|fox', 7)]
        >>> _ = store.save(["catalog", "hero"], "2026-01-01|fox...1", b"img", "png", {"seed": 8})
        >>> [(r.partition_key, r.candidate) for r in store.records(candidates=True)]
        [('2026-01-01|fox', 0), ('2026-01-01|fox', 1)]
        >>> len(store.records())
        1
        """
        scan = cache if cache is not None else ScanCache()
        parts = asset_parts(asset) if asset is not None else None
        if parts is not None:
            folders = [self.asset_dir(parts)]
        else:
            folders = [f for f in self.subfolders(self._root) if f.name not in RESERVED_DIRS]
        found: list[StoredRecord] = []
        for folder in folders:
            read = scan.read(self, folder, ".json", self._stored_record, kind="provenance records")
            found.extend(
                r
                for r in read.values()
                if r and (parts is None or r.asset == parts) and (candidates or not r.candidate)
            )
        return found

    def subfolders(self, folder: UPath) -> list[UPath]:
        """The folders directly under ``folder`` (hidden ones skipped), by name; none if missing."""
        try:
            children = [c for c in folder.iterdir() if c.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted((c for c in children if not c.name.startswith(".")), key=lambda c: c.name)

    def _locate(self, path: str) -> tuple[tuple[str, ...], str, int]:
        """The asset parts, partition key and candidate index of a file in an asset's folder,
        from its path (``<root>/<asset...>/<storage key>[~<i>].<ext>``): the one reader of the
        store's file names. A new layout (shards) is taught here, and only here."""
        relative = path.replace("\\", "/")[len(self._root_str) + 1 :]
        *parts, name = relative.split("/")
        key, candidate = split_candidate(decode_key(name.rsplit(".", 1)[0]))
        return tuple(parts), key, candidate

    def _stored_record(self, path: str, raw: bytes) -> StoredRecord | None:
        try:
            provenance = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            log.debug("skipping %s: %s", path, exc)
            return None
        if not isinstance(provenance, dict):
            log.debug("skipping %s: not a JSON object", path)
            return None
        asset, key, candidate = self._locate(path)
        return StoredRecord(asset, key, provenance, path, candidate)

    def delete(self, asset: AssetLike, partition_key: str) -> None:
        """Remove the partition's provenance, then its image files."""
        self.delete_file(self.provenance_path(asset, partition_key))
        for ext in IMAGE_EXTENSIONS:
            self.delete_file(self.image_path(asset, partition_key, ext))

    def iter_images(self, asset: AssetLike) -> Iterator[tuple[str, StoredImage]]:
        """``(partition_key, StoredImage)`` for each stored partition."""
        for key in self.partitions(asset):
            found = self.find(asset, key)
            if found is not None:
                yield key, found


def _child(folder: UPath, inner: str) -> UPath:
    """A UPath for ``inner`` (an fs-internal path found under ``folder``) on folder's filesystem."""
    base = folder.path.rstrip("/")
    rel = inner[len(base) :].lstrip("/") if inner.startswith(base) else inner
    return folder.joinpath(*rel.split("/")) if rel else folder
