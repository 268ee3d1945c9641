"""The gallery over a real run's store, through HTTP on a loopback port (no browser)."""

from __future__ import annotations

import doctest
import hashlib
import http.client
import importlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.gallery._support import ASSET, INJECTION, WIDE, StoredRun, get, materialize_run
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import Gallery, links, pages
from zimage_dagster.gallery.index import GalleryIndex, Query
from zimage_dagster.serving import bind_socket

CARD = re.compile(r"<article class='card' data-key='([^']*)' data-status='([^']*)'")
GRID = links.asset_path(ASSET)


@pytest.fixture(scope="module")
def run(emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    return materialize_run(emulator_server, tmp_path_factory.mktemp("gallery-store"))


@pytest.fixture
def gallery(run: StoredRun, tmp_path: Path) -> Iterator[httpx.Client]:
    with (
        Gallery(run.root, cache_dir=tmp_path / "thumbs", refresh_s=0) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client


def cards(html: str) -> dict[str, str]:
    """``storage key -> status`` of the grid's cards."""
    return dict(CARD.findall(html))


@pytest.mark.parametrize(
    "module",
    [
        importlib.import_module(f"zimage_dagster.{name}")
        for name in (
            *(f"gallery.{m}" for m in ["access", "app", "candidates", "cli", "export", "index"]),
            *(f"gallery.{m}" for m in ["keyboard", "links", "pages", "thumbnails", "verdicts"]),
            "serving",
        )
    ],
)
def test_doctests(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0


def test_the_grid_lists_every_partition_of_the_run_with_its_status(
    run: StoredRun, gallery: httpx.Client
) -> None:
    home = get(gallery, "/").text
    assert f"href='{GRID}'" in home
    assert "5 stored" in home
    assert "1 failed" in home
    shown = cards(get(gallery, GRID).text)
    assert shown == {**dict.fromkeys(run.stored, "stored"), run.failed: "failed"}


def test_search_and_filters_narrow_the_grid(run: StoredRun, gallery: httpx.Client) -> None:
    assert set(cards(get(gallery, GRID + "?q=RED").text)) == {"fox", "boat"}
    assert set(cards(get(gallery, GRID + "?q=wide+view+red").text)) == {"boat"}
    assert cards(get(gallery, GRID + "?q=zebra").text) == {}
    assert set(cards(get(gallery, GRID + "?status=failed").text)) == {run.failed}
    assert set(cards(get(gallery, GRID + f"?size={WIDE}").text)) == {"boat", "cliff"}
    assert set(cards(get(gallery, GRID + "?partition=o").text)) == {"fox", "owl", "boat"}
    ordered = list(cards(get(gallery, GRID + "?order=partition").text))
    assert ordered == sorted(ordered)
    first = cards(get(gallery, GRID + "?order=partition&per_page=4").text)
    second = cards(get(gallery, GRID + "?order=partition&per_page=4&page=2").text)
    assert list(first) + list(second) == ordered


def test_a_daily_assets_dates_filter_the_grid(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    for date in ("2026-11-01", "2026-11-02"):
        for key in ("hero", "banner"):
            record = ImageRecord(
                seed=1, task_id=f"t-{date}-{key}", prompt=key, partition_key=f"{date}|{key}"
            )
            store.save("daily", f"{date}|{key}", b"x", "png", to_provenance(record))
    daily = GalleryIndex(store).snapshot().assets["daily"]
    assert daily.dates() == ["2026-11-02", "2026-11-01"]
    found = daily.select(Query(date="2026-11-01")).items
    assert sorted(i.partition_key for i in found) == ["2026-11-01|banner", "2026-11-01|hero"]
    with Gallery(store, cache_dir=tmp_path / "c") as server, httpx.Client() as client:
        grid = client.get(server.url + links.asset_path("daily") + "?date=2026-11-02").text
        assert set(cards(grid)) == {"2026-11-02|banner", "2026-11-02|hero"}
        page = client.get(server.url + links.partition_url("", "daily", "2026-11-02|hero"))
        assert page.status_code == 200
        assert "<h1>2026-11-02|hero <span" in page.text


def test_a_failed_partition_page_shows_the_providers_code_and_message(
    run: StoredRun, gallery: httpx.Client
) -> None:
    page = get(gallery, links.partition_url("", ASSET, run.failed)).text
    assert "The provider could not make this image." in page
    assert run.provider_code in page
    assert pages._text(run.provider_message) in page
    assert "id='image'" not in page


def test_a_partition_page_shows_the_image_and_everything_to_reproduce_it(
    run: StoredRun, gallery: httpx.Client, emulator_server: EmulatorServer
) -> None:
    record = json.loads((run.root / ASSET / "boat.json").read_text())
    page = get(gallery, links.partition_url("", ASSET, "boat")).text
    for value in (record["task_id"], record["sha256"], str(record["seed"]), record["model"]):
        assert value in page
    assert f"width='{record['width']}' height='{record['height']}'" in page
    shown = re.search(r"<pre id='request'>(.*?)</pre>", page, re.S)
    assert shown is not None
    request = json.loads(unescape(shown[1]))
    sent = next(t for t in emulator_server.tasks() if t["id"] == record["task_id"])["request"]
    assert (request["prompt"], request["size"], request["seed"]) == (
        sent["prompt"],
        sent["size"],
        sent["seed_sent"],
    )
    image = get(gallery, links.image_url("", ASSET, "boat"))
    assert image.headers["content-type"] == f"image/{record['format'].lower()}"  # WEBP, PNG...
    assert hashlib.sha256(image.content).hexdigest() == record["sha256"] == run.sha256("boat")


def test_the_injection_prompt_is_text_on_every_page(run: StoredRun, gallery: httpx.Client) -> None:
    for path in ("/", GRID, links.partition_url("", ASSET, "hen")):
        page = get(gallery, path)
        # The one script element is the gallery's own file: no inline script at all.
        assert re.findall(r"<script[^>]*>", page.text) == ["<script src='/-/review.js' defer>"]
        assert "</script>" in page.text.split("<body>", 1)[0]
        assert "<img src=x" not in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self';" in policy
        assert "unsafe-inline" not in policy
    assert pages._text(INJECTION) in get(gallery, links.partition_url("", ASSET, "hen")).text


def test_thumbnails_are_made_once_and_never_the_full_image(
    run: StoredRun, gallery: httpx.Client, tmp_path: Path
) -> None:
    grid = get(gallery, GRID).text
    sources = re.findall(r"<img src='([^']+)' loading='lazy'", grid)
    assert len(sources) == len(run.stored)
    assert all("/-/thumbnail/" in s for s in sources)
    for src in sources:
        with Image.open(io.BytesIO(get(gallery, src).content)) as thumb:
            assert max(thumb.size) <= 320
    assert get(gallery, "/-/stats").json()["thumbnails_generated"] == len(run.stored)
    for src in sources:  # the second page load decodes nothing
        get(gallery, src)
    stats = get(gallery, "/-/stats").json()
    assert (stats["thumbnails_generated"], stats["thumbnails_from_cache"]) == (5, 5)
    # Another gallery process on the same cache folder decodes nothing either.
    with Gallery(run.root, cache_dir=tmp_path / "thumbs") as again, httpx.Client() as client:
        for src in sources:
            get(client, again.url + src)
        assert get(client, again.url + "/-/stats").json()["thumbnails_generated"] == 0


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of ``..``)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_traversal_attempts_are_refused(run: StoredRun, gallery: httpx.Client) -> None:
    secret = run.root.parent / "outside-secret.txt"
    secret.write_text("TOP-SECRET-OUTSIDE")
    ledger_file = f"{run.failed}.json"
    attempts = [
        f"/assets/{ASSET}/-/image/..%2F..%2Foutside-secret.txt",
        f"/assets/{ASSET}/-/image/../../outside-secret.txt",
        f"/assets/{ASSET}/-/image/%2e%2e",
        f"/assets/{ASSET}/-/image/{ASSET}%2F..%2F..%2Foutside-secret.txt",
        "/assets/..%2F/-/image/outside-secret.txt",
        "/assets/../../outside-secret.txt",
        f"/assets/_ledger/{ASSET}/-/image/{run.failed}",
        f"/assets/_ledger/{ASSET}/-/partition/{ledger_file}",
        f"/assets/{ASSET}/-/image/{run.failed}",  # failed: no image
        f"/assets/{ASSET}/-/image/fox.json",
        f"/assets/{ASSET}/-/thumbnail/%2Fetc%2Fpasswd",
        "/assets/%2Fetc/-/image/passwd",
        "/-/gallery.css/../../outside-secret.txt",
    ]
    base = str(gallery.base_url).rstrip("/")
    for path in attempts:
        status, body = _raw_get(base, path)
        assert status in (400, 404), f"{path}: {status}"
        assert b"TOP-SECRET" not in body
        assert b'"task_id"' not in body


def test_a_symlink_out_of_the_root_is_not_followed(run: StoredRun, tmp_path: Path) -> None:
    fox = ImageStore(run.root).find(ASSET, "fox")
    assert fox is not None
    outside = tmp_path / f"outside{fox.path.suffix}"
    outside.write_bytes(fox.path.read_bytes())
    root = tmp_path / "store"
    store = ImageStore(root)
    store.write_provenance(ASSET, "evil", json.loads((run.root / ASSET / "fox.json").read_text()))
    (root / ASSET / f"evil{fox.path.suffix}").symlink_to(outside)
    assert store.find(ASSET, "evil") is not None  # the store itself would find the file
    with Gallery(root, cache_dir=tmp_path / "c") as server, httpx.Client() as client:
        assert client.get(server.url + links.image_url("", ASSET, "evil")).status_code == 404
        assert client.get(server.url + links.thumbnail_url("", ASSET, "evil")).status_code == 404


def test_no_api_key_or_callback_token_is_served(run: StoredRun, tmp_path: Path) -> None:
    token = "cb-token-" + "s3cr3t" * 6
    ledger = TaskLedger(ImageStore(run.root))
    ledger.record_submitted(
        ASSET,
        "pending_one",
        task_id="task-unified-1700000000-zzzzzzzz",
        request={
            "prompt": "a pending fox",
            "seed": 3,
            "size": "1:1",
            "callback_url": f"https://hooks.example.com/callbacks/{token}",
        },
    )
    try:
        with Gallery(run.root, cache_dir=tmp_path / "c") as server, httpx.Client() as client:
            seen: set[str] = set()
            todo = ["/", GRID, "/-/stats"]
            bodies = []
            while todo:
                path = todo.pop()
                if path in seen or not path.startswith("/"):
                    continue
                seen.add(path)
                answer = client.get(server.url + path)
                bodies.append(answer.content)
                if answer.headers.get("content-type", "").startswith("text/html"):
                    todo += [
                        unescape(h) for h in re.findall(r"(?:href|src)='([^']+)'", answer.text)
                    ]
            assert any(b"a pending fox" in b for b in bodies)
            assert len(seen) > 15
            for body in bodies:
                assert run.api_key.encode() not in body
                assert token.encode() not in body
    finally:
        ledger.remove(ASSET, "pending_one")


def test_the_console_script_prints_its_url_first_and_serves(run: StoredRun, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "zimage-gallery"
    command = [str(script), "--storage", str(run.root), "--port", "0", "--cache-dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        with httpx.Client(timeout=30) as client:
            assert set(cards(get(client, url + GRID).text)) == {*run.stored, run.failed}
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_console_script_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    busy = bind_socket()
    try:
        port = busy.getsockname()[1]
        script = Path(sys.executable).parent / "zimage-gallery"
        command = [str(script), "--storage", str(tmp_path), "--port", str(port)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"zimage-gallery: cannot listen on 127.0.0.1:{port}: the port is in use (another server "
        "is on it); choose another with --port, or --port 0 for a free one"
    ]


def test_a_local_rebuild_reads_only_what_changed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    ledger = TaskLedger(store)
    for key in ("a", "b", "c"):
        store.save(
            "imgs", key, b"x", "png", to_provenance(ImageRecord(seed=1, task_id=key, prompt=key))
        )
    ledger.record_submitted(
        "imgs", "d", task_id="task-unified-1-dddddddd", request={"prompt": "d", "seed": 4}
    )
    index = GalleryIndex(store, refresh_s=0)
    before = dict(index.snapshot().assets["imgs"].by_key)
    read_first = index.indexer.files_read
    store.save(
        "imgs", "b", b"y", "png", to_provenance(ImageRecord(seed=2, task_id="b2", prompt="new b"))
    )
    store.delete("imgs", "c")
    ledger.mark_failed("imgs", "d", "task-unified-1-dddddddd", "content_policy_violation", "no")
    after = index.snapshot().assets["imgs"].by_key
    assert sorted(after) == ["a", "b", "d"]
    # The index lives in a file: the second pass read b's record and d's entry, nothing else.
    assert (read_first, index.indexer.files_read - read_first) == (4, 2)
    assert after["a"].record == before["a"].record
    assert after["b"].record is not None
    assert after["b"].record.prompt == "new b"
    assert (before["d"].status, after["d"].status) == ("pending", "failed")
