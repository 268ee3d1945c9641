"""The gallery's addresses: one home for every URL the gallery serves and Dagster links to.

No Dagster or Starlette import: the Dagster side (URL metadata, asset descriptions) and the gallery's
routes both build their links here.

Asset folders are joined with ``/`` (``catalog/hero``); a partition key (``2026-11-01|fox``) is
one percent-encoded path segment. ``/-/`` separates an asset from what is asked of it: Dagster asset
names are ``[A-Za-z0-9_]`` words, so ``-`` alone is never one of an asset's folders.

>>> grid_url("http://127.0.0.1:8080/", ["catalog", "hero"])
'http://127.0.0.1:8080/assets/catalog/hero/'
>>> partition_url("http://127.0.0.1:8080", "hero", "2026-11-01|a fox?")
'http://127.0.0.1:8080/assets/hero/-/partition/2026-11-01%7Ca%20fox%3F'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import quote, urlencode

__all__ = [
    "GALLERY_URL_ENV",
    "SIGN_IN_PATH",
    "SIGN_OUT_PATH",
    "asset_path",
    "download_url",
    "export_url",
    "gallery_base_url",
    "grid_url",
    "image_url",
    "materialization_url",
    "partition_url",
    "thumbnail_url",
    "verdict_url",
]

#: The environment variable naming the gallery's base URL for the Dagster side.
GALLERY_URL_ENV = "ZIMAGE_GALLERY_URL"
#: Where a reviewer pastes the review token (``--review``), and where the session ends.
SIGN_IN_PATH = "/-/review/sign-in"
SIGN_OUT_PATH = "/-/review/sign-out"


def gallery_base_url(configured: str | None = None) -> str | None:
    """``configured`` if given, else ``$ZIMAGE_GALLERY_URL``, else ``None``; no trailing slash.

    >>> gallery_base_url("http://127.0.0.1:8080/")
    'http://127.0.0.1:8080'
    """
    value = configured if configured else os.environ.get(GALLERY_URL_ENV, "")
    value = value.strip().rstrip("/")
    if not value:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"gallery URL must start with http:// or https://, got {value!r}")
    return value


def asset_path(asset: str | Sequence[str]) -> str:
    """``/assets/<folder>/<folder>/``: an asset's grid, relative to the gallery's root.

    >>> asset_path("catalog/hero")
    '/assets/catalog/hero/'
    """
    parts = asset.split("/") if isinstance(asset, str) else list(asset)
    return "/assets/" + "/".join(quote(p, safe="") for p in parts) + "/"


def _under(base: str, path: str) -> str:
    return base.rstrip("/") + path


def grid_url(base: str, asset: str | Sequence[str]) -> str:
    """The asset's grid of images."""
    return _under(base, asset_path(asset))


def _item(base: str, asset: str | Sequence[str], what: str, partition_key: str) -> str:
    return _under(base, f"{asset_path(asset)}-/{what}/{quote(partition_key, safe='')}")


def partition_url(base: str, asset: str | Sequence[str], partition_key: str) -> str:
    """A partition's page: the image and its details, or the provider's message if it failed."""
    return _item(base, asset, "partition", partition_key)


def materialization_url(
    base: str, asset: str | Sequence[str], partition_key: str, task_id: str
) -> str:
    """A materialization's link: the partition's page, naming the task that made the image (the
    page says so if the partition's image has since been made by another task).

    >>> materialization_url("http://g", ["catalog", "hero"], "fox", "task-unified-1-abcd1234")
    'http://g/assets/catalog/hero/-/partition/fox?task=task-unified-1-abcd1234'
    """
    return partition_url(base, asset, partition_key) + "?" + urlencode({"task": task_id})


def image_url(base: str, asset: str | Sequence[str], partition_key: str) -> str:
    """The stored image file itself."""
    return _item(base, asset, "image", partition_key)


def thumbnail_url(base: str, asset: str | Sequence[str], partition_key: str) -> str:
    """The partition's cached thumbnail (a JPEG)."""
    return _item(base, asset, "thumbnail", partition_key)


def download_url(base: str, asset: str | Sequence[str], partition_key: str) -> str:
    """The stored image file, as a download (``Content-Disposition: attachment``)."""
    return image_url(base, asset, partition_key) + "?download=1"


def verdict_url(base: str, asset: str | Sequence[str], partition_key: str) -> str:
    """Where a review page POSTs a verdict (``--review`` only).

    >>> verdict_url("", "hero", "2026-11-01|fox")
    '/assets/hero/-/verdict/2026-11-01%7Cfox'
    """
    return _item(base, asset, "verdict", partition_key)


def export_url(base: str, asset: str | Sequence[str]) -> str:
    """The asset's picks as a zip with a manifest.

    >>> export_url("http://g", ["catalog", "hero"])
    'http://g/assets/catalog/hero/-/export/picks.zip'
    """
    return _under(base, f"{asset_path(asset)}-/export/picks.zip")
