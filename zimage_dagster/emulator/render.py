"""Deterministic, demo-friendly images: a seed-driven palette gradient, soft circles and the prompt.

Same prompt, seed, size and format give the same bytes; another seed gives another palette and
another composition.

>>> data = render_image("a cute cat", 42, 400, 400, "png")
>>> data[:8] == b"\\x89PNG\\r\\n\\x1a\\n", data == render_image("a cute cat", 42, 400, 400, "png")
(True, True)
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import random
import textwrap
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from PIL import Image, ImageDraw, ImageFilter, ImageFont

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_SAVE_OPTIONS: dict[str, dict[str, object]] = {
    "png": {"compress_level": 1},
    "jpeg": {"quality": 88},
    "webp": {"quality": 60, "method": 0},
}


def _rng(prompt: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _color(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, sat, val)
    return (round(r * 255), round(g * 255), round(b * 255))


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


#: The picture is composed at 1 / ``_SCALE`` of the requested size and scaled up once; only the
#: prompt's band is drawn at full size. The real service renders on its GPUs, not on the cores its
#: clients share with this emulator, so a render here should cost little besides the encode.
_SCALE = 4


def render_image(prompt: str, seed: int, width: int, height: int, fmt: str) -> bytes:
    """Render and encode one image (`fmt` in png, jpeg, webp). Pure: no state, no clock."""
    rng = _rng(prompt, seed)
    hue = rng.random()
    c1 = _color(hue, 0.55 + 0.3 * rng.random(), 0.85 + 0.15 * rng.random())
    c2 = _color(
        hue + 0.25 + 0.3 * rng.random(), 0.6 + 0.3 * rng.random(), 0.35 + 0.3 * rng.random()
    )
    small = (max(1, width // _SCALE), max(1, height // _SCALE))

    # Diagonal gradient at an angle drawn from the seed.
    mask = Image.linear_gradient("L").rotate(
        rng.uniform(0, 360), resample=Image.Resampling.BICUBIC, expand=False
    )
    mask = mask.crop((48, 48, 208, 208)).resize(small, Image.Resampling.BILINEAR)
    canvas = Image.composite(Image.new("RGB", small, c1), Image.new("RGB", small, c2), mask)

    # Soft circles on a layer, blurred premultiplied (mode "RGBa") so edges fade, not darken.
    layer = Image.new("RGBA", small, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(5 + rng.randrange(5)):
        r = rng.uniform(0.08, 0.3) * min(small)
        x, y = rng.uniform(0, small[0]), rng.uniform(0, small[1])
        fill = (
            *_color(
                hue + rng.uniform(-0.2, 0.5), 0.4 + 0.5 * rng.random(), 0.7 + 0.3 * rng.random()
            ),
            90 + rng.randrange(90),
        )
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    layer = layer.convert("RGBa").filter(ImageFilter.GaussianBlur(3)).convert("RGBA")
    canvas.paste(layer, (0, 0), layer)
    image = canvas.resize((width, height), Image.Resampling.BILINEAR)

    # The prompt, wrapped on a translucent band near the bottom, at full size.
    font_size = max(14, min(width, height) // 24)
    font = _font(font_size)
    chars_per_line = max(8, int(width / (font_size * 0.5)) - 4)
    lines = textwrap.wrap(" ".join(prompt.split()), chars_per_line)[:4] or [""]
    line_h = int(font_size * 1.3)
    band_h = line_h * len(lines) + font_size
    top = height - band_h - height // 16
    band = Image.new("RGBA", (width, band_h), (16, 16, 24, 120))
    band_draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        band_draw.text(
            (font_size, font_size // 2 + i * line_h), line, font=font, fill=(255, 255, 255, 235)
        )
    image.paste(band, (0, max(0, top)), band)

    out = io.BytesIO()
    image.save(out, _PIL_FORMATS[fmt], **_SAVE_OPTIONS[fmt])
    return out.getvalue()


RenderKey = tuple[str, int, int, int, str]

#: Images per size and format that load mode serves (see :func:`pooled_key`).
LOAD_POOL_SIZE = 8


def pooled_key(key: RenderKey, pool_size: int = LOAD_POOL_SIZE) -> RenderKey:
    """Load mode: the render of one of ``pool_size`` stock images of the same size and format,
    chosen from the prompt and seed (the same request always gets the same one).

    A 100,000-task load test then renders ``pool_size`` images per size, not 100,000: the
    emulator's CPU goes to the API, not to Pillow. Each is still a real image of the requested
    size in the requested format.

    >>> pooled_key(("a cat", 5, 512, 384, "webp")) == pooled_key(("a cat", 5, 512, 384, "webp"))
    True
    >>> len({pooled_key((f"prompt {i}", i, 512, 384, "webp")) for i in range(1000)})
    8
    >>> pooled_key(("a cat", 5, 512, 384, "webp"))[2:]
    (512, 384, 'webp')
    """
    prompt, seed, width, height, fmt = key
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    slot = int.from_bytes(digest[:8], "big") % pool_size
    return (f"load-mode stock image {slot + 1} of {pool_size}", slot + 1, width, height, fmt)


class RenderCache:
    """Renders in worker threads (never on the event loop), caching by (prompt, seed, w, h, format).

    `start(key)` begins a render and returns at once; `get(key)` awaits it. An LRU bounded by
    the finished images' bytes (and a count) keeps memory in check: an evicted image is rendered
    again on demand (same bytes). The bound is in bytes so that a batch's renders, started when
    its tasks are created, are still there when the images are downloaded (a count of 64 evicted
    a quarter of them in a batch of 32 tasks in flight, each then rendered twice).
    """

    def __init__(
        self,
        max_entries: int = 4096,
        workers: int = 2,
        on_render: Callable[[float], None] | None = None,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._entries: OrderedDict[RenderKey, asyncio.Future[bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self.on_render = on_render

    def _timed_render(self, key: RenderKey) -> tuple[bytes, float]:
        start = time.perf_counter()
        data = render_image(*key)
        return data, time.perf_counter() - start

    def start(self, key: RenderKey) -> asyncio.Future[bytes]:
        """Begin rendering `key` (if not cached) in a worker thread; call from the event loop."""
        loop = asyncio.get_running_loop()
        found = self._entries.get(key)
        if (
            found is not None
            and found.get_loop() is loop
            and not (found.done() and (found.cancelled() or found.exception()))
        ):
            self._entries.move_to_end(key)
            return found
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self._workers, thread_name_prefix="zimage-emulator-render"
            )
        future: asyncio.Future[bytes] = loop.create_future()
        work = loop.run_in_executor(self._executor, self._timed_render, key)

        def finish(done: asyncio.Future[tuple[bytes, float]]) -> None:
            if future.done():
                return
            if done.cancelled():
                future.cancel()
            elif (exc := done.exception()) is not None:
                future.set_exception(exc)
            else:
                data, seconds = done.result()
                if self.on_render is not None:
                    self.on_render(seconds)
                future.set_result(data)
                if self._entries.get(key) is future:
                    self._bytes += len(data)
                    self._evict()

        work.add_done_callback(finish)
        self._forget(key)
        self._entries[key] = future
        self._evict()
        return future

    def _forget(self, key: RenderKey) -> None:
        found = self._entries.pop(key, None)
        if found is not None and found.done() and not found.cancelled() and not found.exception():
            self._bytes -= len(found.result())

    def _evict(self) -> None:
        """Drop the least recently used entries beyond the count or the bytes bound."""
        while len(self._entries) > self._max_entries or (
            self._bytes > self._max_bytes and len(self._entries) > 1
        ):
            self._forget(next(iter(self._entries)))

    async def get(self, key: RenderKey) -> bytes:
        return await asyncio.shield(self.start(key))

    def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)  # no thread outlives the server
            self._executor = None
