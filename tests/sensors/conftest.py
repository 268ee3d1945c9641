"""Fixtures of the deferred-mode and sensor tests."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A fresh Dagster instance (temporary storage) for the test."""
    with dg.instance_for_test() as inst:
        yield inst
