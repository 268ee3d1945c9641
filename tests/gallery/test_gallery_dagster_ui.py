"""From the Dagster UI to the gallery: a real dagster-webserver over real runs, Debian's Chromium.

The example project is materialized with ``ZIMAGE_GALLERY_URL`` pointing at a running gallery;
on the asset page, the latest materialization's ``gallery`` metadata entry is a link, and clicking
it opens that partition's page in the gallery, showing the materialization's own task ID and
sha256. The asset's description links to the asset's grid.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from playwright.sync_api import Browser, expect

from tests.dagster._support import make_fast
from tests.ui._support import (
    CATALOGUE,
    LOCATION,
    QUIET,
    REPO_ROOT,
    UI_TIMEOUT_MS,
    UPDATE_SCREENSHOTS,
    VIEWPORT,
    Webserver,
    catalogue_job,
    chromium_executable,
    example_home,
    in_child_env,
    launched_chromium,
    running_webserver,
)
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.gallery import Gallery, links

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240), pytest.mark.heavy]

ASSET = CATALOGUE


@dataclass(frozen=True)
class Latest:
    partition: str
    task_id: str
    sha256: str
    gallery: str


@dataclass(frozen=True)
class Served:
    webserver: Webserver
    gallery: Gallery
    latest: Latest


def _materialize(home: Path, storage: Path) -> Latest:
    """Two catalogue partitions in one real run on the persistent instance at ``home``."""
    keys, job = catalogue_job(storage)
    key = dg.AssetKey(ASSET)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[1],
        }
        assert job.execute_in_process(instance=instance, run_config=QUIET, tags=tags).success
        event = instance.get_latest_materialization_event(key)
        assert event is not None
        assert event.asset_materialization is not None
        meta: dict[str, Any] = {
            k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()
        }
        return Latest(
            partition=str(event.asset_materialization.partition),
            task_id=meta["task_id"],
            sha256=meta["sha256"],
            gallery=meta["gallery"],
        )


@pytest.fixture(scope="module")
def served(
    emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    chromium_executable()  # fail before the slow part when the browser is missing
    emulator_server.reset()
    make_fast(emulator_server)
    root = tmp_path_factory.mktemp("gallery-ui")
    home, storage, env = example_home(root, emulator_server)
    with Gallery(storage, cache_dir=root / "thumbs", refresh_s=0) as gallery:
        env = {**env, "ZIMAGE_GALLERY_URL": gallery.url}
        with in_child_env(env):
            latest = _materialize(home, storage)
        with running_webserver(env, root / "webserver.log", LOCATION) as webserver:
            yield Served(webserver, gallery, latest)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


def test_the_gallery_link_on_the_asset_page_opens_the_materializations_image(
    browser: Browser, served: Served, tmp_path: Path
) -> None:
    latest, gallery = served.latest, served.gallery
    assert latest.gallery == links.materialization_url(
        gallery.url, ASSET, latest.partition, latest.task_id
    )
    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.add_locator_handler(
        page.get_by_role("button", name="Skip", exact=True), lambda skip: skip.click()
    )
    try:
        page.goto(f"{served.webserver.url}/assets/{ASSET}")
        # The description links to the asset's grid.
        grid_link = page.get_by_role("link", name="See every image in the gallery").first
        expect(grid_link).to_have_attribute(
            "href", links.grid_url(gallery.url, ASSET), timeout=UI_TIMEOUT_MS
        )

        row = page.locator("tr").filter(has=page.get_by_text("gallery", exact=True))
        # The value is a link (and the UI adds an "open in a new tab" icon with the same href).
        link = row.locator(f"a[href='{latest.gallery}']").first
        expect(link).to_be_visible(timeout=UI_TIMEOUT_MS)
        if UPDATE_SCREENSHOTS:
            page.screenshot(path=str(REPO_ROOT / "docs" / "ui-gallery-link.png"))
        with context.expect_page() as opened:
            link.click()
        detail = opened.value
        detail.wait_for_load_state()
        assert detail.url == latest.gallery
        expect(detail.locator("h1")).to_contain_text(latest.partition, timeout=UI_TIMEOUT_MS)
        expect(detail.locator("tr[data-fact='task ID'] td")).to_have_text(latest.task_id)
        expect(detail.locator("tr[data-fact='sha256'] td")).to_have_text(latest.sha256)
        natural = detail.locator("#image").evaluate("i => i.decode().then(() => i.naturalWidth)")
        assert natural > 0
        expect(detail.locator("#replaced")).to_have_count(0)
        if UPDATE_SCREENSHOTS:
            detail.screenshot(path=str(tmp_path / "detail.png"))
            shutil.copyfile(tmp_path / "detail.png", REPO_ROOT / "docs" / "gallery-detail.png")
    except BaseException:
        page.screenshot(path=str(tmp_path / "FAILED-gallery-link.png"))
        print(f"screenshot: {tmp_path}\nwebserver log tail:\n{served.webserver.log_tail()}")
        raise
    finally:
        context.close()
