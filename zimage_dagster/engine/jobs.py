"""One partition's work: :class:`ImageJob`, and :func:`plan_job`, the one way to make one.

Assets, ops and sensors all plan a partition the same way: the dataset row (with the default
size filled in), the seed from :func:`~zimage_dagster.dataset.request.choose_seed` (a random seed is
drawn once per request and then read back from the ledger), and the request that will be sent.

>>> import tempfile
>>> from zimage_dagster.engine.ledger import TaskLedger
>>> from zimage_dagster.dataset.rows import PromptRow
>>> ledger = TaskLedger(tempfile.mkdtemp())
>>> job = plan_job(ledger, ("hero",), "fox", PromptRow("fox", "a red fox", None, 7, None),
...                default_size="16:9")
>>> job.request.size, job.request.seed, job.partition_key
('16:9', 7, 'fox')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from zimage_dagster.api import GenerationRequest
from zimage_dagster.dataset.request import (
    DEFAULT_SIZE,
    SeedStrategy,
    choose_seed,
    request_fingerprint,
)
from zimage_dagster.dataset.rows import PromptRow
from zimage_dagster.engine.keys import candidate_key, split_candidate
from zimage_dagster.engine.ledger import LedgerEntry, TaskLedger

__all__ = ["REGENERATION_KEY", "ImageJob", "plan_candidates", "plan_job", "plan_job_for"]


@dataclass(frozen=True)
class ImageJob:
    """One unit of work to generate: its unit key, its dataset row and the seed sent.

    ``partition_key`` is the unit's key, what the store, the ledger and the claims are keyed
    by: the Dagster partition key itself for a partition's candidate 0 (or without candidates),
    ``candidate_key(partition, i)`` for its candidate ``i``
    (:func:`~zimage_dagster.engine.keys.candidate_key`); :attr:`partition` and
    :attr:`candidate` read it back.

    >>> job = ImageJob.from_row(PromptRow("fox", "a red fox", "16:9", None, None), seed=7)
    >>> job.request.size, job.request.seed, job.partition_key, job.partition, job.candidate
    ('16:9', 7, 'fox', 'fox', 0)
    """

    partition_key: str
    row: PromptRow
    seed: int
    #: The reject record a regeneration answers (its seeds derive from it), else ``None``.
    regeneration: str | None = None

    @classmethod
    def from_row(cls, row: PromptRow, *, seed: int, partition_key: str | None = None) -> ImageJob:
        """A job for ``row`` (the partition key defaults to the row's key)."""
        return cls(partition_key=partition_key or row.key, row=row, seed=seed)

    @property
    def partition(self) -> str:
        """The Dagster partition key the unit belongs to."""
        return split_candidate(self.partition_key)[0]

    @property
    def candidate(self) -> int:
        """The unit's candidate index within its partition (0 for the first, or only, one)."""
        return split_candidate(self.partition_key)[1]

    @property
    def ledger_extra(self) -> dict[str, Any]:
        """What the unit's ledger entry records beside the request (a regeneration's record)."""
        return {REGENERATION_KEY: self.regeneration} if self.regeneration else {}

    @property
    def request(self) -> GenerationRequest:
        """The request sent to the provider."""
        return GenerationRequest(
            prompt=self.row.prompt,
            size=self.row.size or DEFAULT_SIZE,
            seed=self.seed,
            nsfw_check=bool(self.row.nsfw_check),
        )

    @property
    def fingerprint(self) -> str:
        """The request's identity (see :func:`~zimage_dagster.dataset.request.request_fingerprint`)."""
        return request_fingerprint(
            self.row.prompt, self.row.size, self.seed, bool(self.row.nsfw_check)
        )


def plan_job(
    ledger: TaskLedger, asset: Sequence[str], partition_key: str, row: PromptRow, **how: Any
) -> ImageJob:
    """The job for one partition of ``asset`` (key parts) made from ``row``: :func:`plan_job_for`
    (``strategy``, ``default_size``, ``candidate``, ``regeneration``) with the unit's ledger
    entry, read only when the seed may come from it."""
    entry = None
    random = row.seed is None and how.get("strategy") == "random"
    if (random or how.get("regenerations")) and how.get("regeneration") is None:
        entry = ledger.get(asset, candidate_key(partition_key, how.get("candidate", 0)))
    return plan_job_for(entry, asset, partition_key, row, **how)


def plan_candidates(
    ledger: TaskLedger,
    asset: Sequence[str],
    partition_key: str,
    row: PromptRow,
    variants: int = 1,
    **how: Any,
) -> list[ImageJob]:
    """The ``variants`` jobs of one partition, candidate 0 first (:func:`plan_job` each):
    with ``variants=1``, exactly ``[plan_job(...)]``.

    >>> import tempfile
    >>> jobs = plan_candidates(TaskLedger(tempfile.mkdtemp()), ("hero",), "fox",
    ...                        PromptRow("fox", "a fox", None, 7, None), 3)
    >>> [(j.partition_key, j.seed) for j in jobs]
    [('fox', 7), ('fox...1', 8), ('fox...2', 9)]
    """
    return [
        plan_job(ledger, asset, partition_key, row, candidate=i, **how) for i in range(variants)
    ]


def plan_job_for(
    entry: LedgerEntry | None,
    asset: Sequence[str],
    partition_key: str,
    row: PromptRow,
    *,
    strategy: SeedStrategy = "derived",
    default_size: str | None = None,
    candidate: int = 0,
    regeneration: str | None = None,
    regenerations: bool = False,
) -> ImageJob:
    """The job for one partition of ``asset`` made from ``row``, given its ledger ``entry``.

    ``default_size`` fills a row without a size. With ``strategy="random"`` the seed of the
    ledger's entry for the partition is kept while the request is otherwise unchanged, so a
    resumed run re-attaches to its task, a re-run reuses the stored image and a rejected prompt
    stays rejected, instead of paying for a new draw each time.

    ``partition_key`` is the Dagster partition key; ``candidate`` the candidate's index (the
    job's key is then the unit key) and ``regeneration`` the reject record a regeneration
    answers (new seeds: see :func:`~zimage_dagster.dataset.request.choose_seed`). With
    ``regenerations`` (the asset regenerates rejected partitions) and no ``regeneration``
    given, the regeneration the unit's ledger ``entry`` records is kept while the request is
    otherwise unchanged: a regenerated partition later picked keeps its regenerated images
    instead of paying for its first seeds again.

    >>> plan_job_for(None, ("hero",), "fox", PromptRow("fox", "a fox", None, 7, None)).seed
    7
    """
    if default_size and not row.size:
        row = replace(row, size=default_size)
    if regeneration is None and regenerations and entry is not None:
        regeneration = _kept_regeneration(entry, row)
    kept: int | None = None
    if (
        row.seed is None
        and regeneration is None
        and strategy == "random"
        and entry is not None
        and entry.fingerprint
        == request_fingerprint(row.prompt, row.size, entry.seed, bool(row.nsfw_check))
    ):
        kept = entry.seed
    seed = choose_seed(
        "/".join(asset),
        partition_key,
        row_key=row.key,
        prompt=row.prompt,
        row_seed=row.seed,
        strategy=strategy,
        kept=kept,
        candidate=candidate,
        regeneration=regeneration,
    )
    return ImageJob(
        partition_key=candidate_key(partition_key, candidate),
        row=row,
        seed=seed,
        regeneration=regeneration,
    )


#: The ledger entry's ``extra`` key naming the reject record a task's seed was derived from.
REGENERATION_KEY = "regeneration"


def _kept_regeneration(entry: LedgerEntry, row: PromptRow) -> str | None:
    """The regeneration the entry's task answered, if its request is otherwise ``row``'s."""
    found = entry.extra.get(REGENERATION_KEY)
    same = entry.fingerprint == request_fingerprint(
        row.prompt, row.size, entry.seed, bool(row.nsfw_check)
    )
    return found if isinstance(found, str) and same else None
