"""Review of a store with 3 candidates per partition in Debian's Chromium, with the keyboard.

A real ``variants=3`` run (3 prompts, 9 tasks), the gallery with a review token, Playwright:
next, pick candidate 2 by its number key, reject another partition with a note, undo, export.
The zip's manifest is checked against the store: the picked candidate's own bytes. The grid's
card shows the picked candidate's thumbnail.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest
from playwright.sync_api import Browser, ViewportSize, expect

from tests.dagster._support import image_asset, make_fast, resource_for, rows, run_range
from tests.gallery._support import REVIEW_TOKEN, StoredRun, browser_page
from tests.ui._support import chromium_executable, launched_chromium
from zimage_dagster import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.keys import candidate_key
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.reviews import current_verdicts, read_records
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import Gallery, links

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

ASSET = "imgs"
VARIANTS = 3
KEYS = ["p0", "p1", "p2"]
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}


@pytest.fixture(scope="module")
def run(emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    chromium_executable()  # fail before the slow part when the browser is missing
    emulator_server.reset()
    make_fast(emulator_server)
    root = tmp_path_factory.mktemp("review-candidates")
    asset = image_asset(build_image_assets(ASSET, rows(3), storage=root, variants=VARIANTS))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_range(asset, instance, resource_for(emulator_server), "p0", "p2").success
    assert emulator_server.stats()["tasks_created"] == len(KEYS) * VARIANTS
    assert ImageStore(root).partitions(ASSET) == KEYS
    return StoredRun(root, emulator_server.api_key, frozenset(KEYS), "", "", "")


@pytest.fixture(scope="module")
def browser(run: StoredRun) -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


def test_keyboard_review_of_three_candidates_picks_candidate_2_and_exports_its_bytes(
    browser: Browser, review: Gallery, root: Path, tmp_path: Path
) -> None:
    store = ImageStore(root)
    with browser_page(browser, tmp_path, VIEWPORT, "review-candidates") as page:
        page.goto(review.url + "/")
        page.get_by_role("link", name="sign in to review").click()
        page.get_by_label("Review token").fill(REVIEW_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#who")).to_contain_text("reviewing as ana")
        page.goto(review.url + links.asset_path(ASSET) + "?order=partition")
        page.locator("article.card a.pic").first.click()
        expect(page.locator("h1")).to_contain_text("p0")
        expect(page.locator("figure.candidate")).to_have_count(VARIANTS)

        page.keyboard.press("j")  # next
        expect(page.locator("h1")).to_contain_text("p1")
        page.keyboard.press("2")  # candidate 2 on the page: index 1 in the record
        expect(page.locator("#verdict")).to_have_attribute("data-review", "picked")
        expect(page.locator("figure.candidate.picked")).to_have_count(1)
        expect(page.locator("figure.candidate").nth(1)).to_have_class("candidate picked")

        page.keyboard.press("j")
        expect(page.locator("h1")).to_contain_text("p2")
        page.locator("textarea[name=note]").fill("all three off-brief")
        page.locator("body").click(position={"x": 5, "y": 900})  # leave the note field
        page.keyboard.press("x")
        expect(page.locator("#verdict")).to_have_attribute("data-review", "rejected")
        expect(page.locator("#verdict-note")).to_have_text("all three off-brief")
        page.keyboard.press("u")  # undo the reject: unreviewed again
        expect(page.locator("#verdict")).to_have_attribute("data-review", "unreviewed")
        page.locator("textarea[name=note]").fill("all three off-brief, twice")
        page.locator("body").click(position={"x": 5, "y": 900})
        page.keyboard.press("x")
        expect(page.locator("#verdict")).to_have_attribute("data-review", "rejected")

        verdicts = current_verdicts(store, ASSET)
        assert {k: (v.verdict, v.candidate) for k, v in verdicts.items()} == {
            "p1": ("pick", 1),
            "p2": ("reject", None),
        }
        assert [r.verdict for r in read_records(store, ASSET, "p2")] == ["reject", "undo", "reject"]
        assert verdicts["p2"].note == "all three off-brief, twice"

        page.get_by_role("link", name="grid", exact=True).click()
        # Each card shows its current candidate: the pick (candidate 2 of p1), else the first.
        thumbs = {k: page.locator(f"article.card[data-key={k}] img") for k in KEYS}
        for thumb in thumbs.values():
            thumb.evaluate("i => i.decode()")  # loaded (a failed load logs an error too)
        sources = {k: thumb.get_attribute("src") or "" for k, thumb in thumbs.items()}
        assert sources["p1"].endswith("&candidate=1")
        assert "candidate" not in sources["p0"] + sources["p2"]
        with page.expect_download() as download_info:
            page.locator("#export").click()
        archive = zipfile.ZipFile(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    (row,) = csv.DictReader(io.StringIO(archive.read("manifest.csv").decode()))
    picked = store.find(ASSET, candidate_key("p1", 1))
    first = store.find(ASSET, "p1")
    assert picked is not None
    assert first is not None
    assert picked.sha256 != first.sha256  # the test tells candidate 2 from candidate 1
    data = archive.read(row["file"])
    assert (row["key"], row["candidate"], row["reviewer"]) == ("p1", "1", "ana")
    assert hashlib.sha256(data).hexdigest() == row["sha256"] == picked.sha256
    assert data == picked.path.read_bytes()
    assert row["seed"] == str(picked.provenance["seed"])
    assert row["task_id"] == picked.provenance["task_id"]
    # The thumbnail cache holds the picked candidate's thumbnail (named by its sha256).
    assert (tmp_path / "thumbs" / f"{picked.sha256}-320.jpg").is_file()
    served = httpx.get(review.url + sources["p1"], timeout=30)
    assert served.status_code == 200
    assert served.content == (tmp_path / "thumbs" / f"{picked.sha256}-320.jpg").read_bytes()
    for wanted in ("3", "../1", "-1"):  # no such candidate: 404
        thumb_url = links.thumbnail_url("", ASSET, "p1") + f"?candidate={wanted}"
        assert httpx.get(review.url + thumb_url, timeout=30).status_code == 404


def test_a_failed_candidate_is_listed_with_its_number_on_its_partition_page(
    review: Gallery, root: Path
) -> None:
    """Candidate 3 of p2 failed for good (the emulator fails by prompt, so every candidate of a
    prompt alike: the failure is written to the ledger here, as the run writes it, and its image
    removed). The partition page lists it as candidate 3 with its task, code and message; the
    stored candidates 1 and 2 are still laid out."""
    store = ImageStore(root)
    unit = candidate_key("p2", 2)
    stored = store.find(ASSET, unit)
    assert stored is not None
    request = {"prompt": "a fox", "size": "376x376", "seed": int(stored.provenance["seed"]) + 100}
    ledger = TaskLedger(store)
    ledger.record_submitted(ASSET, unit, task_id="task-doomed", request=request)
    ledger.update(
        ASSET,
        unit,
        "task-doomed",
        "failed",
        error_code="content_policy_violation",
        error_message="<b>refused</b>",
    )
    for path in (root / ASSET).glob("p2~2.*"):
        path.unlink()
    page = httpx.get(review.url + links.partition_url("", ASSET, "p2"), timeout=30)
    assert page.status_code == 200
    assert "class='candidates n2'" in page.text
    (table,) = re.findall(r"<table class='facts' id='failed-candidates'>.*?</table>", page.text)
    assert re.findall(r"<tr data-candidate='(\d+)'><td>(candidate \d+)</td>", table) == [
        ("2", "candidate 3")
    ]
    assert "task-doomed" in table
    assert "content_policy_violation" in table
    assert "&lt;b&gt;refused&lt;/b&gt;" in table  # escaped
    other = httpx.get(review.url + links.partition_url("", ASSET, "p0"), timeout=30)
    assert "failed-candidates" not in other.text
