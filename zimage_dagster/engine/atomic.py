"""Conditional writes on the store's own filesystem: create-if-absent and compare-and-set.

Two processes acting on the same partition at once (a double click on Materialize, a schedule tick
during a backfill, two pods, the callback receiver beside a collect run) must not both win. The
only safe arbiter is the storage itself, so every backend answers with its own atomic primitive:

============  ==========================================  =======================================
backend       create if absent (:meth:`create`)           compare-and-set (:meth:`replace`,
                                                          :meth:`delete`)
============  ==========================================  =======================================
local folder  temp file + ``os.link`` (fails with         ``flock`` on the folder, compare the
              ``EEXIST``; the file appears whole)         content digest, ``os.replace``
``s3://``     ``PutObject`` with ``If-None-Match: *``     ``PutObject``/``DeleteObject`` with
                                                          ``If-Match: <etag>``
``gs://``     upload with ``ifGenerationMatch=0``         ``ifGenerationMatch=<generation>``
``memory://`` a process-wide lock (one process only)      the same lock
============  ==========================================  =======================================

Any other fsspec backend is refused with :class:`AtomicWritesUnsupportedError`: fsspec's generic
``pipe_file(mode="create")`` checks for the file and then writes it, which two writers can both
pass, and pretending otherwise would let both pay. An S3-compatible server that ignores
``If-None-Match`` (older MinIO or Ceph releases) is caught by a probe on first use (a second
create of the same probe object must fail) and refused the same way.

A version is an opaque string: the content's digest locally and in memory, the ETag on S3, the
generation on GCS. Writers that saw version ``v`` pass it back; if the file moved on meanwhile,
:class:`PreconditionFailedError` tells them to read again. Retried requests can make a write that
succeeded look like a failed precondition: callers re-read and find their own content (claims
carry a unique token for that reason).

New files honour the process umask (mode ``0o666 & ~umask``, not ``mkstemp``'s 0600), and temp
files are named ``.<name>.<random>.tmp`` (hidden from scans); :func:`remove_stale_temp_files`
removes those a killed writer left behind.

Example:
    >>> import tempfile
    >>> from upath import UPath
    >>> root = UPath(tempfile.mkdtemp())
    >>> files = conditional_files(root)
    >>> v1 = files.create(root / "a.json", b'{"n": 1}')
    >>> files.create(root / "a.json", b'{"n": 2}')
    Traceback (most recent call last):
    ...
    FileExistsError: ...
    >>> v2 = files.replace(root / "a.json", b'{"n": 2}', v1)
    >>> files.replace(root / "a.json", b'{"n": 3}', v1)
    Traceback (most recent call last):
    ...
    zimage_dagster.engine.atomic.PreconditionFailedError: ...
    >>> files.read(root / "a.json").data
    b'{"n": 2}'
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from upath import UPath
from upath.implementations.local import LocalPath

__all__ = [
    "AtomicWritesUnsupportedError",
    "ConditionalFiles",
    "PreconditionFailedError",
    "Versioned",
    "conditional_files",
    "remove_stale_temp_files",
    "replace_file",
    "write_temp_file",
]

#: Temp files older than this are left over by a killed writer (a live write takes milliseconds).
STALE_TEMP_AGE_S = 3600.0
_TEMP_SUFFIX = ".tmp"


class PreconditionFailedError(Exception):
    """The file is not in the version the caller read: it changed, appeared or vanished."""


class AtomicWritesUnsupportedError(RuntimeError):
    """The storage offers no atomic create-if-absent / compare-and-set we can rely on."""


@dataclass(frozen=True)
class Versioned:
    """A file's bytes and the version token to pass back to :meth:`ConditionalFiles.replace`."""

    data: bytes
    version: str


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def write_temp_file(folder: str, name: str, data: bytes, *, fsync: bool = True) -> str:
    """Write ``data`` to a new hidden temp file in ``folder`` (created if needed); its path.

    The file is created with mode ``0o666`` less the process umask, like any file the user's
    tools make (``tempfile.mkstemp`` would force 0600).

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> tmp = write_temp_file(folder, "x.json", b"{}")
    >>> os.path.basename(tmp).startswith(".x.json.") and open(tmp, "rb").read()
    b'{}'
    """
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}{_TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def replace_file(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Atomically (over)write a local file: temp file beside it, then ``os.replace``; readers
    see the old content or the new, never a part.

    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> replace_file(target, b"{}")
    >>> open(target, "rb").read()
    b'{}'
    """
    folder, name = os.path.split(path)
    tmp = write_temp_file(folder, name, data, fsync=fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(folder: str, *, older_than_s: float = STALE_TEMP_AGE_S) -> list[str]:
    """Delete the hidden ``.*.tmp`` files under a local ``folder`` older than ``older_than_s``.

    They are what a writer killed between its temp write and its rename leaves behind. Returns the
    paths removed; a missing folder gives ``[]``.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> tmp = write_temp_file(folder, "x.json", b"{}")
    >>> remove_stale_temp_files(folder) == []  # fresh: maybe a live write
    True
    >>> remove_stale_temp_files(folder, older_than_s=0) == [tmp]
    True
    """
    cutoff = time.time() - older_than_s
    removed: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
                continue
            full = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(full).st_mtime <= cutoff:
                    os.unlink(full)
                    removed.append(full)
    return removed


class ConditionalFiles(abc.ABC):
    """Atomic create-if-absent and compare-and-set on one kind of storage.

    Get one with :func:`conditional_files`. Paths are ``UPath`` objects on that storage.
    """

    #: What the storage is, for messages (``"local"``, ``"s3"``...).
    kind: str = ""

    @abc.abstractmethod
    def read(self, path: UPath) -> Versioned | None:
        """The file's bytes and version, or ``None`` when there is no file."""

    @abc.abstractmethod
    def create(self, path: UPath, data: bytes) -> str:
        """Write ``data`` only if ``path`` does not exist; its new version.

        Raises ``FileExistsError`` when it does (whoever made it first wins).
        """

    @abc.abstractmethod
    def replace(self, path: UPath, data: bytes, version: str) -> str:
        """Overwrite ``path`` only if it is still at ``version``; the new version.

        Raises :class:`PreconditionFailedError` when it moved on or is gone.
        """

    @abc.abstractmethod
    def delete(self, path: UPath, version: str) -> bool:
        """Delete ``path`` only if it is still at ``version``; ``False`` if it was already gone.

        Raises :class:`PreconditionFailedError` when it moved on.
        """


# -- local folder ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself (no lock file to leave behind)."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class _LocalFiles(ConditionalFiles):
    kind = "local"

    def read(self, path: UPath) -> Versioned | None:
        try:
            with open(path.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return Versioned(data, _digest(data))

    def create(self, path: UPath, data: bytes) -> str:
        folder, name = os.path.split(path.path)
        tmp = write_temp_file(folder, name, data)
        try:
            os.link(tmp, path.path)  # atomic, fails with EEXIST; readers see the whole file
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return _digest(data)

    def replace(self, path: UPath, data: bytes, version: str) -> str:
        folder = os.path.dirname(path.path)
        with _folder_lock(folder):
            current = self.read(path)
            if current is None or current.version != version:
                raise PreconditionFailedError(f"{path} changed since version {version}")
            replace_file(path.path, data)
        return _digest(data)

    def delete(self, path: UPath, version: str) -> bool:
        with _folder_lock(os.path.dirname(path.path)):
            current = self.read(path)
            if current is None:
                return False
            if current.version != version:
                raise PreconditionFailedError(f"{path} changed since version {version}")
            os.unlink(path.path)
        return True


# -- memory:// (one process) ---------------------------------------------------------------------


class _MemoryFiles(ConditionalFiles):
    """``memory://`` lives in one process; a process-wide lock makes each operation atomic."""

    kind = "memory"
    _lock = threading.Lock()

    def read(self, path: UPath) -> Versioned | None:
        try:
            data = bytes(path.fs.cat_file(path.path))
        except FileNotFoundError:
            return None
        return Versioned(data, _digest(data))

    def create(self, path: UPath, data: bytes) -> str:
        with self._lock:
            if path.fs.exists(path.path):
                raise FileExistsError(str(path))
            path.fs.pipe_file(path.path, data)
        return _digest(data)

    def replace(self, path: UPath, data: bytes, version: str) -> str:
        with self._lock:
            current = self.read(path)
            if current is None or current.version != version:
                raise PreconditionFailedError(f"{path} changed since version {version}")
            path.fs.pipe_file(path.path, data)
        return _digest(data)

    def delete(self, path: UPath, version: str) -> bool:
        with self._lock:
            current = self.read(path)
            if current is None:
                return False
            if current.version != version:
                raise PreconditionFailedError(f"{path} changed since version {version}")
            path.fs.rm_file(path.path)
        return True


# -- S3 ------------------------------------------------------------------------------------------

#: S3 error codes of a conditional request that lost: 412, and 409 when two conditional writes
#: of the same key overlap (AWS asks the loser to retry; the retry then meets the winner's object).
_S3_LOST = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def _s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated (it keeps the original as cause)."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            return str(code) if code is not None else None
    return None


class _S3Files(ConditionalFiles):
    """Conditional requests of S3 (``If-None-Match: *``, ``If-Match``) through s3fs's client."""

    kind = "s3"

    def __init__(self, fs: Any) -> None:
        self._fs = fs
        self._verified: set[str] = set()
        self._verify_lock = threading.Lock()

    def _split(self, path: UPath) -> tuple[str, str]:
        bucket, key, _ = self._fs.split_path(path.path)
        return str(bucket), str(key)

    def read(self, path: UPath) -> Versioned | None:
        import fsspec.asyn

        bucket, key = self._split(path)

        async def get() -> Versioned:
            resp = await self._fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                data = await resp["Body"].read()
            finally:
                resp["Body"].close()
            return Versioned(bytes(data), str(resp["ETag"]))

        try:
            result: Versioned = fsspec.asyn.sync(self._fs.loop, get)
        except FileNotFoundError:
            return None
        return result

    def _put(self, path: UPath, data: bytes, **condition: str) -> str:
        bucket, key = self._split(path)
        out = self._fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        self._fs.invalidate_cache(path.path)
        return str(out["ETag"])

    def _verify(self, path: UPath) -> None:
        """Refuse a server that ignores ``If-None-Match`` (probe once per folder's bucket)."""
        bucket, key = self._split(path)
        if bucket in self._verified:
            return
        with self._verify_lock:
            if bucket in self._verified:
                return
            folder = key.rsplit("/", 1)[0] if "/" in key else ""
            probe = UPath(
                f"s3://{bucket}/{folder}/.probe-{uuid.uuid4().hex}.tmp",
                **self._fs.storage_options,
            )
            self._put(probe, b"1", IfNoneMatch="*")
            try:
                self._put(probe, b"2", IfNoneMatch="*")
            except FileExistsError:
                self._verified.add(bucket)
                return
            finally:
                with contextlib.suppress(OSError):
                    self._fs.rm_file(probe.path)
            raise AtomicWritesUnsupportedError(
                f"the S3 server behind bucket {bucket!r} ignores 'If-None-Match: *' (a second "
                "create of the same object succeeded): two runs could both pay for a partition. "
                "Use AWS S3 or an S3-compatible server with conditional writes."
            )

    def create(self, path: UPath, data: bytes) -> str:
        self._verify(path)
        for _ in range(5):
            try:
                return self._put(path, data, IfNoneMatch="*")
            except FileExistsError:
                raise
            except OSError as exc:
                if _s3_error_code(exc) != "ConditionalRequestConflict":
                    raise
        raise FileExistsError(f"{path}: concurrent creates kept conflicting")

    def replace(self, path: UPath, data: bytes, version: str) -> str:
        try:
            return self._put(path, data, IfMatch=version)
        except FileNotFoundError as exc:
            raise PreconditionFailedError(f"{path} is gone (expected version {version})") from exc
        except OSError as exc:
            if _s3_error_code(exc) in _S3_LOST:
                raise PreconditionFailedError(f"{path} changed since version {version}") from exc
            raise

    def delete(self, path: UPath, version: str) -> bool:
        bucket, key = self._split(path)
        try:
            self._fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _s3_error_code(exc) in _S3_LOST:
                raise PreconditionFailedError(f"{path} changed since version {version}") from exc
            raise
        finally:
            self._fs.invalidate_cache(path.path)
        return True


# -- GCS -----------------------------------------------------------------------------------------


class _GCSFiles(ConditionalFiles):
    """Generation preconditions of GCS through gcsfs (``ifGenerationMatch``; 412 is lost).

    gcsfs raises ``FileExistsError`` for every 412. Not exercised by this project's tests: no
    local GCS fake installable from PyPI honours preconditions (gcp-storage-emulator ignores them).
    """

    kind = "gcs"

    def __init__(self, fs: Any) -> None:
        self._fs = fs

    def _split(self, path: UPath) -> tuple[str, str]:
        bucket, key, _ = self._fs.split_path(path.path)
        return str(bucket), str(key)

    def read(self, path: UPath) -> Versioned | None:
        bucket, key = self._split(path)
        try:
            info = self._fs.info(path.path)
            generation = str(info["generation"])
            _headers, data = self._fs.call(
                "GET", "b/{}/o/{}", bucket, key, alt="media", generation=generation
            )
        except FileNotFoundError:
            return None
        return Versioned(bytes(data), generation)

    def create(self, path: UPath, data: bytes) -> str:
        out = self._fs.pipe_file(path.path, data, mode="create")
        return str(out["generation"])

    def replace(self, path: UPath, data: bytes, version: str) -> str:
        from gcsfs.core import quote

        bucket, key = self._split(path)
        try:
            out = self._fs.call(
                "POST",
                f"{self._fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                uploadType="media",
                name=key,
                ifGenerationMatch=version,
                data=data,
                json_out=True,
            )
        except (FileExistsError, FileNotFoundError) as exc:
            raise PreconditionFailedError(f"{path} changed since generation {version}") from exc
        finally:
            self._fs.invalidate_cache(self._fs._parent(path.path))
        return str(out["generation"])

    def delete(self, path: UPath, version: str) -> bool:
        bucket, key = self._split(path)
        try:
            self._fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=version)
        except FileNotFoundError:
            return False
        except FileExistsError as exc:
            raise PreconditionFailedError(f"{path} changed since generation {version}") from exc
        finally:
            self._fs.invalidate_cache(self._fs._parent(path.path))
        return True


def conditional_files(root: UPath) -> ConditionalFiles:
    """The conditional-write backend for the storage ``root`` lives on.

    Raises :class:`AtomicWritesUnsupportedError` for a storage without an atomic create-if-absent
    (see the module doc).

    >>> conditional_files(UPath("memory://x")).kind
    'memory'
    >>> conditional_files(UPath("ftp://host/x"))
    Traceback (most recent call last):
    ...
    zimage_dagster.engine.atomic.AtomicWritesUnsupportedError: ftp:// storage ...
    """
    if isinstance(root, LocalPath):
        return _LocalFiles()
    protocol = root.protocol or ""
    if protocol == "memory":
        return _MemoryFiles()
    if protocol in ("s3", "s3a"):
        return _S3Files(root.fs)
    if protocol in ("gs", "gcs"):
        return _GCSFiles(root.fs)
    raise AtomicWritesUnsupportedError(
        f"{protocol}:// storage offers no atomic create-if-absent through fsspec, so two runs "
        "could both create a task for the same partition. Supported: a local folder, s3://, "
        "gs:// and memory:// (one process)."
    )
