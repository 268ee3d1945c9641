"""The Dagster UI shows what the plugin records: a real webserver, a real instance, headless Chromium.

Some catalogue partitions of the example project are materialized against the emulator on a
persistent instance in a temp ``DAGSTER_HOME`` (real runs: one single-run backfill over a range,
then one more partition on its own, so the latest materialization is a known partition). Then
``dagster-webserver -w workspace.yaml`` serves that instance and Chromium (Debian's, driven by
Playwright) checks what a user sees:

* the asset page's metadata table shows the latest materialization's seed and task ID, and its
  ``thumbnail`` value opens a dialog with the thumbnail rendered as an image (a ``data:image/``
  ``<img>`` that decoded, of the thumbnail's size);
* the Partitions tab counts the materialized and missing partitions, lists exactly the
  materialized ones under the "Materialized" filter, and selecting one shows its seed and task ID.

Expected values come from the instance's event log, never from constants. Screenshots go to a
temp folder; with ``ZIMAGE_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/ui-*.png``.

Waits are on signals, never on time: the "Join the Dagster community" dialog is awaited and
skipped exactly when the server says a new user would see it (``shouldShowNux``), and every page
checks that the browser requested nothing but the local webserver (no telemetry script).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect

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

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180), pytest.mark.heavy]

ASSET = CATALOGUE
DOCS = REPO_ROOT / "docs"
# Playwright's `expect` has its own timeout (5 s by default), apart from the page's: under load
# that was the UI test's flake ("Latest materialization" not found within 5 s).
expect.set_options(timeout=UI_TIMEOUT_MS)
_SCROLL_ANCESTORS_TO_TOP = """element => {
    for (let node = element.parentElement; node; node = node.parentElement) {
        if (node.scrollHeight > node.clientHeight) node.scrollTop = 0;
    }
    document.scrollingElement.scrollTop = 0;
}"""
_DATA_URI = re.compile(r"\((data:image/[^)\s]+)\)")


@dataclass(frozen=True)
class Recorded:
    """One materialization of the image asset as the instance's event log has it."""

    partition: str
    seed: str
    task_id: str
    thumbnail_uri: str
    thumbnail_size: tuple[int, int]

    @classmethod
    def of(cls, materialization: dg.AssetMaterialization) -> Recorded:
        def value(name: str) -> Any:
            entry = materialization.metadata[name]
            return getattr(entry, "value", entry)

        found = _DATA_URI.search(str(value("thumbnail")))
        assert found, f"no data URI in the thumbnail metadata: {value('thumbnail')[:200]}"
        uri = found.group(1)
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
            size = thumb.size
        assert materialization.partition is not None
        return cls(
            partition=str(materialization.partition),
            seed=str(value("seed")),
            task_id=str(value("task_id")),
            thumbnail_uri=uri,
            thumbnail_size=size,
        )


@dataclass(frozen=True)
class Project:
    """The materialized example instance, served by a running webserver."""

    url: str
    server: Webserver
    all_keys: list[str]
    materialized: set[str]
    latest: Recorded
    chosen: Recorded  # a partition other than the latest, to select on the Partitions tab


def _materialize(home: Path, storage: Path) -> tuple[list[str], set[str], Recorded, Recorded]:
    """Real runs on the persistent instance at ``home``: a range of 5, then one more partition."""
    keys, job = catalogue_job(storage)
    key = dg.AssetKey(ASSET)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ranged = job.execute_in_process(
            instance=instance,
            run_config=QUIET,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[4],
            },
        )
        assert ranged.success
        single = job.execute_in_process(instance=instance, run_config=QUIET, partition_key=keys[7])
        assert single.success

        materialized = set(instance.get_materialized_partitions(key))
        assert materialized == {*keys[:5], keys[7]}
        latest_event = instance.get_latest_materialization_event(key)
        assert latest_event is not None
        assert latest_event.asset_materialization is not None
        latest = Recorded.of(latest_event.asset_materialization)
        assert latest.partition == keys[7]
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[keys[2]]), limit=1
        ).records
        assert records
        assert records[0].asset_materialization is not None
        chosen = Recorded.of(records[0].asset_materialization)
    return keys, materialized, latest, chosen


@pytest.fixture(scope="module")
def project(
    emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    chromium_executable()  # fail before the slow part when the browser is missing
    emulator_server.reset()
    root = tmp_path_factory.mktemp("ui")
    home, storage, env = example_home(root, emulator_server)
    with in_child_env(env):
        keys, materialized, latest, chosen = _materialize(home, storage)
    with running_webserver(env, root / "webserver.log", LOCATION) as server:
        yield Project(server.url, server, keys, materialized, latest, chosen)


@pytest.fixture(scope="module")
def browser(project: Project) -> Iterator[Browser]:
    """Launched after the runs (see :func:`launched_chromium`)."""
    with launched_chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _server_shows_community_dialog(project: Project) -> bool:
    """Whether the webserver will show a new browser the community dialog (until one dismisses
    it, which the instance then remembers)."""
    answer = httpx.post(
        f"{project.url}/graphql", json={"query": "{ shouldShowNux }"}, timeout=30
    ).json()
    return bool(answer["data"]["shouldShowNux"])


def _skip_community_dialog(page: Page, project: Project) -> None:
    """On a loaded page: wait for the "Join the Dagster community" dialog (it opens a second
    after the app renders) and Skip it, when the server says it will show; else nothing."""
    if not _server_shows_community_dialog(project):
        return
    skip = page.get_by_role("button", name="Skip", exact=True)
    expect(skip).to_be_visible()
    skip.click()
    expect(skip).to_have_count(0)
    assert not _server_shows_community_dialog(project)


@contextmanager
def _page(browser: Browser, project: Project, shots: Path, name: str) -> Iterator[Page]:
    """A page in a fresh profile (so the community dialog shows, as for a new user); on failure
    a screenshot and the webserver's log tail go into the error. Afterwards: every request the
    page made went to the local webserver (or was inline data)."""
    context = browser.new_context(
        viewport=VIEWPORT, locale="en-US", timezone_id="UTC", color_scheme="light"
    )
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.set_default_navigation_timeout(2 * UI_TIMEOUT_MS)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        yield page
        elsewhere = [
            url for url in requested if not url.startswith((project.url + "/", "data:", "blob:"))
        ]
        assert elsewhere == [], f"the UI requested outside the local webserver: {elsewhere}"
    except BaseException:
        failure = shots / f"FAILED-{name}.png"
        with suppress(Exception):  # the page may be gone; the original error matters
            page.screenshot(path=str(failure))
        print(f"screenshot: {failure}\nwebserver log tail:\n{project.server.log_tail()}")
        raise
    finally:
        context.close()


def _save(page: Page, shots: Path, name: str) -> Path:
    """Screenshot to the temp folder; also to docs/ with ZIMAGE_UPDATE_SCREENSHOTS=1."""
    expect(page.get_by_role("button", name="Skip", exact=True)).to_have_count(0)
    path = shots / name
    # Transitions ended (the dialog fades in): the picture shows the settled page.
    page.screenshot(path=str(path), animations="disabled")
    if UPDATE_SCREENSHOTS:
        shutil.copyfile(path, DOCS / name)
    return path


def _metadata_row(page: Page, name: str) -> Locator:
    """The metadata table's row for entry ``name`` (its key cell reads exactly ``name``)."""
    return page.locator("tr").filter(has=page.get_by_text(name, exact=True))


def _open_asset_page(page: Page, project: Project) -> None:
    page.goto(f"{project.url}/assets/{ASSET}")
    expect(page.get_by_text(ASSET, exact=True).first).to_be_visible()
    _skip_community_dialog(page, project)


def test_asset_page_shows_the_latest_seed_task_id_and_a_rendered_thumbnail(
    browser: Browser, project: Project, shots: Path
) -> None:
    latest = project.latest
    with _page(browser, project, shots, "asset-page") as page:
        _open_asset_page(page, project)

        # The Status section names the latest materialization's partition ...
        status = (
            page.locator("div")
            .filter(has=page.get_by_text("Latest materialization", exact=True))
            .filter(has=page.get_by_text(latest.partition, exact=True))
            .last  # the innermost block holding both
        )
        expect(status).to_be_visible()
        # ... and the metadata table shows that materialization's entries.
        expect(_metadata_row(page, "partition_key").get_by_text(latest.partition)).to_be_visible()
        expect(_metadata_row(page, "seed").get_by_text(latest.seed, exact=True)).to_be_visible()
        expect(
            _metadata_row(page, "task_id").get_by_text(latest.task_id, exact=True)
        ).to_be_visible()

        # The thumbnail is a markdown value: a link in the table, the image in a dialog.
        rendered = page.locator(".dagster-markdown img[src^='data:image/']")
        expect(rendered).to_have_count(0)
        _metadata_row(page, "thumbnail").get_by_text("[Show Markdown]").click()
        expect(rendered).to_have_count(1)
        expect(rendered).to_be_visible()
        assert rendered.get_attribute("src") == latest.thumbnail_uri
        # decode() resolves once the bytes are a bitmap: a broken data URI would reject.
        natural = rendered.evaluate(
            "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])"
        )
        assert tuple(natural) == latest.thumbnail_size
        assert natural[0] > 0
        assert natural[1] > 0
        shown = rendered.bounding_box()
        assert shown is not None
        assert shown["width"] > 50
        assert shown["height"] > 50

        # Clicking the link scrolled the page down to it: back to the top for the screenshot (the
        # latest partition's key, the metadata table's first rows, the dialog over them).
        _metadata_row(page, "seed").evaluate(_SCROLL_ANCESTORS_TO_TOP)
        expect(_metadata_row(page, "seed")).to_be_in_viewport()
        _save(page, shots, "ui-asset-page.png")


def test_partitions_tab_shows_what_is_materialized_and_each_partitions_metadata(
    browser: Browser, project: Project, shots: Path
) -> None:
    total, done = len(project.all_keys), len(project.materialized)
    missing = total - done
    chosen = project.chosen
    with _page(browser, project, shots, "partitions") as page:
        _open_asset_page(page, project)
        page.get_by_role("tab", name="Partitions").click()
        expect(page).to_have_url(re.compile(r"[?&]view=partitions"))

        # The status filters count the partitions; every key is listed (by its full name).
        materialized_filter = page.get_by_text(f"Materialized ({done})", exact=True)
        missing_filter = page.get_by_text(f"Missing ({missing})", exact=True)
        expect(materialized_filter).to_be_visible()
        expect(missing_filter).to_be_visible()
        for key in project.all_keys:
            expect(page.get_by_title(key, exact=True)).to_have_count(1)

        # Hiding the missing ones leaves exactly the materialized partitions in the list.
        missing_filter.click()
        for key in project.all_keys:
            expect(page.get_by_title(key, exact=True)).to_have_count(
                1 if key in project.materialized else 0
            )
        missing_filter.click()
        expect(page.get_by_title(project.all_keys[-1], exact=True)).to_have_count(1)

        # Selecting a partition shows its own materialization's metadata.
        page.get_by_title(chosen.partition, exact=True).click()
        expect(page).to_have_url(re.compile(rf"[?&]partition={re.escape(chosen.partition)}\b"))
        expect(_metadata_row(page, "seed").get_by_text(chosen.seed, exact=True)).to_be_visible()
        expect(
            _metadata_row(page, "task_id").get_by_text(chosen.task_id, exact=True)
        ).to_be_visible()
        expect(page.get_by_text(project.latest.task_id, exact=True)).to_have_count(0)

        _save(page, shots, "ui-partitions.png")
