"""The gallery as a user sees it: a real run's store, the gallery server, Debian's Chromium.

Expected values come from the store and the emulator, never from constants. Screenshots go to a
temp folder; with ``ZIMAGE_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/gallery-*.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, ViewportSize, expect

from tests.gallery._support import ASSET, INJECTION, StoredRun, browser_page, materialize_run
from tests.ui._support import REPO_ROOT, chromium_executable, launched_chromium
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.gallery import Gallery, links

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

UI_TIMEOUT_MS = 30_000
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
UPDATE_SCREENSHOTS = os.environ.get("ZIMAGE_UPDATE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def run(emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    chromium_executable()  # fail before the slow part when the browser is missing
    return materialize_run(emulator_server, tmp_path_factory.mktemp("gallery-browser"))


@pytest.fixture(scope="module")
def gallery(run: StoredRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gallery]:
    with Gallery(run.root, cache_dir=tmp_path_factory.mktemp("thumbs"), refresh_s=0) as server:
        yield server


@pytest.fixture(scope="module")
def browser(run: StoredRun) -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


def _page(browser: Browser, tmp_path: Path, name: str) -> AbstractContextManager[Page]:
    return browser_page(browser, tmp_path, VIEWPORT, name)


def _save(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), animations="disabled")
    if UPDATE_SCREENSHOTS:
        shutil.copyfile(path, REPO_ROOT / "docs" / name)


def _thumbnails_decoded(page: Page) -> list[list[int]]:
    """Natural sizes of the grid's images, once each has decoded (a broken one rejects)."""
    images = page.locator(".card img")
    return images.evaluate_all(
        "imgs => Promise.all(imgs.map(i => { i.loading = 'eager';"
        " return i.decode().then(() => [i.naturalWidth, i.naturalHeight]); }))"
    )


def test_the_grid_shows_the_runs_images_and_search_narrows_it(
    browser: Browser, gallery: Gallery, run: StoredRun, tmp_path: Path
) -> None:
    with _page(browser, tmp_path, "grid") as page:
        page.goto(gallery.url + "/")
        page.get_by_role("link", name=ASSET, exact=True).click()
        cards = page.locator("article.card")
        expect(cards).to_have_count(len(run.stored) + 1)
        stored = page.locator("article.card[data-status='stored']")
        expect(stored).to_have_count(len(run.stored))
        assert {stored.nth(i).get_attribute("data-key") for i in range(len(run.stored))} == set(
            run.stored
        )
        sizes = _thumbnails_decoded(page)
        assert len(sizes) == len(run.stored)
        assert all(0 < max(w, h) <= 320 for w, h in sizes)
        # Partition keys are shown whole, never cut.
        for key in run.stored:
            expect(page.locator(f"article.card[data-key='{key}'] .key")).to_have_text(key)
        _save(page, tmp_path, "gallery-grid.png")

        page.get_by_role("searchbox").fill("wide view")
        page.get_by_role("button", name="Show").click()
        expect(cards).to_have_count(2)
        assert {cards.nth(i).get_attribute("data-key") for i in range(2)} == {"boat", "cliff"}
        expect(page.locator("#found")).to_have_text(f"2 of {len(run.stored) + 1} partitions")


def test_a_failed_partition_shows_the_providers_message(
    browser: Browser, gallery: Gallery, run: StoredRun, tmp_path: Path
) -> None:
    with _page(browser, tmp_path, "failed") as page:
        page.goto(gallery.url + links.asset_path(ASSET))
        page.get_by_label("Status").select_option("failed")
        page.get_by_role("button", name="Show").click()
        card = page.locator("article.card")
        expect(card).to_have_count(1)
        expect(card).to_contain_text(run.provider_code)
        card.locator("a.pic").click()
        expect(page.locator("#provider-message")).to_have_text(run.provider_message)
        expect(page.locator("#status")).to_contain_text(run.provider_code)
        expect(page.locator("#image")).to_have_count(0)


def test_the_detail_page_shows_the_stored_file_at_its_natural_size_with_its_sha256(
    browser: Browser, gallery: Gallery, run: StoredRun, tmp_path: Path
) -> None:
    record = json.loads((run.root / ASSET / "boat.json").read_text())
    with _page(browser, tmp_path, "detail") as page:
        page.goto(gallery.url + links.asset_path(ASSET))
        page.locator("article.card[data-key='boat'] a.pic").click()
        image = page.locator("#image")
        natural = image.evaluate("i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])")
        assert natural == [record["width"], record["height"]]
        box = image.bounding_box()
        assert box is not None
        assert (round(box["width"]), round(box["height"])) == (record["width"], record["height"])
        served = page.request.get(gallery.url + str(image.get_attribute("src")))
        assert hashlib.sha256(served.body()).hexdigest() == run.sha256("boat")
        expect(page.locator("tr[data-fact='sha256'] td")).to_have_text(run.sha256("boat"))
        expect(page.locator("tr[data-fact='seed'] td")).to_have_text(str(record["seed"]))
        expect(page.locator("tr[data-fact='task ID'] td")).to_have_text(record["task_id"])
        _save(page, tmp_path, "gallery-detail.png")


def test_an_injection_prompt_renders_as_text(
    browser: Browser, gallery: Gallery, tmp_path: Path
) -> None:
    with _page(browser, tmp_path, "injection") as page:
        dialogs: list[str] = []

        def seen(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", seen)
        page.goto(gallery.url + links.asset_path(ASSET))
        expect(page.locator("article.card[data-key='hen'] .prompt")).to_have_text(INJECTION)
        page.locator("article.card[data-key='hen'] a.pic").click()
        expect(page.locator("#prompt")).to_have_text(INJECTION)
        assert page.title() != "pwned"
        assert "pwned" not in page.title()
        # Only the gallery's own images: the injected <img src=x> is not an element.
        sources = page.locator("img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")
        assert all(src.startswith("/assets/") for src in sources)
        assert dialogs == []
