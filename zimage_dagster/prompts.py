"""Prompt datasets, as the Dagster layer imports them: the public path of :mod:`zimage_dagster.dataset`.

The rows, the readers (CSV, JSON Lines, JSON, Parquet, Python lists), the key rule and the seed rule
live in :mod:`zimage_dagster.dataset`, below the engine; this module re-exports them under the
path users have always imported (``from zimage_dagster.prompts import load_prompts``), which stays.

Example:
    >>> ds = load_prompts([
    ...     {"prompt": "a red fox in snow", "seed": 7, "category": "animals"},
    ...     {"prompt": "a poster", "key": "Bad Key!"},
    ... ])
    >>> ds.keys
    ['a-red-fox-in-snow-049e0c0b66d6']
    >>> print(ds.problems[0])
    row 2, field 'key', value 'Bad Key!': must match ^[a-z0-9][a-z0-9_-]{0,79}$ (lowercase letters, digits, '-' and '_'; 1 to 80 characters)
"""

from __future__ import annotations

from zimage_dagster.dataset import (
    DEFAULT_SIZE,
    FORMATS,
    KEY_PATTERN,
    KNOWN_COLUMNS,
    MAX_LINE_BYTES,
    MAX_NESTING,
    PromptDataset,
    PromptDatasetError,
    PromptRow,
    RowProblem,
    Source,
    check_key,
    content_fingerprint,
    derive_key,
    derive_seed,
    load_prompts,
    random_seed,
    request_fingerprint,
)

__all__ = [
    "DEFAULT_SIZE",
    "FORMATS",
    "KEY_PATTERN",
    "KNOWN_COLUMNS",
    "MAX_LINE_BYTES",
    "MAX_NESTING",
    "PromptDataset",
    "PromptDatasetError",
    "PromptRow",
    "RowProblem",
    "Source",
    "check_key",
    "content_fingerprint",
    "derive_key",
    "derive_seed",
    "load_prompts",
    "random_seed",
    "request_fingerprint",
]
