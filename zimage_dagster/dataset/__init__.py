"""Prompt datasets: CSV, JSON Lines, JSON, Parquet or Python lists -> validated rows with stable keys.

The layer below the engine: it reads the client's rules (``zimage_dagster.api``) and nothing else
of this package, neither Dagster nor the engine (``tests/test_architecture.py`` guards it).

Columns: ``prompt`` (required), ``key`` (optional partition key), ``size``, ``seed``, ``nsfw_check``;
any other column is carried in ``PromptRow.extra`` (and later into metadata). Known column names are
matched case-insensitively, ignoring surrounding spaces (``Prompt`` works).

Every row is checked with the client's own rules (``zimage_dagster.api`` validators). A bad row is
reported as a :class:`RowProblem` (row number, field, value, reason) and left out; the good rows go
on. Only dataset-level faults raise :class:`PromptDatasetError`: no ``prompt`` column, undecodable
CSV/JSON, a JSON document that is not a list, an unknown format.

Row numbers count what is most useful to find the row:

* CSV/TSV and JSON Lines: the 1-based **line number in the file** where the record starts (the CSV
  header is line 1, so the first data row is line 2);
* JSON arrays, Parquet and Python lists: the 1-based **position of the record**.

Keys follow :data:`KEY_PATTERN` (:mod:`~zimage_dagster.dataset.keys`); a missing key is derived
from the prompt. Duplicate keys: the first row wins, later ones are bad rows (two rows with the
same prompt and no key collide: give them keys). Seeds follow the one seed rule
(:mod:`~zimage_dagster.dataset.request`).

One bad cell never takes the dataset down: a huge number, a value nested deeper than
:data:`MAX_NESTING` levels, a JSON record too deep for the parser, a line longer than
:data:`MAX_LINE_BYTES` (CSV, JSON Lines: reported and skipped unread) are each a bad row. Loading
a CSV or JSON Lines file holds the file's bytes plus the record being read, so its peak memory is
a small multiple of the file's size (``tests/dagster/test_prompt_robustness.py`` measures it).

Modules: :mod:`~zimage_dagster.dataset.rows` (rows, problems, the dataset),
:mod:`~zimage_dagster.dataset.keys` (the key rule), :mod:`~zimage_dagster.dataset.request` (the seed
rule and the request fingerprint), :mod:`~zimage_dagster.dataset.validate` (one record checked),
:mod:`~zimage_dagster.dataset.readers` (the file formats).

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

from zimage_dagster.dataset.keys import KEY_PATTERN, check_key, derive_key
from zimage_dagster.dataset.readers import FORMATS, MAX_LINE_BYTES, Source, load_prompts
from zimage_dagster.dataset.request import (
    DEFAULT_SIZE,
    SeedStrategy,
    choose_seed,
    derive_seed,
    random_seed,
    request_fingerprint,
)
from zimage_dagster.dataset.rows import (
    PromptDataset,
    PromptDatasetError,
    PromptRow,
    RowProblem,
    content_fingerprint,
)
from zimage_dagster.dataset.validate import KNOWN_COLUMNS, MAX_NESTING

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
    "SeedStrategy",
    "Source",
    "check_key",
    "choose_seed",
    "content_fingerprint",
    "derive_key",
    "derive_seed",
    "load_prompts",
    "random_seed",
    "request_fingerprint",
]
