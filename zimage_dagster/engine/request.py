"""A request's identity, as the engine imports it: the one seed rule and the one fingerprint.

They live in :mod:`zimage_dagster.dataset.request`, below the engine (a dataset row resolves its
own seed with them); this module re-exports them for the engine, the ledger and the Dagster layer.

>>> choose_seed("hero", "fox", row_key="fox", prompt="a fox", row_seed=7)
7
"""

from __future__ import annotations

from zimage_dagster.dataset.request import (
    DEFAULT_SIZE,
    SeedStrategy,
    choose_seed,
    derive_seed,
    random_seed,
    request_fingerprint,
)

__all__ = [
    "DEFAULT_SIZE",
    "SeedStrategy",
    "choose_seed",
    "derive_seed",
    "random_seed",
    "request_fingerprint",
]
