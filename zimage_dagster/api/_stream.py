"""The byte cap and deadline of a streamed download, counted by the driver as chunks come."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from zimage_dagster.api.errors import DownloadError, DownloadTimeoutError, ImageTooLargeError


@dataclass
class StreamGuard:
    """Byte cap and total deadline of a streamed download: the declared length first, then
    every chunk, counted after decoding its content encoding (a gzip bomb is cut within a
    chunk of the cap, never inflated whole), and the clock after every chunk.

    Drivers call :meth:`check_headers`, then :meth:`feed` with every raw chunk (it returns the
    decoded bytes), then :meth:`finish`.
    """

    max_bytes: int
    url: str
    task_id: str | None = None
    deadline_at: float | None = None
    clock: Callable[[], float] = time.monotonic
    seen: int = 0
    _inflater: Any = None

    def remaining_s(self) -> float | None:
        return None if self.deadline_at is None else self.deadline_at - self.clock()

    def deadline_error(self) -> DownloadTimeoutError:
        return DownloadTimeoutError(
            "download did not finish within its deadline", url=self.url, task_id=self.task_id
        )

    def check_headers(self, headers: httpx.Headers) -> None:
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLargeError(
                f"Content-Length {int(declared)} exceeds the {self.max_bytes}-byte download limit",
                url=self.url,
                task_id=self.task_id,
            )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflater = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise DownloadError(
                f"unsupported Content-Encoding {encoding[:40]!r}",
                url=self.url,
                task_id=self.task_id,
            )

    def _count(self, data: bytes) -> bytes:
        self.seen += len(data)
        if self.seen > self.max_bytes:
            raise ImageTooLargeError(
                f"download exceeded the {self.max_bytes}-byte limit while streaming",
                url=self.url,
                task_id=self.task_id,
            )
        return data

    def feed(self, chunk: bytes) -> bytes:
        """Count a raw chunk (decoded, at most one byte past the cap); check the deadline."""
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            raise self.deadline_error()
        if self._inflater is None:
            return self._count(chunk)
        try:
            return self._count(self._inflater.decompress(chunk, self.max_bytes - self.seen + 1))
        except zlib.error as exc:
            raise DownloadError(
                f"bad compressed body: {exc}", url=self.url, task_id=self.task_id
            ) from None

    def feed_whole(self, content: bytes) -> bytes:
        """Count a body the transport already held whole and decoded (an in-memory response)."""
        self._inflater = None
        return self.feed(content)

    def finish(self) -> bytes:
        """The decoder's last bytes (counted)."""
        if self._inflater is None:
            return b""
        try:
            return self._count(self._inflater.flush())
        except zlib.error as exc:
            raise DownloadError(
                f"bad compressed body: {exc}", url=self.url, task_id=self.task_id
            ) from None
