"""Dagster metadata of one materialized image partition, made from its provenance record.

:func:`image_metadata` turns an :class:`~zimage_dagster.engine.provenance.ImageRecord` into
Dagster metadata: numbers as numeric values so the UI can plot them, the path as a path, the
prompt as text, a small thumbnail as a markdown data URI, and (with a gallery) a URL to the image's
page in ``zimage-gallery``.

Example:
    >>> from zimage_dagster.engine.provenance import ImageRecord
    >>> image_metadata(ImageRecord(seed=42, task_id="t", prompt="a red fox"))["seed"].value
    42
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
from PIL import Image

from zimage_dagster.engine.credits import Usage, from_micro, to_micro
from zimage_dagster.engine.provenance import FIELD_NAMES, ImageRecord
from zimage_dagster.engine.thumbnails import make_thumbnail, thumbnail_markdown

if TYPE_CHECKING:
    from zimage_dagster.engine.outcome import ImageSuccess

#: Height of one candidate in the preview strip.
_STRIP_HEIGHT = 160

__all__ = [
    "USAGE_PREFIX",
    "candidate_strip",
    "candidates_metadata",
    "candidates_version",
    "cost_metadata",
    "image_metadata",
    "usage_metadata",
]

#: Namespace of the usage keys, as Dagster's own integrations do (``openai.calls``...).
USAGE_PREFIX = "zimage."


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
    record: ImageRecord, thumbnail: str | None = None, *, gallery_url: str | None = None
) -> dict[str, dg.MetadataValue]:
    """Dagster metadata for one materialized partition.

    Numbers are ``int``/``float`` metadata (plottable), ``path`` is ``MetadataValue.path``,
    ``prompt`` is text and ``thumbnail`` (when given: a data URI from :func:`make_thumbnail`) is
    ``MetadataValue.md``. Unknown values (``None``) are left out. Extra dataset columns appear
    under their own name, or ``extra_<name>`` when the name is one of the record's fields.
    ``gallery_url`` (the image's page in the gallery) becomes the ``gallery`` URL entry, third in
    the table, which the UI shows as a link.

    >>> from zimage_dagster.engine.provenance import ImageRecord
    >>> md = image_metadata(ImageRecord(seed=7, task_id="t", prompt="p", width=512),
    ...                     "data:image/jpeg;base64,AA", gallery_url="http://g/assets/a/-/partition/p")
    >>> sorted(k for k in md if k in ("seed", "width", "thumbnail"))
    ['seed', 'thumbnail', 'width']
    >>> list(md)[:3], md["gallery"].value
    (['seed', 'task_id', 'gallery'], 'http://g/assets/a/-/partition/p')
    """
    md: dict[str, dg.MetadataValue] = {
        "seed": dg.MetadataValue.int(record.seed),
        "task_id": dg.MetadataValue.text(record.task_id),
    }
    if gallery_url is not None:
        md["gallery"] = dg.MetadataValue.url(gallery_url)
    md |= {
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
    md |= cost_metadata(record)
    for name, value in record.extra.items():
        key = f"extra_{name}" if name in FIELD_NAMES or name in md else str(name)
        md[key] = _extra_value(value)
    return md


def cost_metadata(record: ImageRecord) -> dict[str, dg.MetadataValue]:
    """What one partition's image cost, under namespaced keys: the stored image's task
    (``zimage.credits_image``), the earlier tasks of the partition (failed, expired, lost:
    ``zimage.credits_earlier_tasks``), both (``zimage.credits_total``) and the tasks made
    (``zimage.tasks``). A reused image shows what it cost when it was made.

    >>> md = cost_metadata(ImageRecord(seed=1, task_id="t", prompt="p", credits_reserved=0.026,
    ...                    credits_earlier_tasks=0.052, previous_task_ids=("a", "b")))
    >>> md["zimage.credits_total"].value, md["zimage.tasks"].value
    (0.078, 3)
    """
    image = to_micro(record.credits_reserved or 0.0)
    earlier = to_micro(record.credits_earlier_tasks or 0.0)
    return {
        f"{USAGE_PREFIX}credits_image": dg.MetadataValue.float(from_micro(image)),
        f"{USAGE_PREFIX}credits_earlier_tasks": dg.MetadataValue.float(from_micro(earlier)),
        f"{USAGE_PREFIX}credits_total": dg.MetadataValue.float(from_micro(image + earlier)),
        f"{USAGE_PREFIX}tasks": dg.MetadataValue.int(len(record.previous_task_ids) + 1),
    }


def usage_metadata(usage: Usage) -> dict[str, dg.MetadataValue]:
    """A step's (or a user's asset's) spend, under namespaced keys.

    >>> u = Usage(); u.created(0.026); u.created(0.026); u.failed(0.026)
    >>> {k: v.value for k, v in usage_metadata(u).items()}  # doctest: +NORMALIZE_WHITESPACE
    {'zimage.tasks_created': 2, 'zimage.credits_reserved': 0.052, 'zimage.tasks_failed': 1,
     'zimage.credits_failed': 0.026}
    """
    return {
        f"{USAGE_PREFIX}tasks_created": dg.MetadataValue.int(usage.tasks_created),
        f"{USAGE_PREFIX}credits_reserved": dg.MetadataValue.float(usage.credits_reserved),
        f"{USAGE_PREFIX}tasks_failed": dg.MetadataValue.int(usage.tasks_failed),
        f"{USAGE_PREFIX}credits_failed": dg.MetadataValue.float(usage.credits_failed),
    }


def candidate_strip(thumbnails: Sequence[str | None], height: int = _STRIP_HEIGHT) -> str | None:
    """One JPEG data URI laying the candidates' thumbnails (data URIs from
    :func:`~zimage_dagster.engine.thumbnails.make_thumbnail`) side by side, in order, each
    ``height`` px high; ``None`` when none of them decodes.

    >>> from PIL import Image
    >>> thumbs = []
    >>> for colour in ("red", "blue", "green"):
    ...     buf = io.BytesIO(); Image.new("RGB", (64, 64), colour).save(buf, "PNG")
    ...     thumbs.append(make_thumbnail(buf.getvalue()))
    >>> strip = candidate_strip(thumbs)
    >>> with Image.open(io.BytesIO(base64.b64decode(strip.split(",", 1)[1]))) as img:
    ...     img.width > 2 * img.height
    True
    """
    tiles: list[Image.Image] = []
    for uri in thumbnails:
        if not uri or "," not in uri:
            continue
        try:
            with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
                tile = img.convert("RGB")
        except (OSError, ValueError, binascii.Error):
            continue
        width = max(1, round(tile.width * height / max(1, tile.height)))
        tiles.append(tile.resize((width, height)))
    if not tiles:
        return None
    gap = 4
    strip = Image.new(
        "RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), height), "white"
    )
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    return make_thumbnail(strip, max(strip.size), max_uri_chars=24000)


def candidates_version(group: Sequence[ImageSuccess]) -> str:
    """The data version of a partition of candidates: 16 hex of the sha256 of their request
    fingerprints, in order (a candidate's changed request changes it).

    >>> from zimage_dagster.engine.jobs import ImageJob
    >>> from zimage_dagster.engine.outcome import ImageSuccess
    >>> from zimage_dagster.prompts import PromptRow
    >>> row = PromptRow("fox", "a fox", None, 7, None)
    >>> one = ImageSuccess(ImageJob("fox", row, 7), ImageRecord(seed=7, task_id="t", prompt="p"), None)
    >>> len(candidates_version([one]))
    16
    """
    text = ",".join(s.job.fingerprint for s in group)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def candidates_metadata(
    group: Sequence[ImageSuccess], current: ImageSuccess, *, gallery_url: str | None = None
) -> dict[str, dg.MetadataValue]:
    """Dagster metadata of a partition of N candidates: ``preview`` first (every candidate in
    one strip, :func:`candidate_strip`), then :func:`image_metadata` of the ``current`` one
    (the pick, else the first: the same keys as a partition of one image), ``candidate`` (its
    index), ``candidates`` (each one's index, seed, task ID, credits, sha256, path) and
    ``zimage.credits_candidates`` (what all of them reserved, their earlier tasks included).

    >>> from zimage_dagster.engine.jobs import ImageJob
    >>> from zimage_dagster.engine.outcome import ImageSuccess
    >>> from zimage_dagster.prompts import PromptRow
    >>> row = PromptRow("fox", "a fox", None, 7, None)
    >>> group = [ImageSuccess(ImageJob(k, row, seed), ImageRecord(seed=seed, task_id=f"t{seed}",
    ...          prompt="a fox", credits_reserved=0.026), None)
    ...          for k, seed in (("fox", 7), ("fox...1", 8))]
    >>> md = candidates_metadata(group, group[1])
    >>> md["seed"].value, md["candidate"].value, [c["seed"] for c in md["candidates"].value]
    (8, 1, [7, 8])
    >>> md["zimage.credits_candidates"].value
    0.052
    """
    md: dict[str, dg.MetadataValue] = {}
    strip = candidate_strip([s.thumbnail for s in group])
    if strip is not None:
        md["preview"] = dg.MetadataValue.md(
            thumbnail_markdown(strip, f"{len(group)} candidates: {current.record.prompt}")
        )
    md |= image_metadata(current.record, current.thumbnail, gallery_url=gallery_url)
    md["candidate"] = dg.MetadataValue.int(current.job.candidate)
    md["candidates"] = dg.MetadataValue.json(
        [
            {
                "candidate": s.job.candidate,
                "seed": s.record.seed,
                "task_id": s.record.task_id,
                "credits_reserved": s.record.credits_reserved,
                "sha256": s.record.sha256,
                "path": s.record.path,
                "reused": s.record.reused,
            }
            for s in group
        ]
    )
    total = sum(
        to_micro(s.record.credits_reserved or 0) + to_micro(s.record.credits_earlier_tasks or 0)
        for s in group
    )
    md[f"{USAGE_PREFIX}credits_candidates"] = _number(from_micro(total))
    return md
