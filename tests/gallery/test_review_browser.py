"""Review in Debian's Chromium, with the keyboard: sign in, next, pick, reject, undo, export.

A real run's store (copied per module), the gallery with a review token, Playwright. Expected
values come from the store and the review records. The screenshot of the review page goes to a
temp folder; with ``ZIMAGE_UPDATE_SCREENSHOTS=1`` also to ``docs/gallery-review.png``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, FloatRect, Page, Route, ViewportSize, expect

from tests.gallery._support import ASSET, REVIEW_TOKEN, StoredRun, browser_page, materialize_run
from tests.ui._support import REPO_ROOT, chromium_executable, launched_chromium
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.reviews import current_verdicts, read_records
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import Gallery, keyboard, links, pages
from zimage_dagster.gallery.access import Visitor
from zimage_dagster.gallery.candidates import Candidate
from zimage_dagster.gallery.index import GalleryItem

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

UI_TIMEOUT_MS = 30_000
#: The screen the review page must fit: every fact above the fold at 1000 px high.
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}
TOKEN = REVIEW_TOKEN


@pytest.fixture(scope="module")
def run(emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    chromium_executable()  # fail before the slow part when the browser is missing
    return materialize_run(emulator_server, tmp_path_factory.mktemp("review-browser"))


@pytest.fixture(scope="module")
def browser(run: StoredRun) -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


def _page(browser: Browser, tmp_path: Path, *, script: bool = True) -> AbstractContextManager[Page]:
    return browser_page(browser, tmp_path, VIEWPORT, "review", script=script)


def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), animations="disabled")
    if os.environ.get("ZIMAGE_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, REPO_ROOT / "docs" / name)


def _boxes(page: Page, selector: str) -> list[FloatRect]:
    found = page.locator(selector)
    boxes = [found.nth(n).bounding_box() for n in range(found.count())]
    assert all(b is not None for b in boxes)
    return [b for b in boxes if b is not None]


def _above_the_fold(page: Page, selector: str) -> int:
    """How many elements match; fails if one ends below the viewport."""
    boxes = _boxes(page, selector)
    for box in boxes:
        assert box["y"] + box["height"] <= VIEWPORT["height"], (selector, box)
    return len(boxes)


def _sign_in(page: Page, gallery: Gallery) -> None:
    page.goto(gallery.url + "/")
    page.get_by_role("link", name="sign in to review").click()
    page.get_by_label("Review token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_contain_text("reviewing as ana")


def _on(page: Page, key: str) -> None:
    expect(page.locator("h1")).to_contain_text(key)


def test_a_keyboard_review_next_pick_reject_undo_and_export(
    browser: Browser, review: Gallery, root: Path, tmp_path: Path
) -> None:
    store = ImageStore(root)
    keys = sorted(store.partitions(ASSET))  # the stored ones, in the grid's partition order
    with _page(browser, tmp_path) as page:
        _sign_in(page, review)
        page.goto(review.url + links.asset_path(ASSET) + "?order=partition")
        page.locator("article.card a.pic").first.click()
        _on(page, keys[0])

        # Fit to the screen: the image and every fact above the fold of a 1000 px screen.
        page.locator("#image").evaluate("i => i.decode()")
        assert _above_the_fold(page, "#image") == 1
        assert _above_the_fold(page, "tr[data-fact]") >= 15
        page.keyboard.press("1")  # pick candidate 1 of the first partition
        expect(page.locator("#verdict")).to_have_attribute("data-review", "picked")
        expect(page.locator("figure.candidate.picked")).to_have_count(1)
        _screenshot(page, tmp_path, "gallery-review.png")
        page.keyboard.press("j")  # next
        _on(page, keys[1])
        page.locator("textarea[name=note]").fill("too dark <b>really</b>")
        page.locator("body").click(position={"x": 5, "y": 900})  # leave the note field
        page.keyboard.press("x")
        expect(page.locator("#verdict")).to_have_attribute("data-review", "rejected")
        expect(page.locator("#verdict-note")).to_have_text("too dark <b>really</b>")
        page.keyboard.press("ArrowRight")
        _on(page, keys[2])
        page.keyboard.press("1")
        expect(page.locator("#verdict")).to_have_attribute("data-review", "picked")
        page.keyboard.press("u")  # undo it: unreviewed again
        expect(page.locator("#verdict")).to_have_attribute("data-review", "unreviewed")
        page.keyboard.press("1")
        expect(page.locator("#verdict")).to_have_attribute("data-review", "picked")
        page.keyboard.press("k")  # back to the rejected one
        _on(page, keys[1])
        expect(page.locator("#verdict")).to_have_attribute("data-review", "rejected")
        page.keyboard.press("ArrowLeft")
        _on(page, keys[0])

        verdicts = current_verdicts(store, ASSET)
        assert {k: v.verdict for k, v in verdicts.items()} == {
            keys[0]: "pick",
            keys[1]: "reject",
            keys[2]: "pick",
        }
        assert [r.verdict for r in read_records(store, ASSET, keys[2])] == ["pick", "undo", "pick"]

        page.get_by_role("link", name="grid", exact=True).click()
        with page.expect_download() as download_info:
            page.locator("#export").click()
        archive = zipfile.ZipFile(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert [r["key"] for r in rows] == [keys[0], keys[2]]
    for row in rows:
        found = store.find(ASSET, row["key"])
        assert found is not None
        data = archive.read(row["file"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"] == found.sha256
        assert data == found.path.read_bytes()
        assert row["task_id"] == found.provenance["task_id"]
        assert row["seed"] == str(found.provenance["seed"])
        assert row["reviewer"] == "ana"


def test_without_script_the_review_works_with_plain_forms(
    browser: Browser, review: Gallery, root: Path, tmp_path: Path
) -> None:
    store = ImageStore(root)
    key = sorted(store.partitions(ASSET))[-1]
    with _page(browser, tmp_path, script=False) as page:
        _sign_in(page, review)
        page.goto(review.url + links.partition_url("", ASSET, key) + "?order=partition")
        page.get_by_role("button", name="Pick 1").click()
        expect(page.locator("#verdict")).to_have_attribute("data-review", "picked")
        page.get_by_role("button", name="Undo my last verdict (u)").click()
        expect(page.locator("#verdict")).to_have_attribute("data-review", "unreviewed")
        expect(page.locator("a[rel=next]")).to_have_count(0)  # the last key
        page.locator("a[rel=prev]").click()
        expect(page.locator("h1")).not_to_contain_text(key)
    assert [r.verdict for r in read_records(store, ASSET, key)] == ["pick", "undo"]


def test_a_large_image_is_fitted_to_the_screen_beside_its_facts(
    browser: Browser, tmp_path: Path
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1536, 1536), "teal").save(buf, "PNG")
    data = buf.getvalue()
    store = ImageStore(tmp_path / "big")
    record = ImageRecord(
        seed=5,
        task_id="task-big",
        prompt="a big teal square",
        width=1536,
        height=1536,
        format="PNG",
        sha256=hashlib.sha256(data).hexdigest(),
        size_requested="1536x1536",
    )
    store.save("big", "square", data, "png", to_provenance(record))
    with (
        Gallery(store, cache_dir=tmp_path / "c") as server,
        _page(browser, tmp_path) as page,
    ):
        page.goto(server.url + links.partition_url("", "big", "square"))
        natural = page.locator("#image").evaluate(
            "i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])"
        )
        assert natural == [1536, 1536]
        assert _above_the_fold(page, "#image") == 1
        assert _above_the_fold(page, "tr[data-fact]") >= 10
        box = page.locator("#image").bounding_box()
        assert box is not None
        assert box["height"] > 600  # fitted, not a thumbnail
        assert page.locator("a#original-0").get_attribute("href") == links.image_url(
            "", "big", "square"
        )


def test_eight_candidates_fit_side_by_side_and_8_picks_the_last(
    browser: Browser, tmp_path: Path
) -> None:
    """The layout ``variants=8`` will need, rendered from the page function with eight
    candidates (all the same image today) and served through Chromium's request routing."""
    buf = io.BytesIO()
    Image.new("RGB", (1024, 1024), "olive").save(buf, "PNG")
    record = ImageRecord(seed=9, task_id="task-8", prompt="eight", width=1024, height=1024)
    item = GalleryItem(("hero",), "fox", "stored", record)
    html = pages.partition_page(
        item,
        visitor=Visitor(review=True, reviewer="ana", csrf="c" * 64),
        candidates=[Candidate(item, n, record) for n in range(8)],
    )
    base = "http://127.0.0.1:9"  # never reached: every request is answered by the route
    posted: list[str] = []

    def answer(route: Route) -> None:
        url = route.request.url
        if route.request.method == "POST":
            posted.append(route.request.post_data or "")
            route.fulfill(status=204)
        elif url.endswith("/-/gallery.css"):
            route.fulfill(body=pages.CSS, content_type="text/css")
        elif url.endswith("/-/review.js"):
            route.fulfill(body=keyboard.SCRIPT, content_type="text/javascript")
        elif "/-/image/" in url:
            route.fulfill(body=buf.getvalue(), content_type="image/png")
        else:
            route.fulfill(body=html, content_type="text/html")

    with _page(browser, tmp_path) as page:
        page.route(f"{base}/**", answer)
        page.goto(base + links.partition_url("", "hero", "fox"))
        assert _above_the_fold(page, "figure.candidate img") == 8
        assert _above_the_fold(page, "figure.candidate button") == 8
        assert _above_the_fold(page, "tr[data-fact]") >= 8
        widths = {round(b["width"]) for b in _boxes(page, "figure.candidate")}
        assert len(widths) == 1  # one grid of equal columns
        page.keyboard.press("8")
        page.wait_for_timeout(200)
    assert len(posted) == 1
    assert "verdict=pick" in posted[0]
    assert "candidate=7" in posted[0]
