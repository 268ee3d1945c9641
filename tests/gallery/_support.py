"""A real run for the gallery tests: an image asset materialized against the emulator."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
from playwright.sync_api import Browser, Page, ViewportSize

from tests.dagster._support import SMALL, image_asset, make_fast, resource_for, run_range
from tests.ui._support import UI_TIMEOUT_MS
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.store import ImageStore

ASSET = "gallery_images"
#: The review token of the reviewing galleries in the tests.
REVIEW_TOKEN = "test-review-token-" + "q7" * 12
WIDE = "480x376"
#: A prompt that would run script if the gallery did not escape it.
INJECTION = (
    "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    " a fox & a 'quoted' \"hen\""
)
#: The emulator's moderation rejects it: a failed partition with the provider's message.
REJECTED = "a forbidden lighthouse at night"
DATASET: list[dict[str, Any]] = [
    {"key": "fox", "prompt": "a small red fox in the snow", "size": SMALL},
    {"key": "owl", "prompt": "an owl on a mossy branch", "size": SMALL},
    {"key": "hen", "prompt": INJECTION, "size": SMALL},
    {"key": "boat", "prompt": "a red boat on a calm lake, wide view", "size": WIDE},
    {"key": "cliff", "prompt": "a white cliff above the sea, wide view", "size": WIDE},
    {"key": "night", "prompt": REJECTED, "size": SMALL},
]


@dataclass(frozen=True)
class StoredRun:
    """What the run left in the store, as the emulator and the store tell it."""

    root: Path
    api_key: str
    stored: frozenset[str]
    failed: str
    provider_message: str
    provider_code: str

    def sha256(self, key: str) -> str:
        found = ImageStore(self.root).find(ASSET, key)
        assert found is not None
        return hashlib.sha256(found.path.read_bytes()).hexdigest()


def materialize_run(emulator: EmulatorServer, root: Path) -> StoredRun:
    """Every partition of :data:`DATASET` in one real run (the rejected one fails alone)."""
    emulator.reset()
    make_fast(emulator)
    asset = image_asset(build_image_assets(ASSET, DATASET, storage=root, retry_policy=None))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource_for(emulator), "fox", "night")
        assert not result.success  # the rejected prompt fails its partition
    rejected = next(t for t in emulator.tasks() if t["request"]["prompt"] == REJECTED)
    stored = frozenset(ImageStore(root).partitions(ASSET))
    assert stored == {"fox", "owl", "hen", "boat", "cliff"}
    return StoredRun(
        root=root,
        api_key=emulator.api_key,
        stored=stored,
        failed="night",
        provider_message=rejected["failure"]["message"],
        provider_code=rejected["failure"]["code"],
    )


def get(client: httpx.Client, path: str) -> httpx.Response:
    """GET ``path``; fails with the answer when it is not 200."""
    answer = client.get(path)
    assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
    return answer


@contextmanager
def browser_page(
    browser: Browser, tmp_path: Path, viewport: ViewportSize, name: str, *, script: bool = True
) -> Iterator[Page]:
    """A fresh Chromium page (downloads accepted); on failure a screenshot ``FAILED-<name>.png``
    in ``tmp_path``. Fails if the page logged an error (a Content-Security-Policy violation, a
    script error, a resource that did not load)."""
    context = browser.new_context(
        viewport=viewport,
        locale="en-US",
        timezone_id="UTC",
        java_script_enabled=script,
        accept_downloads=True,
    )
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield page
        assert errors == []
    except BaseException:
        with suppress(Exception):
            page.screenshot(path=str(tmp_path / f"FAILED-{name}.png"))
        raise
    finally:
        context.close()
