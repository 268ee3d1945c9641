"""A contact sheet: every stored image of a partitioned image asset on one PNG, with captions.

:func:`render_contact_sheet` draws the grid (pure Pillow); :func:`build_contact_sheet_asset`
makes the downstream, non-partitioned asset that loads every stored partition of an image asset
through :class:`~zimage_dagster.ImageStoreIOManager` and writes the sheet into the image store;
:func:`build_contact_sheet_op` does the same inside an op-based job, from the records returned
by the generate op.

Because the image asset yields no output (one ``AssetMaterialization`` per partition), Dagster
skips downstream assets in the same run: materialize the contact sheet in its own run.

>>> import io
>>> from PIL import Image
>>> buf = io.BytesIO(); Image.new("RGB", (300, 200), "teal").save(buf, "PNG")
>>> sheet = render_contact_sheet([Tile(buf.getvalue(), ("fox", "seed 7"))], columns=4)
>>> sheet.size
(228, 262)
"""

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from PIL import Image, ImageDraw, ImageFont, ImageOps

from zimage_dagster.engine.store import ImageStore
from zimage_dagster.engine.thumbnails import make_thumbnail, thumbnail_markdown

__all__ = [
    "Tile",
    "build_contact_sheet_asset",
    "build_contact_sheet_op",
    "redraw_after_new_images",
    "render_contact_sheet",
    "write_contact_sheet",
]

_MAX_TILE_SOURCE_PIXELS = 64_000_000
_BACKGROUND = (246, 246, 244)
_TEXT = (40, 40, 40)
_MUTED = (110, 110, 110)


@dataclass(frozen=True)
class Tile:
    """One image of the sheet and its caption lines (the first is drawn darker)."""

    image: bytes
    caption: tuple[str, ...] = ()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_contact_sheet(
    tiles: Sequence[Tile],
    *,
    columns: int = 4,
    tile_size: int = 200,
    padding: int = 14,
    font_size: int = 11,
) -> Image.Image:
    """The grid: each image fitted in a ``tile_size`` square (aspect kept), captions below.

    An image that does not decode becomes a grey tile saying so, rather than failing the sheet.
    """
    if columns < 1:
        raise ValueError("columns must be >= 1")
    font = _font(font_size)
    line_height = font_size + 4
    lines = max((len(t.caption) for t in tiles), default=0)
    caption_height = lines * line_height + (4 if lines else 0)
    cols = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    cell_w, cell_h = tile_size + padding, tile_size + caption_height + padding
    sheet = Image.new("RGB", (cols * cell_w + padding, rows * cell_h + padding), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, tile in enumerate(tiles):
        x = padding + (index % cols) * cell_w
        y = padding + (index // cols) * cell_h
        thumb = _thumbnail(tile.image, tile_size)
        if thumb is None:
            draw.rectangle((x, y, x + tile_size - 1, y + tile_size - 1), fill=(200, 200, 200))
            draw.text((x + 8, y + 8), "cannot decode", fill=_TEXT, font=font)
        else:
            sheet.paste(
                thumb,
                (x + (tile_size - thumb.width) // 2, y + (tile_size - thumb.height) // 2),
            )
        for n, text in enumerate(tile.caption):
            draw.text(
                (x, y + tile_size + 4 + n * line_height),
                _fit(draw, text, font, tile_size),
                fill=_TEXT if n == 0 else _MUTED,
                font=font,
            )
    return sheet


def _thumbnail(data: bytes, side: int) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as src:
            if src.width * src.height > _MAX_TILE_SOURCE_PIXELS:
                return None
            src.draft("RGB", (side, side))
            image = ImageOps.exif_transpose(src).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


def caption_for(key: str, provenance: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``key`` then ``seed N · WxH`` from a provenance record (when there is one).

    >>> caption_for("fox", {"seed": 7, "width": 1024, "height": 768})
    ('fox', 'seed 7 · 1024x768')
    """
    if not provenance:
        return (key,)
    details = [f"seed {provenance['seed']}"] if provenance.get("seed") is not None else []
    if provenance.get("width") and provenance.get("height"):
        details.append(f"{provenance['width']}x{provenance['height']}")
    return (key, " · ".join(details)) if details else (key,)


def write_contact_sheet(
    store: ImageStore, name: str, tiles: Sequence[Tile], *, columns: int = 4
) -> tuple[str, dict[str, dg.MetadataValue]]:
    """Render the sheet, write it to ``<store root>/contact_sheets/<name>.png`` atomically, and
    return its path and metadata (count, size, bytes, path, thumbnail)."""
    sheet = render_contact_sheet(tiles, columns=columns)
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    data = buf.getvalue()
    path = store.join("contact_sheets", f"{name}.png")
    store.write_atomic(path, data)
    metadata: dict[str, dg.MetadataValue] = {
        "images": dg.MetadataValue.int(len(tiles)),
        "width": dg.MetadataValue.int(sheet.width),
        "height": dg.MetadataValue.int(sheet.height),
        "bytes": dg.MetadataValue.int(len(data)),
        "path": dg.MetadataValue.path(str(path)),
        "preview": dg.MetadataValue.md(
            thumbnail_markdown(make_thumbnail(data, 320, max_uri_chars=12000), name)
        ),
    }
    return str(path), metadata


def build_contact_sheet_asset(
    name: str = "contact_sheet",
    *,
    images: str | dg.AssetKey = "catalogue_images",
    storage: str | os.PathLike[str] = "zimage_output",
    storage_options: Mapping[str, Any] | None = None,
    io_manager_key: str = "zimage_images",
    columns: int = 4,
    group_name: str | None = None,
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetsDefinition:
    """A non-partitioned asset drawing every stored partition of ``images`` on one PNG.

    The images come in through the ``ImageStoreIOManager`` bound to ``io_manager_key`` (missing
    partitions, e.g. a row the provider rejected, are left out); captions come from each image's
    provenance record in the same store. Pass :func:`redraw_after_new_images` as
    ``automation_condition`` to have it redrawn in its own run after images are materialized.
    """
    images_key = images if isinstance(images, dg.AssetKey) else dg.AssetKey.from_user_string(images)
    root = os.fspath(storage)
    options = dict(storage_options or {})

    @dg.asset(
        name=name,
        group_name=group_name,
        kinds={"image"},
        automation_condition=automation_condition,
        description=(
            f"Every stored image of {images_key.to_user_string()} on one PNG, with key, seed and "
            "size under each. Materialize it in its own run, after the images."
        ),
        ins={
            "images": dg.AssetIn(
                key=images_key,
                input_manager_key=io_manager_key,
                metadata={"as": "bytes", "allow_missing_partitions": True},
            )
        },
    )
    def _contact_sheet(
        context: dg.AssetExecutionContext, images: dict[str, bytes]
    ) -> dg.MaterializeResult:
        store = ImageStore(root, options)
        found = images if isinstance(images, dict) else {}
        if not found:
            raise dg.Failure(
                description=(
                    f"no stored image of {images_key.to_user_string()} under {store.root}: "
                    "materialize its partitions first"
                ),
                allow_retries=False,
            )
        tiles = [
            Tile(data, caption_for(key, store.read_provenance(images_key.path, key)))
            for key, data in found.items()
        ]
        path, metadata = write_contact_sheet(store, name, tiles, columns=columns)
        metadata["partitions"] = dg.MetadataValue.json(sorted(found))
        context.log.info(f"contact sheet of {len(tiles)} image(s) written to {path}")
        return dg.MaterializeResult(metadata=metadata)

    return _contact_sheet


def redraw_after_new_images() -> dg.AutomationCondition:
    """True once some image partition was materialized since the sheet was last requested or
    drawn, and no run of the images or of the sheet is in progress.

    Unlike ``AutomationCondition.eager()`` it neither waits for *every* partition (a row the
    provider rejected would block the sheet for good) nor fires for a sheet that is merely
    missing while there is no image yet.
    """
    handled = dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    return (
        dg.AutomationCondition.any_deps_updated().since(handled)
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("redraw_after_new_images")


def build_contact_sheet_op(
    name: str = "contact_sheet",
    *,
    storage: str | os.PathLike[str] = "zimage_output",
    storage_options: Mapping[str, Any] | None = None,
    sheet_name: str | None = None,
    columns: int = 4,
) -> dg.OpDefinition:
    """An op drawing the images listed in ``records`` (the generate op's output) on one PNG.

    It returns the sheet's path, and logs an ``AssetMaterialization`` of ``<sheet_name>``.
    """
    root = os.fspath(storage)
    options = dict(storage_options or {})
    sheet = sheet_name or name

    @dg.op(
        name=name,
        ins={"records": dg.In(list, description="Records from the generate op.")},
        out=dg.Out(str, description="Where the contact sheet was written."),
    )
    def _contact_sheet_op(context: dg.OpExecutionContext, records: list[Any]) -> str:
        store = ImageStore(root, options)
        tiles = []
        for record in records:
            path = record.get("path")
            if not path:
                continue
            data = _read(store, record)
            if data is not None:
                tiles.append(Tile(data, caption_for(str(record.get("partition_key")), record)))
        if not tiles:
            raise dg.Failure(description="no stored image to draw", allow_retries=False)
        path, metadata = write_contact_sheet(store, sheet, tiles, columns=columns)
        context.log_event(dg.AssetMaterialization(asset_key=sheet, metadata=metadata))
        return path

    return _contact_sheet_op


def _read(store: ImageStore, record: Mapping[str, Any]) -> bytes | None:
    asset, key = record.get("asset"), record.get("partition_key")
    if not asset or not key:
        return None
    try:
        return store.read_bytes(str(asset).split("/"), str(key).replace("|", "__"))
    except FileNotFoundError:
        return None
