"""The contact sheet factory: pages, columns fitted to the count, readable captions, real runs."""

from __future__ import annotations

import doctest
import io
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from tests.dagster._support import values
from tests.gallery._support import ASSET, StoredRun, materialize_run
from zimage_dagster import ImageStoreIOManager
from zimage_dagster import contact_sheet as contact_sheet_module
from zimage_dagster.contact_sheet import (
    Tile,
    build_contact_sheet_asset,
    caption_for,
    render_contact_sheet,
    sheet_columns,
)
from zimage_dagster.emulator import EmulatorServer


@pytest.fixture(scope="module")
def run(emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    return materialize_run(emulator_server, tmp_path_factory.mktemp("sheet-store"))


def test_doctests() -> None:
    assert doctest.testmod(contact_sheet_module).failed == 0


def _png(size: tuple[int, int], colour: str = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _draw(run: StoredRun, per_sheet: int, instance: dg.DagsterInstance) -> dict[str, object]:
    sheet = build_contact_sheet_asset("sheet", images=ASSET, storage=run.root, per_sheet=per_sheet)
    result = dg.materialize(
        [sheet, dg.AssetSpec(ASSET, partitions_def=_partitions(run))],
        instance=instance,
        resources={"zimage_images": ImageStoreIOManager(root=str(run.root))},
        selection=[sheet.key],
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("sheet")
    return values(mat.metadata)


def _partitions(run: StoredRun) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(sorted({*run.stored, run.failed}))


def test_many_images_go_on_several_pages_and_stale_pages_are_removed(run: StoredRun) -> None:
    sheets = run.root / "contact_sheets"
    with dg.DagsterInstance.ephemeral() as instance:
        meta = _draw(run, 2, instance)
        assert (meta["images"], meta["pages"]) == (5, 3)
        pages = [sheets / "sheet.png", sheets / "sheet-2.png", sheets / "sheet-3.png"]
        assert meta["paths"] == [str(p) for p in pages]
        assert meta["partitions"] == sorted(run.stored)  # the failed partition is left out
        widths = []
        for page in pages:
            with Image.open(page) as image:
                widths.append(image.width)
        assert widths[0] == widths[1] > widths[2]  # 2 columns, then 1 for the last image

        meta = _draw(run, 100, instance)
        assert (meta["images"], meta["pages"]) == (5, 1)
        assert sorted(p.name for p in sheets.iterdir()) == ["sheet.png"]


def test_columns_fit_the_count() -> None:
    tile = Tile(lambda: _png((64, 64)), ("k",))
    for count, columns in {1: 1, 3: 2, 12: 4, 40: 8, 300: 10}.items():
        assert sheet_columns(count) == columns
        if count <= 40:
            sheet = render_contact_sheet([tile] * count, tile_size=100)
            assert (sheet.width - 8) // 108 == columns  # tile 100 + padding 8
            rows = -(-count // columns)
            assert rows * columns - count < columns  # no empty row
            assert rows <= columns  # a landscape page, not one tall strip


def _ink_rows(image: Image.Image, top: int) -> list[tuple[int, int]]:
    """Bands of rows below ``top`` holding dark (text) pixels: ``(first, last)`` each."""
    grey = image.convert("L")
    bands: list[tuple[int, int]] = []
    for y in range(top, image.height):
        dark = any(grey.getpixel((x, y)) < 160 for x in range(image.width))  # type: ignore[operator]
        if dark and bands and bands[-1][1] == y - 1:
            bands[-1] = (bands[-1][0], y)
        elif dark:
            bands.append((y, y))
    return bands


@pytest.mark.parametrize("size", [(1536, 376), (376, 1536), (1024, 1024)])
def test_captions_are_readable_whatever_the_images_aspect(size: tuple[int, int]) -> None:
    prompt = "a very long prompt about a lighthouse on a cliff above a stormy sea at dusk, " * 3
    caption = caption_for(
        "lighthouse", {"seed": 7, "width": size[0], "height": size[1], "prompt": prompt}
    )
    assert caption[2].startswith("a very long prompt")
    sheet = render_contact_sheet([Tile(lambda: _png(size, "white"), caption)], tile_size=256)
    padding = 256 // 16
    bands = _ink_rows(sheet, padding + 256 + 1)
    assert len(bands) == 4  # key, seed and size, two lines of the prompt
    assert all(last - first + 1 >= 9 for first, last in bands)  # glyphs at least 9 px tall


def test_an_image_that_does_not_decode_is_a_grey_tile_not_a_failure() -> None:
    sheet = render_contact_sheet(
        [Tile(lambda: b"not an image", ("bad",)), Tile(lambda: None, ("gone",))], tile_size=64
    )
    assert sheet.getpixel((8 + 32, 8 + 50)) == (200, 200, 200)


def test_an_empty_store_is_a_clear_failure(tmp_path: Path) -> None:
    sheet = build_contact_sheet_asset("sheet", images="imgs", storage=tmp_path)
    result = dg.materialize(
        [sheet, dg.AssetSpec("imgs", partitions_def=dg.StaticPartitionsDefinition(["a"]))],
        resources={"zimage_images": ImageStoreIOManager(root=str(tmp_path))},
        selection=[sheet.key],
        raise_on_error=False,
    )
    assert not result.success
    assert "materialize its partitions first" in str(result.all_events)
