"""Benchmark 7, gallery: 10,000 stored images served by ``zimage-gallery``.

A store of N images (10,000; ``--quick``: 1,000) is written through the library (``ImageStore.save``
with provenance records from ``to_provenance``, a ledger entry per image, 2 % of them failed with
the provider's message), each image a distinct 512x512 JPEG (about 14 KB). The gallery runs as its own process
(``zimage-gallery --storage ROOT --port 0``, as a user starts it); its figures:

* start-up until it prints its URL (it waits up to 1 s for its index's first pass, then serves
  while indexing), and until that first pass is done (its index file is made anew);
* the first grid page (48 cards, newest first) and a search over every prompt, each timed from
  request to last byte, against the same pages of a 100-image store (the baseline);
* the first page's 48 thumbnails (each generated: one decode), then the page and its thumbnails
  again: the gallery's own counters must show no new thumbnail (no decoding);
* the process's peak RSS (``VmHWM``).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
from PIL import Image, ImageDraw

from benchmarks._common import BenchResult
from zimage_dagster.engine.keys import candidate_key
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import links

NAME = "gallery"
TITLE = "7. Gallery (10,000 stored images)"
ASSET = "bench_images"
FIRST_PAGE_S = 1.0
SEARCH_S = 1.0
RSS_MIB = 300.0
_WORDS: list[str] = [
    "fox",
    "owl",
    "lighthouse",
    "harbour",
    "cliff",
    "meadow",
    "forest",
    "city",
    "street",
    "market",
    "river",
    "bridge",
    "tower",
    "garden",
    "desert",
    "canyon",
    "glacier",
    "island",
    "temple",
    "castle",
    "train",
    "station",
    "rain",
    "snow",
    "dusk",
    "dawn",
]


def _image(i: int, base: Image.Image) -> bytes:
    image = base.copy()
    rng = random.Random(i)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.randrange(0, 448), rng.randrange(0, 448)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x, y, x + rng.randrange(32, 160), y + rng.randrange(32, 160)), fill=colour)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def build_store(root: str, n: int, candidates: int = 1) -> dict[str, Any]:
    """N partitions of ``candidates`` images each (``variants``), with provenance and ledger
    entries; every 50th partition failed instead.

    Written by 8 threads (each write is fsynced: the machine's disk, not Python, is the limit).
    Candidate ``c`` of a partition is its unit ``candidate_key(key, c)``, as the engine stores it.
    """
    store = ImageStore(root)
    ledger = TaskLedger(store)
    ramp = Image.linear_gradient("L").resize((512, 512))
    base = Image.merge("RGB", (ramp, ramp.rotate(90), Image.new("L", (512, 512), 128)))
    rng = random.Random(n)
    prompts = [" ".join(rng.choice(_WORDS) for _ in range(12)) + f" number {i}" for i in range(n)]

    def one(i: int) -> bool:
        return all([unit(i, c) for c in range(candidates)])

    def unit(i: int, c: int) -> bool:
        partition = f"p{i:05d}"
        key = candidate_key(partition, c)
        task_id = f"task-unified-{1_700_000_000 + i}-{i:08d}" + (f"-{c}" if c else "")
        seed = i + 1 + c
        request = {"model": "z-image-turbo", "prompt": prompts[i], "size": "1:1", "seed": seed}
        ledger.record_submitted(ASSET, key, task_id=task_id, request=request)
        if i % 50 == 49:
            ledger.mark_failed(ASSET, key, task_id, "content_policy_violation", "blocked")
            return False
        data = _image(i + c * 1_000_003, base)
        record = ImageRecord(
            seed=seed,
            task_id=task_id,
            prompt=prompts[i],
            width=512,
            height=512,
            format="JPEG",
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            partition_key=partition,
            asset=ASSET,
            created_at=1_700_000_000.0 + i,
        )
        store.save(ASSET, key, data, "jpg", to_provenance(record))
        ledger.mark_collected(ASSET, key, task_id)
        return True

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        stored = sum(pool.map(one, range(n)))
    return {"images": stored, "failed": n - stored, "build_s": time.perf_counter() - started}


@contextmanager
def gallery_process(
    root: str, cache_dir: str
) -> Iterator[tuple[str, subprocess.Popen[str], float]]:
    """``zimage-gallery`` on a free port: (URL, process, seconds until it printed the URL)."""
    script = os.path.join(os.path.dirname(sys.executable), "zimage-gallery")
    command = [script, "--storage", root, "--port", "0", "--cache-dir", cache_dir]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"zimage-gallery did not start (exit {process.poll()})")
        yield url, process, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)


def _timed_get(client: httpx.Client, url: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    answer = client.get(url)
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed, answer


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def measure(root: str, cache_dir: str) -> dict[str, Any]:
    """The figures of one store (see the module doc)."""
    grid = links.asset_path(ASSET)
    out: dict[str, Any] = {}
    started = time.perf_counter()
    with (
        gallery_process(root, cache_dir) as (url, process, startup_s),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        out["startup_s"] = startup_s
        # The gallery serves while its first index pass runs: wait for the pass to end, so the
        # pages below are measured over the whole store.
        while client.get("/-/stats").json()["indexing"]:
            time.sleep(0.05)
        out["indexed_s"] = time.perf_counter() - started
        out["first_page_s"], page = _timed_get(client, grid)
        out["cards"] = page.text.count("<article")
        out["search_s"], found = _timed_get(client, grid + "?q=lighthouse+harbour+dusk")
        out["search_hits"] = int(found.text.split("id='found'>", 1)[1].split(" ", 1)[0])
        out["search_none_s"], _ = _timed_get(client, grid + "?q=zebra")
        thumbs = [src for src in page.text.split("src='")[1:] if "/-/thumbnail/" in src[:200]]
        sources = [src.split("'", 1)[0] for src in thumbs]
        started = time.perf_counter()
        for src in sources:
            client.get(src).raise_for_status()
        out["thumbnails_first_s"] = time.perf_counter() - started
        first = client.get("/-/stats").json()
        started = time.perf_counter()
        _timed_get(client, grid)
        for src in sources:
            client.get(src).raise_for_status()
        out["second_load_s"] = time.perf_counter() - started
        second = client.get("/-/stats").json()
        out["thumbnails"] = len(sources)
        out["generated_first"] = first["thumbnails_generated"]
        out["generated_second_load"] = (
            second["thumbnails_generated"] - first["thumbnails_generated"]
        )
        out["index_build_s"] = second["index_build_s"]
        out["rss_mib"] = _peak_rss_mib(process.pid)
    return out


def run(
    quick: bool = False, context: dict[str, Any] | None = None, n: int | None = None
) -> BenchResult:
    count = n or (1_000 if quick else 10_000)
    res = BenchResult(NAME, TITLE if count == 10_000 else f"7. Gallery ({count:,} stored images)")
    with tempfile.TemporaryDirectory(prefix="zimage-bench-gallery-") as tmp:
        small_root, big_root = os.path.join(tmp, "small"), os.path.join(tmp, "big")
        small_built = build_store(small_root, 100)
        built = build_store(big_root, count)
        small = measure(small_root, os.path.join(tmp, "cache-small"))
        big = measure(big_root, os.path.join(tmp, "cache-big"))
    res.details = {"store": built, "small": small, "big": big, "small_store": small_built}
    res.add(
        "first grid page", big["first_page_s"], "s", small["first_page_s"], "100 images",
        f"< {FIRST_PAGE_S:g} s", big["first_page_s"] < FIRST_PAGE_S, "value",
    )  # fmt: skip
    res.add(
        "search over every prompt", big["search_s"], "s", small["search_s"], "100 images",
        f"< {SEARCH_S:g} s", big["search_s"] < SEARCH_S, "value",
    )  # fmt: skip
    res.add(
        "peak RSS of the gallery process", big["rss_mib"], "MiB", small["rss_mib"], "100 images",
        f"< {RSS_MIB:g} MiB", big["rss_mib"] < RSS_MIB, "value",
    )  # fmt: skip
    res.add(
        "thumbnails generated on the second page load", big["generated_second_load"], "",
        None, "", "0", big["generated_second_load"] == 0 and big["generated_first"] == big["thumbnails"], "value",
    )  # fmt: skip
    res.add(
        "start-up until the URL (up to 1 s of the first index pass)", big["startup_s"], "s",
        small["startup_s"], "100 images",
    )  # fmt: skip
    res.add(
        "start to the index's first pass done (index file made anew)", big["indexed_s"], "s",
        small["indexed_s"], "100 images",
    )  # fmt: skip
    res.notes += [
        f"Store: {built['images']:,} images and {built['failed']} failed partitions, written in "
        f"{built['build_s']:.0f} s through ImageStore.save and TaskLedger.",
        f"First page: {big['cards']} cards; search 'lighthouse harbour dusk' found "
        f"{big['search_hits']:,} partitions in {big['search_s']:.3f} s (no match: "
        f"{big['search_none_s']:.3f} s); index build {big['index_build_s']:.2f} s.",
        f"The first page's {big['thumbnails']} thumbnails took {big['thumbnails_first_s']:.2f} s "
        f"({big['generated_first']} generated); the page and its thumbnails again "
        f"{big['second_load_s']:.2f} s with {big['generated_second_load']} generated.",
    ]
    return res


if __name__ == "__main__":  # pragma: no cover
    from benchmarks.run import render_table

    print(render_table([run(quick="--quick" in sys.argv)]))
