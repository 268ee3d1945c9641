"""Per-image metadata: thumbnails, Dagster metadata values, provenance round trips."""

import base64
import dataclasses
import doctest
import io
import json
import os
import random
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image, ImageDraw

import zimage_dagster.metadata as metadata_module
from zimage_dagster.engine.provenance import ImageRecord, from_provenance, to_provenance
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.engine.thumbnails import make_thumbnail, thumbnail_markdown
from zimage_dagster.metadata import image_metadata


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def busy_image(size: int = 1024) -> bytes:
    """Worst case for a compressor: random noise, plus shapes."""
    img = Image.frombytes("RGB", (size, size), random.Random(7).randbytes(size * size * 3))
    draw = ImageDraw.Draw(img)
    rng = random.Random(1)
    for _ in range(300):
        x, y = rng.randrange(size), rng.randrange(size)
        draw.ellipse((x, y, x + 60, y + 40), fill=tuple(rng.randrange(256) for _ in range(3)))
    return encode(img)


def decode_uri(uri: str) -> Image.Image:
    header, payload = uri.split(",", 1)
    assert header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


RECORD = ImageRecord(
    seed=42,
    task_id="task-unified-1700000000-abcd1234",
    prompt="a red fox in the snow",
    size_requested="16:9",
    width=1536,
    height=864,
    path="/tmp/out/hero/fox.png",
    sha256="ab" * 32,
    bytes=123_456,
    format="PNG",
    credits_reserved=1.5,
    queued_s=0.8,
    generating_s=6.2,
    downloading_s=0.3,
    polls=4,
    attempts=2,
    reused=False,
    regenerated=True,
    asset="catalog/hero",
    partition_key="fox",
    fingerprint="0123456789abcdef",
    previous_task_ids=("task-unified-1699999999-zzzz0000",),
    created_at=1_700_000_000.5,
    extra={"category": "animals", "seed": "not the seed", "rank": 3, "tags": ["a", "b"]},
)


def test_doctests() -> None:
    assert doctest.testmod(metadata_module).failed == 0


def test_thumbnail_of_busy_1024_image_is_small() -> None:
    uri = make_thumbnail(busy_image())
    assert uri.startswith("data:image/jpeg;base64,")
    assert len(uri) <= 8000  # 6 KB of JPEG at most
    thumb = decode_uri(uri)
    assert thumb.format == "JPEG"
    assert 128 <= max(thumb.size) <= 256  # pure noise: shrunk to fit the budget


def test_thumbnail_of_a_generated_image_is_256_px_within_6_kb() -> None:
    from zimage_dagster.emulator.render import render_image

    for width, height in ((1024, 1024), (1536, 640)):
        uri = make_thumbnail(render_image("a lighthouse at dusk", 7, width, height, "png"))
        raw = base64.b64decode(uri.split(",", 1)[1])
        assert len(raw) <= 6 * 1024
        assert max(decode_uri(uri).size) == 256


def test_thumbnail_keeps_aspect_and_handles_alpha_and_webp() -> None:
    rgba = Image.new("RGBA", (1536, 864), (255, 0, 0, 0))
    uri = make_thumbnail(encode(rgba), max_side=160)
    thumb = decode_uri(uri)
    assert thumb.size == (160, 90)
    pixel = thumb.convert("RGB").getpixel((80, 45))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 240  # transparent -> white, not black
    webp = make_thumbnail(encode(Image.new("RGB", (864, 1536), "navy"), "JPEG"), format="WEBP")
    assert webp.startswith("data:image/webp;base64,")
    assert decode_uri(webp).size == (144, 256)
    palette = Image.new("P", (400, 400))
    assert decode_uri(make_thumbnail(encode(palette))).mode == "RGB"


@pytest.mark.parametrize("side", [1024, 1000, 1280])
def test_thumbnail_averages_fine_detail_instead_of_aliasing_it(side: int) -> None:
    # One-pixel black and white stripes: a fair downscale gives mid grey; sampling every
    # 4th pixel (no antialiasing) would give solid black or white.
    stripes = Image.new("L", (side, side))
    stripes.putdata([255 * (x % 2) for _ in range(side) for x in range(side)])
    thumb = decode_uri(make_thumbnail(encode(stripes))).convert("L")
    assert max(thumb.size) == 256
    histogram = thumb.histogram()
    mean = sum(value * count for value, count in enumerate(histogram)) / sum(histogram)
    assert 100 < mean < 155


def test_thumbnail_budget_is_enforced_by_shrinking() -> None:
    uri = make_thumbnail(busy_image(512), max_side=400, max_uri_chars=3000)
    assert len(uri) <= 3000


def test_thumbnail_refuses_non_images_and_bad_format() -> None:
    with pytest.raises(Image.UnidentifiedImageError):
        make_thumbnail(b"definitely not an image")
    with pytest.raises(ValueError, match="JPEG or WEBP"):
        make_thumbnail(encode(Image.new("RGB", (4, 4))), format="GIF")


def test_thumbnail_markdown() -> None:
    md = thumbnail_markdown("data:image/jpeg;base64,QUJD", "a [weird]\nalt text")
    assert md == "![a weird alt text](data:image/jpeg;base64,QUJD)"


def test_image_metadata_types() -> None:
    uri = make_thumbnail(encode(Image.new("RGB", (64, 64), "green")))
    md = image_metadata(RECORD, uri)
    assert isinstance(md["seed"], dg.IntMetadataValue)
    assert md["seed"].value == 42
    for name in ("width", "height", "bytes", "polls", "attempts"):
        assert isinstance(md[name], dg.IntMetadataValue), name
    for name in ("credits_reserved", "queued_s", "generating_s", "downloading_s"):
        assert isinstance(md[name], dg.FloatMetadataValue), name
    assert isinstance(md["path"], dg.PathMetadataValue)
    assert md["path"].value == "/tmp/out/hero/fox.png"
    assert isinstance(md["prompt"], dg.TextMetadataValue)
    assert isinstance(md["reused"], dg.BoolMetadataValue)
    assert md["regenerated"].value is True
    assert isinstance(md["thumbnail"], dg.MarkdownMetadataValue)
    assert md["thumbnail"].value == f"![a red fox in the snow]({uri})"
    # extra columns: own name, or prefixed when they collide with a record field
    assert md["category"].value == "animals"
    assert md["extra_seed"].value == "not the seed"
    assert isinstance(md["rank"], dg.IntMetadataValue)
    assert isinstance(md["tags"], dg.JsonMetadataValue)
    assert md["previous_task_ids"].value == ["task-unified-1699999999-zzzz0000"]


def test_image_metadata_leaves_out_unknowns() -> None:
    md = image_metadata(ImageRecord(seed=1, task_id="t", prompt="p", extra={"x": float("nan")}))
    assert "width" not in md
    assert "path" not in md
    assert "thumbnail" not in md
    assert "queued_s" not in md
    assert isinstance(md["x"], dg.NullMetadataValue)


def test_metadata_is_accepted_by_a_real_materialization(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (200, 100), "orange"))
    record = dataclasses.replace(RECORD, path=str(tmp_path / "x.png"))

    @dg.asset
    def hero() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=image_metadata(record, make_thumbnail(data)))

    result = dg.materialize([hero])
    assert result.success
    (mat,) = result.asset_materializations_for_node("hero")
    assert mat.metadata["seed"] == dg.IntMetadataValue(42)
    assert str(mat.metadata["thumbnail"].value).startswith(
        "![a red fox in the snow](data:image/jpeg"
    )


def test_provenance_round_trip_and_json(tmp_path: Path) -> None:
    prov = to_provenance(RECORD)
    assert prov["provenance_version"] == 1
    text = json.dumps(prov)
    assert from_provenance(json.loads(text)) == RECORD
    store = ImageStore(tmp_path)
    store.save("hero", "fox", b"img", "png", prov)
    read = store.read_provenance("hero", "fox")
    assert read is not None
    assert from_provenance(read) == RECORD
    found = store.find("hero", "fox")
    assert found is not None
    assert found.sha256 == "ab" * 32


def test_provenance_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIMAGE_API_KEY", "sk-evo-secret-key-123")
    text = json.dumps(to_provenance(RECORD))
    assert "sk-evo" not in text
    assert os.environ["ZIMAGE_API_KEY"] not in text
    assert not {"api_key", "authorization", "headers"} & set(to_provenance(RECORD))


def test_from_provenance_tolerates_unknown_and_requires_core() -> None:
    assert from_provenance({"seed": 1, "task_id": "t", "prompt": "p", "new": 1}).seed == 1
    with pytest.raises(ValueError, match="task_id"):
        from_provenance({"seed": 1, "prompt": "p"})
