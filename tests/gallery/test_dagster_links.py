"""Links from Dagster to the gallery: a URL entry per materialization, the description's link."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import httpx
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from tests.component._support import loaded, write_component
from tests.dagster._support import (
    image_asset,
    make_fast,
    materializations,
    resource_for,
    rows,
    run_range,
    values,
)
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.gallery import Gallery, links
from zimage_dagster.ops import build_generate_images_op

GALLERY = "http://127.0.0.1:3999"


def _description(defs: dg.Definitions, name: str) -> str:
    asset = next(a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition))
    return asset.specs_by_key[dg.AssetKey(name)].description or ""


def test_each_materialization_links_to_its_page_in_a_running_gallery(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    with Gallery(tmp_path, refresh_s=0) as gallery, httpx.Client(timeout=30) as client:
        defs = build_image_assets("imgs", rows(3), storage=tmp_path, gallery_url=gallery.url)
        assert f"]({links.grid_url(gallery.url, 'imgs')})" in _description(defs, "imgs")
        with dg.DagsterInstance.ephemeral() as instance:
            assert run_range(
                image_asset(defs), instance, resource_for(emulator), "p0", "p2"
            ).success
            found = materializations(instance, "imgs")
        assert sorted(found) == ["p0", "p1", "p2"]
        for key, [metadata] in found.items():
            meta = values(metadata)
            url = meta["gallery"]
            assert url == links.materialization_url(gallery.url, "imgs", key, meta["task_id"])
            assert isinstance(metadata["gallery"], dg.UrlMetadataValue)
            page = client.get(url)
            assert page.status_code == 200
            assert f"<h1>{key} " in page.text
            assert meta["sha256"] in page.text
            assert "id='replaced'" not in page.text  # the page shows this materialization's image


def test_the_environment_variable_sets_the_gallery_and_none_means_no_link(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_fast(emulator)
    monkeypatch.setenv(links.GALLERY_URL_ENV, GALLERY + "/")
    linked = build_image_assets("imgs", rows(1), storage=tmp_path)
    assert f"({GALLERY}/assets/imgs/)" in _description(linked, "imgs")
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_range(image_asset(linked), instance, resource_for(emulator), "p0", "p0").success
        [[metadata]] = materializations(instance, "imgs").values()
    assert values(metadata)["gallery"].startswith(f"{GALLERY}/assets/imgs/-/partition/p0?task=")

    monkeypatch.delenv(links.GALLERY_URL_ENV)
    plain = build_image_assets("imgs", rows(1), storage=tmp_path)
    assert "gallery" not in _description(plain, "imgs")
    with dg.DagsterInstance.ephemeral() as instance:
        assert run_range(image_asset(plain), instance, resource_for(emulator), "p0", "p0").success
        [[metadata]] = materializations(instance, "imgs").values()
    assert "gallery" not in metadata


def test_a_gallery_url_that_is_not_http_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gallery URL must start with http.*'ftp://x'"):
        build_image_assets("imgs", rows(1), storage=tmp_path, gallery_url="ftp://x")


def test_the_component_and_the_op_take_the_gallery_url(tmp_path: Path) -> None:
    with create_defs_folder_sandbox() as sandbox:
        attributes = {"asset_name": "posters", "prompts": "prompts.csv", "gallery_url": GALLERY}
        path = write_component(sandbox, {**attributes, "storage": str(tmp_path)})
        with loaded(sandbox, path) as (component, defs):
            assert component.gallery_url == GALLERY
            assert f"({GALLERY}/assets/posters/)" in _description(defs, "posters")
    op = build_generate_images_op(asset_key="ops_images", storage=tmp_path, gallery_url=GALLERY)
    assert op.name == "generate_images"
