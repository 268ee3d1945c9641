"""The examples in the api package's docstrings run (those marked +SKIP need a live API)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "zimage_dagster.api",
    "zimage_dagster.api.errors",
    "zimage_dagster.api.validation",
    "zimage_dagster.api.models",
    "zimage_dagster.api.policies",
    "zimage_dagster.api.images",
    "zimage_dagster.api.results",
    "zimage_dagster.api._core",
    "zimage_dagster.api._actions",
    "zimage_dagster.api._stream",
    "zimage_dagster.api._settings",
    "zimage_dagster.api._retry",
    "zimage_dagster.api._flows",
    "zimage_dagster.api._download",
    "zimage_dagster.api._generate",
    "zimage_dagster.api._sync",
    "zimage_dagster.api._async",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0


def test_public_objects_have_docstrings() -> None:
    import zimage_dagster.api as api

    missing = [
        name
        for name in api.__all__
        if callable(getattr(api, name)) and not (getattr(api, name).__doc__ or "").strip()
    ]
    assert missing == []
