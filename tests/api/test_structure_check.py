"""The structure check of downloads (``check="structure"``, sharded mode's): no pixel decoded, but
an error page, a truncated file or a bomb is still refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from zimage_dagster.api.errors import ImageTooLargeError, NotAnImageError
from zimage_dagster.api.images import decode_image


def _encoded(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "teal").save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_whole_files_pass_without_decoding_and_truncated_ones_fail(fmt: str) -> None:
    data = _encoded(fmt)
    image = decode_image(data, check="structure")
    assert (image.format, image.width, image.height) == (fmt, 64, 48)
    assert image.pixels is None
    assert image.sha256 == decode_image(data).sha256
    for cut in (1, 7, len(data) // 2):
        with pytest.raises(NotAnImageError, match="truncated or corrupt"):
            decode_image(data[:-cut], check="structure")


def test_an_error_page_and_a_bomb_are_refused_as_by_the_decode() -> None:
    with pytest.raises(NotAnImageError, match="not a PNG/JPEG/WEBP image"):
        decode_image(b"<html>502 Bad Gateway</html>", check="structure")
    with pytest.raises(ImageTooLargeError):
        decode_image(_encoded("PNG", (200, 200)), check="structure", max_pixels=100)


def test_asking_for_the_pixels_decodes_them() -> None:
    data = _encoded("WEBP")
    kept = decode_image(data, check="structure", keep_pixels=True)
    assert kept.pixels is not None
    assert kept.pixels.size == (64, 48)
    assert decode_image(data, check="structure", derive=lambda p: p.size).derived == (64, 48)
