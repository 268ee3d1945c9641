"""Benchmark 7b, the gallery at scale: 1,000,000 indexed images, and review over 1,000 partitions.

**A million images.** No store on this machine holds a million image files (writing them would
take hours), and shards' manifests are not written by the library yet, so the index is built from
1,000,000 synthetic shard-manifest rows (``gallery.indexer.ingest_manifest_rows``: key, prompt of
12 words from 26, seed, task ID, path, sha256, 1024x1024, credits, status; every 50th row failed
with the provider's code), 1,000 shards of 1,000 rows, fed as a generator. Two processes:

* cold start: a process starts the gallery (``Gallery``, on a loopback port) on an empty cache
  folder and feeds it the rows in a thread, while a client asks for the grid's first page
  every second: the time from the process's start to the first page served, the page times
  while it indexes (they say "indexing: N so far"), the build's time and the process's peak RSS;
* warm start: ``zimage-gallery`` over the built cache folder (as a user starts it again): start-up
  until the URL, the first grid page, a search of three words, a search matching nothing, the
  last page by partition key, and its peak RSS.

**Review.** A store of 1,000 partitions x 4 candidates (``variants=4``: each candidate
stored as the engine stores it, under its unit key) written as ``benchmarks.gallery`` writes them,
served by ``zimage-gallery --review``: a
partition's review page, a verdict written through HTTP (``Authorization: Bearer``), and the zip
export of 1,000 picks, candidate 3 of each (streamed: the process's peak RSS before and after it), each against the
read-only grid page of the same store in the same run. Each figure is recorded with the load
average (1 minute) at its measurement: the machine is shared.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from benchmarks import gallery as small_bench
from benchmarks._common import BenchResult
from zimage_dagster.engine.reviews import record_verdict
from zimage_dagster.gallery import links

NAME = "gallery_scale"
TITLE = "7b. Gallery at scale (1,000,000 indexed images; review over 1,000 partitions)"
ASSET = "shards"
PAGE_S = 1.0
REVIEW_PAGE_S = 0.100
CANDIDATES = 4  # images per partition in the review store (variants=4)
VERDICT_S = 0.020
_WORDS: list[str] = list(small_bench._WORDS)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _key(n: int) -> str:
    return f"s{n // 1000:04d}-{n:07d}"


def manifest_rows(count: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Synthetic shard-manifest rows (see the module's doc)."""
    rng = random.Random(seed)
    for n in range(count):
        failed = n % 50 == 49
        key = _key(n)
        yield {
            "key": key,
            "prompt": " ".join(rng.choice(_WORDS) for _ in range(12)) + f" number {n}",
            "seed": n + 1,
            "task_id": f"task-unified-{1_700_000_000 + n}-{n:08x}",
            "path": f"{ASSET}/shard-{n // 1000:04d}/{key}.webp",
            "sha256": f"{n:064x}",
            "width": 1024,
            "height": 1024,
            "credits": 1.0,
            "status": "failed" if failed else "stored",
            "error_code": "content_policy_violation" if failed else None,
            "error_message": "blocked by moderation" if failed else None,
            "created_at": 1_700_000_000.0 + n,
        }


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def cold_start(root: str, cache: str, count: int) -> dict[str, Any]:
    """In a process of its own (``python -m benchmarks.gallery_scale cold ...``): the gallery on
    an empty cache, fed ``count`` rows in a thread while a client reads the first page."""
    from zimage_dagster.gallery import Gallery

    started = time.perf_counter()
    out: dict[str, Any] = {"samples": []}
    with Gallery(root, cache_dir=cache, refresh_s=5.0, ready_s=0) as gallery:
        index = gallery.app.state.index
        done = threading.Event()

        def feed() -> None:
            begin = time.perf_counter()
            index.ingest_manifest(ASSET, manifest_rows(count))
            out["build_s"] = time.perf_counter() - begin
            out["build_load"] = _load()
            done.set()

        grid = links.asset_path(ASSET)
        with httpx.Client(base_url=gallery.url, timeout=120) as client:
            threading.Thread(target=feed, daemon=True).start()
            while not index.indexing or index.catalog.version < 2:
                time.sleep(0.01)  # the rows are coming in
            home = client.get("/")
            out["first_page_since_start_s"] = time.perf_counter() - started
            out["home_says_indexing"] = "id='indexing'" in home.text
            while not done.wait(1.0):
                begin = time.perf_counter()
                page = client.get(grid)
                took = time.perf_counter() - begin
                if page.status_code == 200:
                    said = page.text.split("indexing: ", 1)[1].split(" ", 1)[0] if (
                        "indexing: " in page.text) else ""  # fmt: skip
                    out["samples"].append((round(took, 3), said, _load()))
                    out.setdefault("first_grid_since_start_s", time.perf_counter() - started)
            page = client.get(grid)
            out["indexing_after"] = "indexing:" in page.text
    out["rss_mib"] = _peak_rss_mib()
    return out


def _gallery(root: str, cache: str, *extra: str) -> tuple[subprocess.Popen[str], str, float]:
    script = os.path.join(os.path.dirname(sys.executable), "zimage-gallery")
    started = time.perf_counter()
    process = subprocess.Popen(
        [script, "--storage", root, "--port", "0", "--cache-dir", cache, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise RuntimeError(f"zimage-gallery did not start (exit {process.poll()})")
    return process, url, time.perf_counter() - started


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=60)


def _timed(client: httpx.Client, path: str, method: str = "GET", **kw: Any) -> float:
    begin = time.perf_counter()
    answer = client.request(method, path, **kw)
    took = time.perf_counter() - begin
    assert answer.status_code in (200, 201), f"{path}: {answer.status_code} {answer.text[:200]}"
    return took


def warm_start(root: str, cache: str, count: int) -> dict[str, Any]:
    """``zimage-gallery`` over the built index: its pages' times and peak RSS."""
    process, url, startup = _gallery(root, cache)
    grid = links.asset_path(ASSET)
    out: dict[str, Any] = {"startup_s": startup, "startup_load": _load()}
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            out["home_s"] = _timed(client, "/")
            out["first_page_s"] = _timed(client, grid)
            out["first_page_again_s"] = _timed(client, grid)
            out["first_page_load"] = _load()
            found = client.get(grid + "?q=lighthouse+harbour+dusk")
            out["search_s"] = found.elapsed.total_seconds()
            out["search_found"] = found.text.split("id='found'>", 1)[1].split(" ", 1)[0]
            out["search_load"] = _load()
            out["search_none_s"] = _timed(client, grid + "?q=zebra")
            out["search_none_load"] = _load()
            out["search_short_s"] = _timed(client, grid + "?q=zz")  # under 3 characters: a scan
            out["last_page_s"] = _timed(client, grid + f"?order=partition&page={-(-count // 48)}")
            out["last_page_load"] = _load()
            middle = f"?order=partition&page={count // 96}"
            out["middle_page_s"] = _timed(client, grid + middle)  # by number: OFFSET, half way
            nxt = client.get(grid + middle).text.split("rel='next' href='", 1)[1].split("'", 1)[0]
            out["cursor_page_s"] = _timed(client, nxt.replace("&amp;", "&"))  # the link's cursor
            out["partition_s"] = _timed(client, links.partition_url("", ASSET, _key(count // 2)))
            out["failed_filter_s"] = _timed(client, grid + "?status=failed&page=100")
            out["rss_mib"] = small_bench._peak_rss_mib(process.pid)
            out["rss_load"] = _load()
    finally:
        _stop(process)
    return out


def review(root: str, cache: str, count: int) -> dict[str, Any]:
    """Review page, verdict and zip export over ``count`` partitions of ``CANDIDATES`` each."""
    out: dict[str, Any] = {"store": small_bench.build_store(root, count, CANDIDATES)}
    token_file = os.path.join(os.path.dirname(cache), "review.token")
    with open(token_file, "w") as fh:
        fh.write("bench-review-token-" + "k9" * 16)
    process, url, _ = _gallery(
        root, cache, "--review-token-file", token_file, "--reviewer", "bench"
    )
    asset = small_bench.ASSET
    keys = [f"p{i:05d}" for i in range(count) if i % 50 != 49]
    auth = {"authorization": "Bearer bench-review-token-" + "k9" * 16}
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            grid = links.asset_path(asset)
            _timed(client, grid)  # warm
            out["grid_s"] = statistics.median(_timed(client, grid) for _ in range(20))
            out["grid_load"] = _load()
            sample = keys[:: max(1, len(keys) // 50)][:50]
            out["review_page_s"] = statistics.median(
                _timed(client, links.partition_url("", asset, k)) for k in sample
            )
            out["review_page_load"] = _load()
            out["verdict_http_s"] = statistics.median(
                _timed(client, links.verdict_url("", asset, k), "POST",
                       data={"verdict": "pick", "candidate": "2"}, headers=auth)
                for k in sample
            )  # fmt: skip
            out["verdict_load"] = _load()
            from zimage_dagster.engine.store import ImageStore

            store = ImageStore(root)
            writes = []
            for k in keys:  # every stored partition picked (the rest through the engine)
                begin = time.perf_counter()
                record_verdict(store, asset, k, "pick", reviewer="bench", candidate=2)
                writes.append(time.perf_counter() - begin)
            out["verdict_engine_s"] = statistics.median(writes)
            out["picks"] = len(keys)
            out["rss_before_export_mib"] = small_bench._peak_rss_mib(process.pid)
            begin = time.perf_counter()
            size = 0
            with client.stream("GET", links.export_url("", asset)) as answer:
                for chunk in answer.iter_bytes():
                    size += len(chunk)
            out["export_s"] = time.perf_counter() - begin
            out["export_bytes"] = size
            out["export_load"] = _load()
            out["rss_after_export_mib"] = small_bench._peak_rss_mib(process.pid)
    finally:
        _stop(process)
    return out


def run(
    quick: bool = False,
    context: dict[str, Any] | None = None,
    n: int | None = None,
    partitions: int | None = None,
) -> BenchResult:
    count = n or (100_000 if quick else 1_000_000)
    partitions = partitions or (200 if quick else 1_000)
    res = BenchResult(NAME, TITLE if count == 1_000_000 else f"7b. Gallery at scale ({count:,})")
    with tempfile.TemporaryDirectory(prefix="zimage-bench-gallery-scale-") as tmp:
        root, cache = os.path.join(tmp, "store"), os.path.join(tmp, "cache")
        os.makedirs(root)
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.gallery_scale", "cold", root, cache, str(count)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        cold = json.loads(proc.stdout.strip().splitlines()[-1])
        cold["index_mib"] = os.path.getsize(os.path.join(cache, "index.sqlite")) / 2**20
        warm = warm_start(root, cache, count)
        rev = review(os.path.join(tmp, "review"), os.path.join(tmp, "review-cache"), partitions)
    res.details = {"cold": cold, "warm": warm, "review": rev}
    samples = cold["samples"]
    worst = max((s[0] for s in samples), default=0.0)
    res.add(
        f"first grid page, {count:,} indexed", warm["first_page_s"], "s", None,
        f"load {warm['first_page_load']}", f"< {PAGE_S:g} s", warm["first_page_s"] < PAGE_S, "value",
    )  # fmt: skip
    res.add(
        "search, three words (every prompt)", warm["search_s"], "s", warm["first_page_s"],
        f"first page; load {warm['search_load']}", f"< {PAGE_S:g} s", warm["search_s"] < PAGE_S,
        "value",
    )  # fmt: skip
    res.add(
        "search matching nothing ('zebra')", warm["search_none_s"], "s", warm["first_page_s"],
        f"first page; load {warm['search_none_load']}", f"< {PAGE_S:g} s",
        warm["search_none_s"] < PAGE_S, "value",
    )  # fmt: skip
    res.add(
        "last page by partition key (read from the end)", warm["last_page_s"], "s",
        warm["first_page_s"], f"first page; load {warm['last_page_load']}", f"< {PAGE_S:g} s",
        warm["last_page_s"] < PAGE_S, "value",
    )  # fmt: skip
    res.add(
        "cold start: process start to first page served", cold["first_page_since_start_s"], "s",
        None, f"then pages while indexing: worst {worst:.2f} s", "serves while indexing",
        cold["home_says_indexing"] and bool(samples), "value",
    )  # fmt: skip
    res.add(
        f"index build, {count:,} manifest rows", cold["build_s"], "s", None,
        f"load {cold['build_load']}",
    )  # fmt: skip
    res.add(
        "peak RSS, warm gallery process", warm["rss_mib"], "MiB", cold["rss_mib"],
        "cold-start process (building)", "bounded", warm["rss_mib"] < 300, "value",
    )  # fmt: skip
    res.add(
        f"review page, {partitions:,} partitions x {CANDIDATES} candidates", rev["review_page_s"] * 1000,
        "ms", rev["grid_s"] * 1000, f"read-only grid page; load {rev['review_page_load']}",
        f"< {REVIEW_PAGE_S * 1000:g} ms", rev["review_page_s"] < REVIEW_PAGE_S,
    )  # fmt: skip
    res.add(
        "verdict written (HTTP round trip)", rev["verdict_http_s"] * 1000, "ms",
        rev["grid_s"] * 1000,
        f"read-only grid page; load {rev['verdict_load']}", f"< {VERDICT_S * 1000:g} ms",
        rev["verdict_http_s"] < VERDICT_S,
    )  # fmt: skip
    res.add(
        f"zip export of {rev['picks']:,} picks: peak RSS after", rev["rss_after_export_mib"], "MiB",
        rev["rss_before_export_mib"], f"before the export; load {rev['export_load']}",
        "bounded (< +50 MiB)", rev["rss_after_export_mib"] - rev["rss_before_export_mib"] < 50,
    )  # fmt: skip
    res.notes += [
        f"Index file: {cold['index_mib']:.0f} MiB for {count:,} rows; built in {cold['build_s']:.0f} s "
        f"while serving ({len(samples)} first-page reads meanwhile, worst {worst:.2f} s, median "
        f"{statistics.median(s[0] for s in samples) if samples else 0:.2f} s; they said "
        f"'indexing: N so far', last N {samples[-1][1] if samples else '-'}); loads "
        f"{', '.join(str(s[2]) for s in samples[:: max(1, len(samples) // 6)])}.",
        f"Warm start: URL after {warm['startup_s']:.2f} s (load {warm['startup_load']}); home "
        f"{warm['home_s']:.3f} s; first page {warm['first_page_s']:.3f} s then "
        f"{warm['first_page_again_s']:.3f} s; search 'lighthouse harbour dusk' "
        f"{warm['search_s']:.3f} s ({warm['search_found']} found: counted up to 10,000), no match "
        f"{warm['search_none_s']:.3f} s (trigram index), a two-letter word 'zz' "
        f"{warm['search_short_s']:.3f} s (a scan of every prompt); last page by key "
        f"{warm['last_page_s']:.3f} s; the middle page by number {warm['middle_page_s']:.3f} s "
        f"(OFFSET), its next page by the pager's cursor {warm['cursor_page_s']:.3f} s; "
        f"a partition's page {warm['partition_s']:.3f} s; failed "
        f"filter, page 100: {warm['failed_filter_s']:.3f} s.",
        f"Review: verdict through the engine alone (record_verdict) {rev['verdict_engine_s'] * 1000:.1f} ms "
        f"median; export {rev['export_bytes'] / 2**20:.1f} MiB in {rev['export_s']:.2f} s.",
    ]
    return res


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["cold"]:
        print(json.dumps(cold_start(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        from benchmarks.run import render_table

        print(render_table([run(quick="--quick" in sys.argv)]))
