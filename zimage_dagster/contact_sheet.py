"""Contact sheets: every stored image of a partitioned image asset on a few PNG pages, captioned.

:func:`render_contact_sheet` draws one page (pure Pillow): columns that fit the count (about 4:3,
see :func:`sheet_columns`), each image fitted in a square tile whatever its aspect, and under it a
caption readable at the tile's size: the partition key, ``seed N · WxH``, and the start of the
prompt on two lines. :func:`build_contact_sheet_asset` makes the downstream, non-partitioned asset
that draws every stored partition of an image asset, ``per_sheet`` images per page;
:func:`build_contact_sheet_op` does the same in an op-based job from the generate op's records.

Pages are written into the image store: ``<root>/contact_sheets/<name>.png`` (page 1), then
``<name>-2.png``, ``<name>-3.png``...; pages left over from a longer earlier sheet are removed.
Images are read one at a time while drawing, so hundreds of images never sit in memory together.

Because the image asset yields no output (one ``AssetMaterialization`` per partition), Dagster
skips downstream assets in the same run: materialize the contact sheet in its own run (or let
:func:`redraw_after_new_images` request it).

>>> import io
>>> from PIL import Image
>>> buf = io.BytesIO(); Image.new("RGB", (600, 200), "teal").save(buf, "PNG")
>>> tiles = [Tile(lambda: buf.getvalue(), caption_for(f"k{i}", {"seed": i, "prompt": "a fox"}))
...          for i in range(6)]
>>> sheet_columns(6), render_contact_sheet(tiles, tile_size=128).size
(3, (416, 416))
"""

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from PIL import Image, ImageDraw, ImageFont
from upath import UPath

from zimage_dagster.engine.store import ImageStore, asset_parts
from zimage_dagster.engine.thumbnails import fit_image, make_thumbnail, thumbnail_markdown

__all__ = [
    "SHEETS_DIR",
    "Tile",
    "build_contact_sheet_asset",
    "build_contact_sheet_op",
    "caption_for",
    "redraw_after_new_images",
    "render_contact_sheet",
    "sheet_columns",
    "write_contact_sheets",
]

#: Folder under the store's root holding the sheets.
SHEETS_DIR = "contact_sheets"

_BACKGROUND = (246, 246, 244)
_TEXT = (33, 33, 33)
_MUTED = (96, 96, 96)
_MAX_PAGES = 1000


@dataclass(frozen=True)
class Tile:
    """One image of a sheet: a function returning its bytes (read when drawn), and its caption
    lines (the first, the key, is drawn darker; the last, the prompt, wraps onto two lines)."""

    read: Callable[[], bytes | None]
    caption: tuple[str, ...] = ()


def sheet_columns(count: int, max_columns: int = 10) -> int:
    """Columns for ``count`` tiles so that the page is about 4:3 (landscape), at most ``max_columns``.

    >>> [sheet_columns(n) for n in (1, 2, 4, 12, 30, 100, 500)]
    [1, 2, 3, 4, 7, 10, 10]
    """
    if count <= 1:
        return 1
    return max(1, min(count, max_columns, math.ceil(math.sqrt(count * 4 / 3))))


def caption_for(key: str, provenance: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``key``, ``seed N · WxH`` and the prompt, from a provenance record (when there is one).

    >>> caption_for("fox", {"seed": 7, "width": 1024, "height": 768, "prompt": "a red fox"})
    ('fox', 'seed 7 · 1024x768', 'a red fox')
    """
    if not provenance:
        return (key,)
    details = [f"seed {provenance['seed']}"] if provenance.get("seed") is not None else []
    if provenance.get("width") and provenance.get("height"):
        details.append(f"{provenance['width']}x{provenance['height']}")
    lines = [key]
    if details:
        lines.append(" · ".join(details))
    if provenance.get("prompt"):
        lines.append(" ".join(str(provenance["prompt"]).split()))
    return tuple(lines)


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


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, lines: int) -> list[str]:
    """``text`` on at most ``lines`` lines of ``width`` px, the last one cut with an ellipsis."""
    out: list[str] = []
    words = text.split()
    while words and len(out) < lines - 1:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        out.append(_fit(draw, line, font, width))
    if words:
        out.append(_fit(draw, " ".join(words), font, width))
    return out


def render_contact_sheet(
    tiles: Sequence[Tile],
    *,
    columns: int | None = None,
    tile_size: int = 256,
    font_size: int | None = None,
) -> Image.Image:
    """One page: each image fitted in a ``tile_size`` square (aspect kept), its caption below.

    ``columns`` defaults to :func:`sheet_columns` of the count; the font to ``tile_size / 16``
    (16 px for 256 px tiles), so captions stay readable whatever the images' aspect. An image
    that does not decode becomes a grey tile saying so, rather than failing the sheet.
    """
    if columns is not None and columns < 1:
        raise ValueError("columns must be >= 1")
    size = font_size or max(12, tile_size // 16)
    font, bold = _font(size), _font(size + 1)
    padding, line_height = max(8, tile_size // 16), size + size // 3
    longest = max((len(t.caption) for t in tiles), default=0)
    caption_lines = longest + (1 if longest >= 3 else 0)  # the prompt gets two lines
    caption_height = caption_lines * line_height + (padding // 2 if caption_lines else 0)
    cols = min(columns or sheet_columns(len(tiles)), max(1, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    cell_w, cell_h = tile_size + padding, tile_size + caption_height + padding
    sheet = Image.new("RGB", (cols * cell_w + padding, rows * cell_h + padding), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, tile in enumerate(tiles):
        x = padding + (index % cols) * cell_w
        y = padding + (index // cols) * cell_h
        thumb = _decode(tile, tile_size)
        if thumb is None:
            draw.rectangle((x, y, x + tile_size - 1, y + tile_size - 1), fill=(200, 200, 200))
            draw.text((x + 8, y + 8), "cannot decode", fill=_TEXT, font=font)
        else:
            left, top = x + (tile_size - thumb.width) // 2, y + (tile_size - thumb.height) // 2
            sheet.paste(thumb, (left, top))
        text_y = y + tile_size + padding // 2
        lines: list[tuple[str, Any, tuple[int, int, int]]] = []
        for n, text in enumerate(tile.caption):
            if n == 0:
                lines.append((_fit(draw, text, bold, tile_size), bold, _TEXT))
            elif n == len(tile.caption) - 1 and n >= 2:
                lines += [(t, font, _MUTED) for t in _wrap(draw, text, font, tile_size, 2)]
            else:
                lines.append((_fit(draw, text, font, tile_size), font, _MUTED))
        for n, (text, face, colour) in enumerate(lines):
            draw.text((x, text_y + n * line_height), text, fill=colour, font=face)
    return sheet


def _decode(tile: Tile, side: int) -> Image.Image | None:
    try:
        data = tile.read()
        return fit_image(data, side) if data is not None else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _page_path(store: ImageStore, name: str, page: int) -> UPath:
    return store.join(SHEETS_DIR, f"{name}.png" if page == 1 else f"{name}-{page}.png")


def write_contact_sheets(
    store: ImageStore,
    name: str,
    tiles: Sequence[Tile],
    *,
    per_sheet: int = 100,
    columns: int | None = None,
    tile_size: int = 256,
) -> tuple[list[str], dict[str, dg.MetadataValue]]:
    """Render ``tiles`` on pages of ``per_sheet``, write them atomically under
    ``<root>/contact_sheets/``, remove pages left from an earlier, longer sheet, and return the
    pages' paths and the metadata (images, pages, paths, first page's size and a preview)."""
    if per_sheet < 1:
        raise ValueError("per_sheet must be >= 1")
    paths: list[str] = []
    first: Image.Image | None = None
    first_bytes = b""
    for start in range(0, max(1, len(tiles)), per_sheet):
        page = render_contact_sheet(
            tiles[start : start + per_sheet], columns=columns, tile_size=tile_size
        )
        buf = io.BytesIO()
        page.save(buf, "PNG", optimize=True)
        path = store.write_atomic(_page_path(store, name, len(paths) + 1), buf.getvalue())
        paths.append(str(path))
        if first is None:
            first, first_bytes = page, buf.getvalue()
    for stale in range(len(paths) + 1, _MAX_PAGES):
        if not store.delete_file(_page_path(store, name, stale)):
            break
    assert first is not None
    metadata: dict[str, dg.MetadataValue] = {
        "images": dg.MetadataValue.int(len(tiles)),
        "pages": dg.MetadataValue.int(len(paths)),
        "width": dg.MetadataValue.int(first.width),
        "height": dg.MetadataValue.int(first.height),
        "path": dg.MetadataValue.path(paths[0]),
        "paths": dg.MetadataValue.json(paths),
        "preview": dg.MetadataValue.md(
            thumbnail_markdown(make_thumbnail(first_bytes, 320, max_uri_chars=12000), name)
        ),
    }
    return paths, metadata


def build_contact_sheet_asset(
    name: str = "contact_sheet",
    *,
    images: str | dg.AssetKey = "catalogue_images",
    storage: str | os.PathLike[str] = "zimage_output",
    storage_options: Mapping[str, Any] | None = None,
    io_manager_key: str = "zimage_images",
    per_sheet: int = 100,
    columns: int | None = None,
    tile_size: int = 256,
    group_name: str | None = None,
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetsDefinition:
    """A non-partitioned asset drawing every stored partition of ``images``, ``per_sheet`` a page.

    The stored partitions come through the ``ImageStoreIOManager`` bound to ``io_manager_key``
    (as paths: each file is read when its tile is drawn; missing partitions, e.g. a row the
    provider rejected, are left out); captions come from each image's provenance record.
    ``columns`` fixes the columns (default: fitted to each page's count). Pass
    :func:`redraw_after_new_images` as ``automation_condition`` to have it redrawn in its own run
    after images are materialized.

    >>> sheet = build_contact_sheet_asset("sheet", images="hero", per_sheet=50)
    >>> sheet.key.to_user_string()
    'sheet'
    """
    images_key = images if isinstance(images, dg.AssetKey) else dg.AssetKey.from_user_string(images)
    root = os.fspath(storage)
    options = dict(storage_options or {})
    if per_sheet < 1:
        raise ValueError("per_sheet must be >= 1")

    @dg.asset(
        name=name,
        group_name=group_name,
        kinds={"image"},
        automation_condition=automation_condition,
        description=(
            f"Every stored image of {images_key.to_user_string()} on contact sheets of "
            f"{per_sheet} images, with key, seed, size and prompt under each. Materialize it in "
            "its own run, after the images."
        ),
        ins={
            "images": dg.AssetIn(
                key=images_key,
                input_manager_key=io_manager_key,
                metadata={"as": "path", "allow_missing_partitions": True},
            )
        },
    )
    def _contact_sheet(
        context: dg.AssetExecutionContext, images: dict[str, UPath]
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
            Tile(
                _reader(store, path),
                caption_for(key, store.read_provenance(images_key.path, key)),
            )
            for key, path in sorted(found.items())
        ]
        paths, metadata = write_contact_sheets(
            store, name, tiles, per_sheet=per_sheet, columns=columns, tile_size=tile_size
        )
        metadata["partitions"] = dg.MetadataValue.json(sorted(found))
        context.log.info(f"{len(tiles)} image(s) on {len(paths)} contact sheet(s): {paths[0]}")
        return dg.MaterializeResult(metadata=metadata)

    return _contact_sheet


def _reader(store: ImageStore, path: UPath) -> Callable[[], bytes | None]:
    return lambda: store.read_bytes_or_none(path)


def redraw_after_new_images() -> dg.AutomationCondition:
    """True once some image partition was materialized since the sheet was last requested or
    drawn, and no run of the images or of the sheet is in progress.

    Unlike ``AutomationCondition.eager()`` it neither waits for *every* partition (a row the
    provider rejected would block the sheet for good) nor fires for a sheet that is merely
    missing while there is no image yet.

    >>> redraw_after_new_images().get_label()
    'redraw_after_new_images'
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
    per_sheet: int = 100,
    columns: int | None = None,
) -> dg.OpDefinition:
    """An op drawing the images listed in ``records`` (the generate op's output) on sheets.

    It returns the first page's path, and logs an ``AssetMaterialization`` of ``<sheet_name>``.

    >>> build_contact_sheet_op("sheet").name
    'sheet'
    """
    root = os.fspath(storage)
    options = dict(storage_options or {})
    sheet = sheet_name or name

    @dg.op(
        name=name,
        ins={"records": dg.In(list, description="Records from the generate op.")},
        out=dg.Out(str, description="Where the contact sheet's first page was written."),
    )
    def _contact_sheet_op(context: dg.OpExecutionContext, records: list[Any]) -> str:
        store = ImageStore(root, options)
        tiles = []
        for record in records:
            asset, key = record.get("asset"), record.get("partition_key")
            if not record.get("path") or not asset or not key:
                continue
            found = store.find(asset_parts(str(asset).split("/")), str(key))
            if found is not None:
                tiles.append(Tile(_reader(store, found.path), caption_for(str(key), record)))
        if not tiles:
            raise dg.Failure(description="no stored image to draw", allow_retries=False)
        paths, metadata = write_contact_sheets(
            store, sheet, tiles, per_sheet=per_sheet, columns=columns
        )
        context.log_event(dg.AssetMaterialization(asset_key=sheet, metadata=metadata))
        return paths[0]

    return _contact_sheet_op
