"""A dataset's valid rows and its problems: :class:`PromptRow`, :class:`RowProblem`,
:class:`PromptDataset` (made by :func:`zimage_dagster.dataset.readers.load_prompts`).

>>> row = PromptRow("fox", "a red fox", None, 7, None)
>>> row.resolve_seed("hero"), row.request_fields("hero")["size"]
(7, '1:1')
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from zimage_dagster.dataset.keys import check_partition_key
from zimage_dagster.dataset.request import DEFAULT_SIZE, choose_seed, request_fingerprint

__all__ = [
    "PromptDataset",
    "PromptDatasetError",
    "PromptRow",
    "RowProblem",
    "content_fingerprint",
]


class PromptDatasetError(ValueError):
    """The dataset as a whole cannot be read (no ``prompt`` column, undecodable file...)."""


@dataclass(frozen=True)
class RowProblem:
    """One bad row (or one bad field of a row): reported, and the row left out.

    ``value`` is already made printable (truncated, control characters escaped); ``None`` when
    the field was absent.

    >>> print(RowProblem(7, "size", "9999x1", "width 9999 is outside 376..1536"))
    row 7, field 'size', value '9999x1': width 9999 is outside 376..1536
    """

    row_number: int
    field: str
    value: str | None
    reason: str

    def __str__(self) -> str:
        shown = "" if self.value is None else f", value '{self.value}'"
        return f"row {self.row_number}, field '{self.field}'{shown}: {self.reason}"


@dataclass(frozen=True)
class PromptRow:
    """One valid prompt: ``size``/``seed``/``nsfw_check`` are ``None`` when the dataset left them out.

    >>> row = PromptRow("fox", "a red fox", None, None, None, {}, 2)
    >>> row.request_fields("hero")["size"], 1 <= row.resolve_seed("hero") <= 2147483647
    ('1:1', True)
    """

    key: str
    prompt: str
    size: str | None
    seed: int | None
    nsfw_check: bool | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    row_number: int = 0

    def resolve_seed(self, asset_key: str) -> int:
        """The seed sent for this row as its own partition (the rule is ``choose_seed``'s)."""
        return choose_seed(
            asset_key, self.key, row_key=self.key, prompt=self.prompt, row_seed=self.seed
        )

    def request_fields(self, asset_key: str) -> dict[str, Any]:
        """``prompt``, ``size``, ``seed``, ``nsfw_check`` as sent: defaults filled, seed resolved."""
        return {
            "prompt": self.prompt,
            "size": self.size or DEFAULT_SIZE,
            "seed": self.resolve_seed(asset_key),
            "nsfw_check": bool(self.nsfw_check),
        }


@dataclass(frozen=True)
class PromptDataset:
    """The valid rows of a dataset, in order, plus the problems found.

    ``numbering`` says what ``row_number`` counts: ``"line"`` (CSV, JSON Lines) or ``"record"``.
    Rows made by hand are checked too: a key no partition may have (one starting with ``.``)
    raises :class:`~zimage_dagster.dataset.keys.InvalidPartitionKeyError`, naming it.

    >>> from zimage_dagster.dataset import load_prompts
    >>> ds = load_prompts(["a lighthouse at dusk", "a lighthouse at dusk"])
    >>> len(ds), len(ds.problems), ds.get(ds.keys[0]).prompt
    (1, 1, 'a lighthouse at dusk')
    """

    rows: tuple[PromptRow, ...]
    problems: tuple[RowProblem, ...] = ()
    source: str = "<python>"
    numbering: Literal["line", "record"] = "record"
    _index: dict[str, PromptRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for row in self.rows:  # rows made by hand are not checked by the readers
            check_partition_key(row.key)
        object.__setattr__(self, "_index", {r.key: r for r in self.rows})

    @property
    def keys(self) -> list[str]:
        """Partition keys, in dataset order."""
        return [r.key for r in self.rows]

    def get(self, key: str) -> PromptRow | None:
        """The row with this key, or ``None``."""
        return self._index.get(key)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def problem_report(self, limit: int = 50) -> str:
        """The problems, one a line (at most ``limit``), for logs and error messages."""
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def left_out_summary(self, asset: str) -> str | None:
        """One line saying how many rows were left out, for the log on load (``None``: none).

        >>> from zimage_dagster.dataset import load_prompts
        >>> print(load_prompts(["a fox", {"prompt": ""}]).left_out_summary("hero"))
        hero: 1 of 2 rows of <python> left out; see the asset's dataset_problem_report metadata
        """
        if not self.problems:
            return None
        bad = len({p.row_number for p in self.problems})
        return (
            f"{asset}: {bad} of {bad + len(self.rows)} rows of {self.source} left out; "
            "see the asset's dataset_problem_report metadata"
        )

    def raise_if_problems(self) -> None:
        """Raise :class:`PromptDatasetError` listing the problems, if any."""
        if self.problems:
            raise PromptDatasetError(
                f"{len(self.problems)} bad row(s) in {self.source}:\n{self.problem_report()}"
            )


def content_fingerprint(row: PromptRow) -> str:
    """Fingerprint of a row's prompt, size, seed and nsfw_check: changes when the row changes.

    A row without a seed fingerprints ``seed: null`` (its derived seed follows from the prompt).
    The ledger fingerprints the request as sent (resolved seed): compare like with like, e.g.
    ``request_fingerprint(**row.request_fields(asset))`` against ``LedgerEntry.fingerprint``.

    >>> r = PromptRow("k", "a fox", None, None, None)
    >>> content_fingerprint(r) == request_fingerprint("a fox")
    True
    """
    return request_fingerprint(row.prompt, row.size, row.seed, row.nsfw_check)
