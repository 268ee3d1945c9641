"""Fixtures of the review tests: a copy of the module's real-run store, and a reviewing gallery.

Each test module defines its own ``run`` (a real run against the emulator); these fixtures take
it from the module that asks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gallery._support import REVIEW_TOKEN, StoredRun
from zimage_dagster.gallery import Gallery


@pytest.fixture
def root(run: StoredRun, tmp_path: Path) -> Path:
    """A copy of the run's store for this test alone (verdicts write into it)."""
    copy = tmp_path / "store"
    shutil.copytree(run.root, copy)
    return copy


@pytest.fixture
def review(root: Path, tmp_path: Path) -> Iterator[Gallery]:
    """The gallery over :func:`root`, taking verdicts as ``ana`` with :data:`REVIEW_TOKEN`."""
    with Gallery(
        root, cache_dir=tmp_path / "thumbs", refresh_s=0, review_token=REVIEW_TOKEN, reviewer="ana"
    ) as server:
        yield server
