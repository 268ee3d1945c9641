"""Fixtures of the engine tests: a storage root on each backend that has conditional writes.

``store_root`` is a local folder or a fresh bucket on moto's S3 server (loopback), as
``(root URL, storage options)``; the moto server comes from the reliability tests' fixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import S3, s3_server

__all__ = ["s3_server"]


@pytest.fixture(params=["local", "s3"])
def store_root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return str(tmp_path / "store"), {}
    s3: S3 = request.getfixturevalue("s3_server")
    options = {k: v for k, v in s3.storage_options.items() if k != "use_listings_cache"}
    return f"s3://{s3.make_bucket()}/zimage", {**options, "use_listings_cache": False}
