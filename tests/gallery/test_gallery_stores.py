"""The gallery over fsspec stores: S3 (moto on loopback, through s3fs) and ``memory://``, reading
and (with a review token) writing verdicts."""

from __future__ import annotations

import hashlib
import io
import re

import httpx
import pytest
from PIL import Image

from tests.reliability.conftest import S3, s3_server  # noqa: F401  (the session's S3 server)
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.reviews import current_verdicts
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import Gallery, links

ASSET = ("catalog", "hero")
TOKEN = "stores-review-token-0123456789"


def _save(store: ImageStore, key: str, colour: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(buf, "PNG")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    record = ImageRecord(seed=1, task_id=f"task-{key}", prompt=f"a {colour} square", sha256=sha)
    store.save(ASSET, key, data, "png", to_provenance(record))
    return sha


def _check(store: ImageStore, storage_options: dict[str, object] | None = None) -> None:
    sha = _save(store, "red", "red")
    TaskLedger(store).record_submitted(
        ASSET, "blue", task_id="task-unified-1-bbbbbbbb", request={"prompt": "blue", "seed": 2}
    )
    target = str(store.root) if storage_options else store
    with (
        Gallery(
            target,
            storage_options=storage_options,
            refresh_s=0,
            review_token=TOKEN,
            reviewer="ana",
        ) as gallery,
        httpx.Client(base_url=gallery.url, timeout=30) as client,
    ):
        grid = client.get(links.asset_path(ASSET)).text
        assert dict(re.findall(r"data-key='([^']*)' data-status='([^']*)'", grid)) == {
            "red": "stored",
            "blue": "pending",
        }
        image = client.get(links.image_url("", ASSET, "red"))
        assert hashlib.sha256(image.content).hexdigest() == sha
        assert client.get(links.thumbnail_url("", ASSET, "red")).status_code == 200
        # A new image written meanwhile shows at the next look (refresh_s=0).
        _save(store, "green", "green")
        assert "data-key='green'" in client.get(links.asset_path(ASSET)).text
        # A verdict through HTTP lands in the store as a review record, and filters the grid.
        verdict = client.post(
            links.verdict_url("", ASSET, "red"),
            data={"verdict": "pick", "candidate": "0"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert verdict.status_code == 201
        picked = client.get(links.asset_path(ASSET) + "?review=picked").text
        assert re.findall(r"data-key='([^']*)' data-status", picked) == ["red"]
        assert current_verdicts(store, ASSET)["red"].record_id == verdict.json()["id"]
        if storage_options:
            for path in ("/", links.asset_path(ASSET), links.partition_url("", ASSET, "red")):
                assert str(storage_options["secret"]) not in client.get(path).text


def test_a_memory_store_with_a_nested_asset_key() -> None:
    _check(ImageStore("memory://gallery-test/root"))


@pytest.mark.slow
def test_an_s3_store(s3_server: S3) -> None:  # noqa: F811
    bucket = s3_server.make_bucket()
    options = s3_server.storage_options
    _check(ImageStore(f"s3://{bucket}/images", options), options)
