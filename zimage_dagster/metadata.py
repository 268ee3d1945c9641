"""What is recorded per materialized image partition: Dagster metadata, provenance, thumbnail.

:class:`ImageRecord` holds the facts of one generated (or reused) image. It becomes

* Dagster metadata with :func:`image_metadata` (numbers as numeric values so the UI can plot them,
  the path as a path, the prompt as text, a small thumbnail as a markdown data URI), and
* the provenance record stored beside the image with :func:`to_provenance` /
  :func:`from_provenance` (plain JSON, no secrets: the record has no field for one).

Example:
    >>> rec = ImageRecord(seed=42, task_id="task-unified-1700000000-abcd1234", prompt="a red fox",
    ...                   size_requested="1:1", width=1024, height=1024, format="PNG",
    ...                   path="/tmp/out/hero/fox.png", sha256="ab" * 32, bytes=1234)
    >>> from_provenance(to_provenance(rec)) == rec
    True
    >>> image_metadata(rec)["seed"].value
    42
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from PIL import Image, ImageOps

__all__ = [
    "PROVENANCE_VERSION",
    "ImageRecord",
    "from_provenance",
    "image_metadata",
    "make_thumbnail",
    "thumbnail_markdown",
    "to_provenance",
]

#: Version of the provenance JSON layout (``"provenance_version"`` in the record).
PROVENANCE_VERSION = 1

# Decompression-bomb guard for thumbnails: refuse images over this many pixels.
_MAX_THUMB_SOURCE_PIXELS = 64_000_000


def make_thumbnail(
    image_bytes: bytes,
    max_side: int = 160,
    *,
    max_uri_chars: int = 6000,
    format: str = "JPEG",
) -> str:
    """A small ``data:image/jpeg;base64,...`` (or webp) URI of the image, a few KB at most.

    The image is scaled to fit ``max_side`` (aspect kept), flattened onto white if it has alpha,
    and encoded at decreasing quality (then decreasing size) until the URI fits ``max_uri_chars``.

    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (1024, 768), "teal").save(buf, "PNG")
    >>> uri = make_thumbnail(buf.getvalue())
    >>> uri.startswith("data:image/jpeg;base64,") and len(uri) < 8000
    True
    """
    fmt = format.upper()
    if fmt not in ("JPEG", "WEBP"):
        raise ValueError("thumbnail format must be JPEG or WEBP")
    with Image.open(io.BytesIO(image_bytes)) as src:
        if src.width * src.height > _MAX_THUMB_SOURCE_PIXELS:
            raise ValueError(f"image too large for a thumbnail: {src.width}x{src.height}")
        src.draft("RGB", (max_side, max_side))  # fast JPEG downscale on decode
        img = ImageOps.exif_transpose(src)
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        else:
            img = img.convert("RGB")
    side = max_side
    mime = "image/jpeg" if fmt == "JPEG" else "image/webp"
    uri = ""
    while side >= 16:
        thumb = img.copy()
        thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
        for quality in (80, 65, 50, 35, 20):
            buf = io.BytesIO()
            thumb.save(buf, fmt, quality=quality, optimize=fmt == "JPEG")
            uri = f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            if len(uri) <= max_uri_chars:
                return uri
        side = int(side * 0.75)
    return uri


def thumbnail_markdown(data_uri: str, alt: str = "thumbnail") -> str:
    """Markdown showing the thumbnail; Dagster's UI renders it as an image.

    >>> thumbnail_markdown("data:image/jpeg;base64,AAAA", "a [red] fox")
    '![a red fox](data:image/jpeg;base64,AAAA)'
    """
    clean = " ".join(alt.replace("[", "").replace("]", "").split())[:100]
    return f"![{clean}]({data_uri})"


@dataclass(frozen=True)
class ImageRecord:
    """Everything recorded for one materialized image partition.

    Times are seconds (``None`` when unknown, e.g. for a reused image). ``reused`` means the image
    came from storage or from a live task found in the ledger rather than from a new task;
    ``regenerated`` means an expired result was generated again with the same seed.
    ``extra`` holds the dataset's extra columns (e.g. ``category``).

    >>> ImageRecord(seed=1, task_id="t", prompt="p").model
    'z-image-turbo'
    """

    seed: int
    task_id: str
    prompt: str
    model: str = "z-image-turbo"
    size_requested: str = "1:1"
    nsfw_check: bool = False
    width: int | None = None
    height: int | None = None
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    credits_reserved: float | None = None
    queued_s: float | None = None
    generating_s: float | None = None
    downloading_s: float | None = None
    polls: int = 0
    attempts: int = 1
    reused: bool = False
    regenerated: bool = False
    asset: str | None = None
    partition_key: str | None = None
    fingerprint: str | None = None
    previous_task_ids: tuple[str, ...] = ()
    created_at: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(ImageRecord))


def _number(value: float | int) -> dg.MetadataValue:
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    return dg.MetadataValue.float(float(value))


def _extra_value(value: Any) -> dg.MetadataValue:
    if value is None:
        return dg.MetadataValue.null()
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value) if math.isfinite(value) else dg.MetadataValue.null()
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    try:
        return dg.MetadataValue.json(json.loads(json.dumps(value)))
    except (TypeError, ValueError):
        return dg.MetadataValue.text(str(value))


def image_metadata(
    record: ImageRecord, thumbnail: str | None = None
) -> dict[str, dg.MetadataValue]:
    """Dagster metadata for one materialized partition.

    Numbers are ``int``/``float`` metadata (plottable), ``path`` is ``MetadataValue.path``,
    ``prompt`` is text and ``thumbnail`` (when given: a data URI from :func:`make_thumbnail`) is
    ``MetadataValue.md``. Unknown values (``None``) are left out. Extra dataset columns appear
    under their own name, or ``extra_<name>`` when the name is one of the record's fields.

    >>> md = image_metadata(ImageRecord(seed=7, task_id="t", prompt="p", width=512),
    ...                     "data:image/jpeg;base64,AA")
    >>> sorted(k for k in md if k in ("seed", "width", "thumbnail"))
    ['seed', 'thumbnail', 'width']
    """
    md: dict[str, dg.MetadataValue] = {
        "seed": dg.MetadataValue.int(record.seed),
        "task_id": dg.MetadataValue.text(record.task_id),
        "model": dg.MetadataValue.text(record.model),
        "prompt": dg.MetadataValue.text(record.prompt),
        "size_requested": dg.MetadataValue.text(record.size_requested),
        "nsfw_check": dg.MetadataValue.bool(record.nsfw_check),
        "polls": dg.MetadataValue.int(record.polls),
        "attempts": dg.MetadataValue.int(record.attempts),
        "reused": dg.MetadataValue.bool(record.reused),
        "regenerated": dg.MetadataValue.bool(record.regenerated),
    }
    for name in (
        "width",
        "height",
        "bytes",
        "credits_reserved",
        "queued_s",
        "generating_s",
        "downloading_s",
    ):
        value = getattr(record, name)
        if value is not None:
            md[name] = _number(value)
    if record.path is not None:
        md["path"] = dg.MetadataValue.path(record.path)
    for name in ("sha256", "format", "partition_key", "fingerprint"):
        value = getattr(record, name)
        if value is not None:
            md[name] = dg.MetadataValue.text(str(value))
    if record.previous_task_ids:
        md["previous_task_ids"] = dg.MetadataValue.json(list(record.previous_task_ids))
    if thumbnail is not None:
        md["thumbnail"] = dg.MetadataValue.md(thumbnail_markdown(thumbnail, record.prompt))
    for name, value in record.extra.items():
        key = f"extra_{name}" if name in _FIELD_NAMES or name in md else str(name)
        md[key] = _extra_value(value)
    return md


def to_provenance(record: ImageRecord) -> dict[str, Any]:
    """The JSON-ready provenance record stored beside the image (see ``ImageStore.save``).

    >>> to_provenance(ImageRecord(seed=3, task_id="t", prompt="p"))["seed"]
    3
    """
    out: dict[str, Any] = {"provenance_version": PROVENANCE_VERSION}
    for name in _FIELD_NAMES:
        value = getattr(record, name)
        if name == "previous_task_ids":
            value = list(value)
        elif name == "extra":
            value = json.loads(json.dumps(dict(value), default=str))
        out[name] = value
    return out


def from_provenance(data: Mapping[str, Any]) -> ImageRecord:
    """Rebuild an :class:`ImageRecord` from a provenance record; unknown keys are ignored.

    Raises ``ValueError`` when a required field (seed, task_id, prompt) is missing.

    >>> from_provenance({"seed": 3, "task_id": "t", "prompt": "p", "future_field": 1}).seed
    3
    """
    missing = [n for n in ("seed", "task_id", "prompt") if n not in data]
    if missing:
        raise ValueError(f"provenance record lacks {', '.join(missing)}")
    kwargs: dict[str, Any] = {n: data[n] for n in _FIELD_NAMES if n in data}
    if "previous_task_ids" in kwargs:
        kwargs["previous_task_ids"] = tuple(kwargs["previous_task_ids"] or ())
    if "extra" in kwargs:
        kwargs["extra"] = dict(kwargs["extra"] or {})
    return ImageRecord(**kwargs)
