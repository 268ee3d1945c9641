"""The emulator package: vendored spec, no forbidden imports, runnable docstrings."""

from __future__ import annotations

import doctest
import hashlib
import importlib
import json
import os
import pkgutil
from pathlib import Path

import pytest

import zimage_dagster.emulator as emulator_pkg
from zimage_dagster.emulator.spec import DOCUMENTS, load_document

PACKAGE_DIR = Path(emulator_pkg.__file__).parent
REPO = Path(__file__).resolve().parents[2]


# The provider's documents as vendored (sha256 of the published files). A change of a vendored
# document must be a deliberate update of the provider's spec: compare it with the published
# folder (ZIMAGE_SPEC_DIR), then record its new sum here.
VENDORED_SHA256 = {
    "get-credits.openapi.json": "52fb0cd5eee5a8ba850c165558ee7027e2625f3ab504cf2eb19a8d92fe55bdee",
    "get-task-detail.openapi.json": "b58aacf61eb5e4e3036f2b0714a603f719996b00129de6be877a46af95e98cf7",
    "z-image-turbo-image-generate.openapi.json": (
        "90794e2777dea77f5e60c165cd06802459f5e01b94b972317dcdbd0a778f504c"
    ),
}


def test_vendored_documents_are_the_recorded_ones() -> None:
    assert sorted(VENDORED_SHA256) == sorted(DOCUMENTS)
    for name, expected in VENDORED_SHA256.items():
        data = (PACKAGE_DIR / "openapi" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == expected, name


def test_vendored_documents_equal_the_published_spec() -> None:
    """Only where told where the provider's spec folder is (`.ci/run` sets ZIMAGE_SPEC_DIR)."""
    configured = os.environ.get("ZIMAGE_SPEC_DIR")
    if not configured:
        pytest.skip("ZIMAGE_SPEC_DIR is not set (the sha256 test above still guards the copies)")
    spec_dir = Path(configured)
    if not spec_dir.is_absolute():
        spec_dir = REPO / spec_dir
    assert spec_dir.is_dir(), f"ZIMAGE_SPEC_DIR={configured}: no such folder ({spec_dir})"
    shared = sorted(p.name for p in spec_dir.glob("*.json"))
    assert shared == sorted(DOCUMENTS)
    for name in DOCUMENTS:
        assert (PACKAGE_DIR / "openapi" / name).read_bytes() == (spec_dir / name).read_bytes(), name
        assert load_document(name) == json.loads((spec_dir / name).read_text())


MODULES = [
    name
    for _, name, _ in pkgutil.iter_modules(emulator_pkg.__path__, "zimage_dagster.emulator.")
    if not name.endswith("__main__")
]


@pytest.mark.parametrize("name", ["zimage_dagster.emulator", *MODULES])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {name}"
