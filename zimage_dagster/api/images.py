"""Safe decoding of downloaded images, and :class:`DownloadedImage`.

>>> import io
>>> from PIL import Image
>>> buf = io.BytesIO(); Image.new("RGB", (8, 4)).save(buf, "PNG")
>>> img = decode_image(buf.getvalue())
>>> img.format, img.width, img.height, img.bytes
('PNG', 8, 4, ...)
"""

from __future__ import annotations

import builtins
import hashlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, ImageFile, UnidentifiedImageError

from zimage_dagster.api.errors import ImageTooLargeError, NotAnImageError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DownloadedImage",
    "ImageCheck",
    "decode_image",
]

#: Formats accepted from the file host. Restricting Pillow to these also keeps exotic decoders
#: (EPS through Ghostscript, ...) away from bytes we did not make.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
#: Far above the largest image the API makes (1536 x 1536), far below a decompression bomb.
DEFAULT_MAX_PIXELS = 4 * 1536 * 1536
#: How a download is checked: ``decode`` (every pixel decoded) or ``structure`` (the header and
#: the file's completeness; see :func:`decode_image`).
ImageCheck = Literal["decode", "structure"]


@dataclass(frozen=True)
class DownloadedImage:
    """A downloaded result image, checked to decode.

    Attributes: ``data`` (the bytes as served), ``format`` (``"PNG"``, ``"JPEG"``, ``"WEBP"``),
    ``width``, ``height``, ``sha256`` (hex of ``data``), ``content_type`` (as served, may be
    ``None``), ``bytes`` (``len(data)``), ``url`` (without query string), ``pixels`` and
    ``derived`` (see below).
    """

    data: builtins.bytes = field(repr=False)
    format: str
    width: int
    height: int
    sha256: str
    content_type: str | None = None
    url: str | None = None
    #: The image as decoded by the check, loaded, when the download was asked to keep it
    #: (``keep_pixels``), else None. Read-only: :meth:`to_pil` gives a copy to change.
    pixels: Image.Image | None = field(default=None, repr=False, compare=False)
    #: What the download's ``derive`` made of the decoded image (a thumbnail...), else None.
    derived: Any = field(default=None, repr=False, compare=False)

    @property
    def bytes(self) -> int:
        """Size of ``data`` in bytes."""
        return len(self.data)

    @property
    def extension(self) -> str:
        """A file extension for the format: ``.png``, ``.jpg`` or ``.webp``."""
        return {"JPEG": ".jpg"}.get(self.format, "." + self.format.lower())

    def to_pil(self) -> Image.Image:
        """The image with Pillow (fully loaded): a copy of ``pixels`` if kept, else decoded."""
        if self.pixels is not None:
            return self.pixels.copy()
        img = Image.open(io.BytesIO(self.data), formats=list(ALLOWED_FORMATS))
        img.load()
        return img


def decode_image(
    data: builtins.bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    content_type: str | None = None,
    url: str | None = None,
    task_id: str | None = None,
    keep_pixels: bool = False,
    derive: Callable[[Image.Image], Any] | None = None,
    check: ImageCheck = "decode",
) -> DownloadedImage:
    """Check that ``data`` is an intact PNG, JPEG or WebP no larger than ``max_pixels``, and describe it.

    The declared size is checked before any pixel is decoded; Pillow's
    ``DecompressionBombWarning`` is an error here; the image is then fully loaded so a truncated
    file fails now, not later. Raises :class:`NotAnImageError` or :class:`ImageTooLargeError`.
    With ``keep_pixels`` the loaded image is kept in ``pixels`` (a thumbnail then needs no
    second decode); else it is dropped. ``derive`` is called with the loaded image, in the
    decode's own thread, and its result kept in ``derived``: what a caller makes of the pixels
    (a thumbnail) without holding them (3 MiB for 1024 x 1024) until it gets to them. An error
    of ``derive`` is its own, raised as it is: the image itself was checked intact.

    ``check="structure"`` (without ``keep_pixels`` or ``derive``, which need the pixels) skips
    the decode of the pixels (about 17 ms for a 1024 x 1024 WebP, most of a sharded run's CPU per
    image): the header is still parsed (format, size, the pixel limit) and the file must be
    whole (a WebP's RIFF length, a PNG's final IEND chunk, a JPEG's end marker), so an error page
    or a truncated download is still refused; damage inside complete compressed data is not
    seen until the image is decoded.

    >>> png = io.BytesIO(); Image.new("RGB", (8, 4), "red").save(png, "PNG")
    >>> whole = png.getvalue()
    >>> decode_image(whole, check="structure").width
    8
    >>> decode_image(whole[:-4], check="structure")
    Traceback (most recent call last):
    ...
    zimage_dagster.api.errors.NotAnImageError: truncated or corrupt image: the PNG file does not end with its IEND chunk

    >>> buf = io.BytesIO(); Image.new("RGB", (8, 4), "red").save(buf, "PNG")
    >>> decode_image(buf.getvalue(), keep_pixels=True).pixels.getpixel((7, 3))
    (255, 0, 0)
    >>> decode_image(buf.getvalue()).pixels is None
    True
    >>> decode_image(buf.getvalue(), derive=lambda pixels: pixels.getpixel((0, 0))).derived
    (255, 0, 0)
    """
    if not data:
        raise NotAnImageError("empty body: no image bytes", url=url, task_id=task_id)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone else may have set; we never want it
        raise NotAnImageError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to check images with it",
            url=url,
            task_id=task_id,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as img:
                width, height = img.size
                fmt = img.format or "?"
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"image declares {width}x{height} = {width * height} pixels, more than the "
                        f"limit of {max_pixels}; refusing to decode it (possible decompression bomb)",
                        url=url,
                        task_id=task_id,
                    )
                if check == "structure" and not keep_pixels and derive is None:
                    _check_whole(data, fmt)
                    loaded = None
                else:
                    img.load()
                    loaded = img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"decompression bomb refused: {exc}", url=url, task_id=task_id
        ) from None
    except UnidentifiedImageError:
        head = data[:16]
        raise NotAnImageError(
            f"not a {'/'.join(ALLOWED_FORMATS)} image (first bytes {head!r})",
            url=url,
            task_id=task_id,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise NotAnImageError(
            f"truncated or corrupt image: {exc}", url=url, task_id=task_id
        ) from None
    return DownloadedImage(
        data=bytes(data),
        format=fmt,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=content_type,
        url=url,
        pixels=loaded if keep_pixels else None,
        derived=derive(loaded) if derive is not None and loaded is not None else None,
    )


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _check_whole(data: builtins.bytes, fmt: str) -> None:
    """Raise ``SyntaxError`` unless the file of format ``fmt`` is complete (its container says
    where it ends)."""
    if fmt == "WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8 if data[:4] == b"RIFF" else -1
        if len(data) not in (declared, declared + 1):
            raise SyntaxError(f"the WebP file's RIFF length says {declared} bytes, got {len(data)}")
    elif fmt == "PNG":
        if not data.endswith(_PNG_END):
            raise SyntaxError("the PNG file does not end with its IEND chunk")
    elif fmt in ("JPEG", "MPO"):
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise SyntaxError("the JPEG file does not end with its EOI marker")
    else:  # pragma: no cover - ALLOWED_FORMATS are the three above
        raise SyntaxError(f"no structure check for {fmt}")
