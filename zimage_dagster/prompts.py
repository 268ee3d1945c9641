"""Prompt datasets, as the Dagster layer imports them: the public path of :mod:`zimage_dagster.dataset`.

The rows, the readers (CSV, JSON Lines, JSON, Parquet, Python lists), the key rule and the seed rule
live in :mod:`zimage_dagster.dataset`, below the engine; this module re-exports every public name
of it under the path users have always imported, which stays.

>>> load_prompts(["a lighthouse at dusk"]).keys
['a-lighthouse-at-dusk-55accb7d0a4b']
"""

from __future__ import annotations

from zimage_dagster.dataset import *  # noqa: F403  (this module is that package's public path)
from zimage_dagster.dataset import __all__ as __all__
