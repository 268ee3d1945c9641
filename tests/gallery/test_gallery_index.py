"""The gallery's index file (SQLite, in its cache folder): incremental passes, pages served while
it is built, searches, a damaged file rebuilt, shard manifests' rows, bounded memory."""

from __future__ import annotations

import os
import re
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import Gallery, catalog, indexer, links
from zimage_dagster.gallery.index import INDEX_FILE, GalleryIndex, Query
from zimage_dagster.gallery.items import cursor_of

CARD = re.compile(r"data-key='([^']*)' data-status='([^']*)'")


def _save(store: ImageStore, key: str, prompt: str, when: float = 1.0) -> None:
    record = ImageRecord(seed=1, task_id=f"t-{key}", prompt=prompt, created_at=when)
    store.save("imgs", key, b"x", "png", to_provenance(record))


def _keys(index: GalleryIndex, query: Query | None = None) -> list[str]:
    page = index.snapshot().assets["imgs"].select(query or Query(order="partition"))
    return [i.partition_key for i in page.items]


def test_a_new_image_shows_and_a_deleted_one_goes_without_reading_the_rest(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "store")
    for n in range(20):
        _save(store, f"k{n:02d}", f"prompt {n}")
    index = GalleryIndex(store, refresh_s=0, cache_dir=tmp_path / "cache")
    try:
        assert len(_keys(index)) == 20
        assert index.indexer.files_read == 20
        _save(store, "new", "a fresh fox")
        store.delete("imgs", "k03")
        assert "new" in _keys(index)
        assert "k03" not in _keys(index)
        assert index.indexer.files_read == 21  # the new record alone was read
        # A pass with nothing changed reads nothing.
        index.snapshot()
        assert index.indexer.files_read == 21
    finally:
        index.close()
    # The next gallery process starts from the file: nothing changed, nothing read.
    again = GalleryIndex(store, refresh_s=0, cache_dir=tmp_path / "cache")
    try:
        assert len(_keys(again)) == 20
        assert again.indexer.files_read == 0
        store.delete("imgs", "k04")  # removed while no gallery ran
        assert "k04" not in _keys(again)
    finally:
        again.close()


def test_a_ledger_entry_moves_a_partition_to_failed_and_back(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    ledger = TaskLedger(store)
    ledger.record_submitted("imgs", "owl", task_id="task-unified-1-aaaaaaaa",
                            request={"prompt": "an owl", "seed": 2})  # fmt: skip
    index = GalleryIndex(store, refresh_s=0)
    try:
        assert index.snapshot().assets["imgs"].get("owl").status == "pending"  # type: ignore[union-attr]
        ledger.mark_failed(
            "imgs", "owl", "task-unified-1-aaaaaaaa", "content_policy_violation", "no"
        )
        item = index.snapshot().assets["imgs"].get("owl")
        assert item is not None
        assert (item.status, item.error_code) == (
            "failed",
            "content_policy_violation",
        )
        assert index.snapshot().assets["imgs"].counts() == {"failed": 1}
    finally:
        index.close()


def test_a_search_over_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ImageStore(tmp_path)
    prompts = {"a": "A Red Fox in snow", "b": "a red owl", "c": "a grey fox", "d": "the sea"}
    for n, (key, prompt) in enumerate(sorted(prompts.items())):
        _save(store, key, prompt, when=float(n))
    index = GalleryIndex(store, refresh_s=0)
    try:
        assert _keys(index, Query(q="fox RED")) == ["a"]  # every word, any case
        assert _keys(index, Query(q="fox")) == ["c", "a"]  # newest first
        assert _keys(index, Query(q="ox", order="partition")) == ["a", "c"]  # inside words
        assert _keys(index, Query(q="zebra")) == []
        assert _keys(index, Query(partition="B")) == ["b"]
        # A search counts its matches up to a cap; the pager still goes on while pages are full.
        monkeypatch.setattr(catalog, "COUNT_CAP", 2)
        page = index.snapshot().assets["imgs"].select(Query(q="a", per_page=1))
        assert (page.total, page.capped, page.pages) == (2, True, 2)
        exact = index.snapshot().assets["imgs"].select(Query(per_page=1))
        assert (exact.total, exact.capped) == (4, False)  # no search: counted exactly
    finally:
        index.close()


@pytest.mark.parametrize("damage", ["garbage", "other-root", "removed"])
def test_a_damaged_or_foreign_index_file_is_built_again(tmp_path: Path, damage: str) -> None:
    store = ImageStore(tmp_path / "store")
    _save(store, "fox", "a fox")
    cache = tmp_path / "cache"
    first = GalleryIndex(store, refresh_s=0, cache_dir=cache)
    assert _keys(first) == ["fox"]
    first.close()
    path = cache / INDEX_FILE
    if damage == "garbage":
        path.write_bytes(b"not a database" * 1000)
    elif damage == "other-root":
        other = GalleryIndex(ImageStore(tmp_path / "other"), refresh_s=0, cache_dir=cache)
        other.snapshot()
        other.close()
    else:
        path.unlink()
    _save(store, "owl", "an owl")
    again = GalleryIndex(store, refresh_s=0, cache_dir=cache)
    try:
        assert _keys(again) == ["fox", "owl"]
        assert again.catalog.rebuilt is (damage != "removed")
        assert again.indexer.files_read == 2  # read whole again
    finally:
        again.close()


def test_pages_are_served_while_the_first_pass_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(tmp_path / "store")
    for n in range(30):
        _save(store, f"k{n:02d}", f"prompt {n}")
    monkeypatch.setattr(indexer, "BATCH", 10)
    release, held = threading.Event(), threading.Event()
    ingest = indexer.Indexer.ingest

    def slow_ingest(self: indexer.Indexer, *args: Any, **kwargs: Any) -> None:
        ingest(self, *args, **kwargs)
        if self.passes == 0:  # the first pass stops after its first batch until released
            held.set()
            assert release.wait(30)

    monkeypatch.setattr(indexer.Indexer, "ingest", slow_ingest)
    with (
        Gallery(store, cache_dir=tmp_path / "cache", refresh_s=0.05, ready_s=0) as gallery,
        httpx.Client(base_url=gallery.url, timeout=30) as client,
    ):
        assert held.wait(30)
        home = client.get("/")
        assert home.status_code == 200
        assert "indexing: 10 so far" in home.text
        grid = client.get(links.asset_path("imgs"))
        assert len(CARD.findall(grid.text)) == 10
        assert "indexing: 10 so far" in grid.text
        release.set()
        for _ in range(300):
            stats = client.get("/-/stats").json()
            if not stats["indexing"] and stats["partitions"] == 30:
                break
            threading.Event().wait(0.05)
        grid = client.get(links.asset_path("imgs"))
        assert len(CARD.findall(grid.text)) == 30
        assert "indexing:" not in grid.text


def _rows(count: int) -> Iterator[dict[str, Any]]:
    for n in range(count):
        failed = n % 50 == 49
        yield {
            "key": f"row-{n:06d}",
            "prompt": f"a lighthouse by the harbour, number {n}",
            "seed": n + 1,
            "task_id": f"task-unified-1-{n:08d}",
            "path": f"shard-{n // 1000:04d}/row-{n:06d}.webp",
            "sha256": f"{n:064x}",
            "width": 1024,
            "height": 1024,
            "credits": 1.0,
            "status": "failed" if failed else "stored",
            "error_code": "content_policy_violation" if failed else None,
            "error_message": "blocked <b>here</b>" if failed else None,
        }


def test_manifest_rows_are_indexed_in_bounded_memory(tmp_path: Path) -> None:
    count = 50_000
    index = GalleryIndex(ImageStore(tmp_path / "store"), refresh_s=0, cache_dir=tmp_path / "c")
    tracemalloc.start()
    try:
        assert index.ingest_manifest("shards", _rows(count)) == count
        shards = index.snapshot().assets["shards"]
        page = shards.select(Query(q="harbour 4999"))
        failed = shards.select(Query(status="failed", order="partition", page=3))
        last = shards.select(Query(order="partition", page=10_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert shards.counts() == {"stored": count - count // 50, "failed": count // 50}
        # No time in the rows: newest first falls back to the key order.
        expected = [
            f"row-{n:06d}" for n in (4999, 14999, 24999, 34999, 44999, *range(49990, 50000))
        ]
        assert [i.partition_key for i in page.items] == expected
        assert failed.items[0].partition_key == "row-004849"
        assert failed.items[0].error_code == "content_policy_violation"
        assert last.page == last.pages
        assert last.items[-1].partition_key == "row-049999"
        print(f"{count:,} manifest rows: tracemalloc peak {peak / 2**20:.1f} MiB")
        # The rows as a list alone would take about 40 MiB; the index holds a batch at a time.
        assert peak < 4 * 2**20
    finally:
        index.close()


def test_a_failed_manifest_row_shows_the_providers_message(tmp_path: Path) -> None:
    with (
        Gallery(ImageStore(tmp_path / "store"), cache_dir=tmp_path / "c", refresh_s=0) as gallery,
        httpx.Client(base_url=gallery.url, timeout=30) as client,
    ):
        gallery.app.state.index.ingest_manifest("shards", _rows(50))
        grid = client.get(links.asset_path("shards") + "?status=failed").text
        assert CARD.findall(grid) == [("row-000049", "failed")]
        page = client.get(links.partition_url("", "shards", "row-000049")).text
        assert "content_policy_violation" in page
        assert "blocked &lt;b&gt;here&lt;/b&gt;" in page
        assert "<b>here" not in page


def test_an_object_store_is_read_whole_but_only_changed_records_are_parsed(
    tmp_path: Path,
) -> None:
    store = ImageStore(f"memory://gallery-index-{os.getpid()}-{tmp_path.name}")
    try:
        for n in range(5):
            _save(store, f"k{n}", f"prompt {n}")
        index = GalleryIndex(store, refresh_s=0)
        try:
            assert len(_keys(index)) == 5
            _save(store, "k1", "a new prompt")  # rewritten: new bytes
            store.delete("imgs", "k2")
            assert _keys(index) == ["k0", "k1", "k3", "k4"]
            assert index.indexer.files_read == 6  # 5, then k1's new record alone
            assert index.snapshot().assets["imgs"].get("k1").prompt == "a new prompt"  # type: ignore[union-attr]
        finally:
            index.close()
    finally:
        store.root.fs.rm(store.root.path, recursive=True)


_PROMPTS = [
    "A Red Fox in snow",
    "a red owl at dusk",
    "a grey fox, STRASSE lights",
    "Straße at night",
    'the "quoted" sea',
    "ÉCOLE de la mer",
    "fox",
    "an ox and a bee",
]


def _search_catalog(path: Path, fts: bool) -> tuple[catalog.Catalog, int]:
    cat = catalog.Catalog(path, root="/store", fts=fts)
    asset = cat.asset_id(("imgs",))
    rows = [
        {"key": f"k{n:02d}", "prompt": _PROMPTS[n % len(_PROMPTS)], "created_at": float(n % 7)}
        for n in range(40)
    ]
    cat.put_rows(asset, [indexer.manifest_fields(str(r["key"]), r) for r in rows])
    cat.commit()
    return cat, asset


@pytest.mark.parametrize("fts", [True, False], ids=["trigram", "scan"])
def test_a_search_means_the_same_with_or_without_the_trigram_index(
    tmp_path: Path, fts: bool
) -> None:
    cat, asset = _search_catalog(tmp_path / "i.sqlite", fts)
    try:
        assert cat.fts is fts
        for q in ["fox", "FOX red", "ox", "x", "a", "strasse", "STRASSE", "école", "ÉCOLE MER",
                  '"quoted"', 'quoted" sea', "k0", "k03 red", "zebra", "fox zebra", "ox bee",
                  "OX BE", "e d"]:  # fmt: skip
            words = q.casefold().split()
            for order in ("newest", "partition"):
                got = [
                    i.partition_key
                    for i in cat.select(asset, Query(q=q, order=order, per_page=500)).items
                ]
                everything = list(cat.iterate(asset, order))
                want = [i.partition_key for i in everything
                        if all(w in i.search_text for w in words)]  # fmt: skip
                assert got == want, (q, order)
        # What each word means is "a substring of the prompt or key, any case": Straße folds
        # to strasse, so "strasse" finds both spellings.
        found = cat.select(asset, Query(q="strasse", per_page=500)).items
        assert {i.prompt for i in found} == {"a grey fox, STRASSE lights", "Straße at night"}
    finally:
        cat.close()


def test_without_a_trigram_tokenizer_the_index_scans_and_a_file_is_built_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert catalog.trigram_supported()  # SQLite 3.34+ here: the default path uses the index
    store = ImageStore(tmp_path / "store")
    _save(store, "fox", "a red fox")
    cache = tmp_path / "cache"
    with_fts = GalleryIndex(store, refresh_s=0, cache_dir=cache)
    assert with_fts.catalog.fts
    assert _keys(with_fts, Query(q="RED fox")) == ["fox"]
    with_fts.close()
    monkeypatch.setattr(catalog, "trigram_supported", lambda: False)
    without = GalleryIndex(store, refresh_s=0, cache_dir=cache)
    try:
        assert not without.catalog.fts
        assert without.catalog.rebuilt  # the file held a table this SQLite cannot read
        assert _keys(without, Query(q="RED fox")) == ["fox"]
    finally:
        without.close()


def test_an_index_row_changed_or_removed_leaves_the_trigram_index(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    _save(store, "k1", "a red fox")
    _save(store, "k2", "a red owl")
    index = GalleryIndex(store, refresh_s=0)
    try:
        assert _keys(index, Query(q="red")) == ["k1", "k2"]
        _save(store, "k1", "a blue whale")
        store.delete("imgs", "k2")
        assert _keys(index, Query(q="red")) == []
        assert _keys(index, Query(q="whale")) == ["k1"]
        integrity = index.catalog._writer.execute(
            "INSERT INTO items_fts (items_fts, rank) VALUES ('integrity-check', 1)"
        )
        assert integrity is not None  # raises when the index and the rows disagree
    finally:
        index.close()


@pytest.mark.parametrize("q", ["", "prompt", "p"], ids=["all", "trigram-search", "scan-search"])
@pytest.mark.parametrize("order", ["newest", "partition"])
def test_pages_by_cursor_walk_the_whole_order_both_ways(tmp_path: Path, order: str, q: str) -> None:
    cat = catalog.Catalog(tmp_path / "i.sqlite", root="/store")
    asset = cat.asset_id(("imgs",))
    rows = [{"key": f"k{n:03d}", "prompt": f"prompt {n}", "created_at": float(n % 9)}
            for n in range(103)]  # fmt: skip
    cat.put_rows(asset, [indexer.manifest_fields(str(r["key"]), r) for r in rows])
    cat.commit()
    try:
        want = [i.partition_key for i in cat.iterate(asset, order)]
        query = Query(q=q, order=order, per_page=10)
        pages = [cat.select(asset, query)]
        while pages[-1].after:
            nxt = pages[-1]
            query = Query(q=q, order=order, per_page=10, page=nxt.page + 1, after=nxt.after)
            pages.append(cat.select(asset, query))
        assert [i.partition_key for p in pages for i in p.items] == want
        assert [p.page for p in pages] == list(range(1, 12))
        assert (pages[-1].page, pages[-1].pages, len(pages[-1].items)) == (11, 11, 3)
        # The last page by number is the same rows (read from the end, without OFFSET).
        last = cat.select(asset, Query(q=q, order=order, per_page=10, page=11))
        assert last.items == pages[-1].items
        assert last.before == pages[-1].before
        # Back, by the previous pages' cursors, to the first page.
        back = [pages[-1]]
        while back[-1].before:
            prev = back[-1]
            query = Query(q=q, order=order, per_page=10, page=prev.page - 1, before=prev.before)
            back.append(cat.select(asset, query))
        assert [p.items for p in back[::-1]] == [p.items for p in pages]
        assert back[-1].page == 1
        # A cursor past the last row: an empty page, and no next link after it.
        beyond = Query(q=q, order=order, per_page=10, page=5, after=cursor_of(pages[-1].items[-1]))
        end = cat.select(asset, beyond)
        assert (list(end.items), end.page, end.pages, end.after) == ([], 5, 5, "")
        # A bookmarked cursor's page keeps its rows when a newer partition comes in.
        mark = Query(q=q, order=order, per_page=10, page=4, after=pages[2].after)
        cat.put_rows(
            asset, [indexer.manifest_fields("a-new", {"prompt": "prompt new", "created_at": 99.0})]
        )
        cat.commit()
        assert cat.select(asset, mark).items == pages[3].items
    finally:
        cat.close()


def test_the_grids_pager_links_carry_cursors(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    for n in range(5):
        _save(store, f"k{n}", f"prompt {n}", when=float(n))
    with (
        Gallery(store, cache_dir=tmp_path / "cache", refresh_s=0) as gallery,
        httpx.Client(base_url=gallery.url, timeout=30) as client,
    ):
        seen: list[str] = []
        url: str | None = links.asset_path("imgs") + "?per_page=2&q=prompt"
        while url:
            page = client.get(url.replace("&amp;", "&")).text
            seen += [k for k, _ in CARD.findall(page)]
            nxt = re.search(r"rel='next' href='([^']*)'", page)
            url = nxt.group(1) if nxt else None
            if url:
                assert "after=" in url
                assert "q=prompt" in url
        assert seen == ["k4", "k3", "k2", "k1", "k0"]
        prev = re.search(r"rel='prev' href='([^']*)'", page)
        assert prev is not None
        assert "before=" in prev.group(1)
        # Back to page 1: no cursor in the link.
        second = client.get(prev.group(1).replace("&amp;", "&")).text
        first = re.search(r"rel='prev' href='([^']*)'", second)
        assert first is not None
        assert "before=" not in first.group(1)
