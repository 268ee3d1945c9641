"""What a run asks of the engine, in two objects instead of a relay of a dozen parameters.

* :class:`GenerationPolicy`: *how* to generate (reuse, rejections, the resubmission budget, tasks in
  flight, the wait deadline, the credit budgets). Built once from the asset's or the op's options
  and the resource (:meth:`GenerationPolicy.of`), and read by
  :class:`~zimage_dagster.engine.batch.BatchGenerator`,
  :func:`~zimage_dagster.engine.submit.submit_jobs` and the one decision
  (:meth:`GenerationPolicy.decision`, :mod:`zimage_dagster.engine.decide`).
* :class:`RunIdentity`: *who* is generating (the Dagster run and step, and how to tell whether
  a run is alive), recorded in the ledger and the partition claims.

>>> policy = GenerationPolicy(max_resubmits=1, concurrency=4)
>>> policy.decision(deferred=True).refetch_collected, policy.decision().max_resubmits
(False, 1)
>>> RunIdentity(run_id="r1", step="hero").run_id
'r1'
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

from zimage_dagster.api.images import ImageCheck
from zimage_dagster.engine.claims import RunAliveFn
from zimage_dagster.engine.credits import CreditBudget
from zimage_dagster.engine.decide import DecisionPolicy

__all__ = ["GenerationPolicy", "RunIdentity", "settings_of"]


class _Options(Protocol):
    """What :meth:`GenerationPolicy.of` reads from an asset's or op's options."""

    @property
    def reuse_stored(self) -> bool: ...
    @property
    def retry_rejected(self) -> bool: ...
    @property
    def credit_budget(self) -> CreditBudget: ...


class _Resource(Protocol):
    """What :meth:`GenerationPolicy.of` reads from the resource."""

    @property
    def concurrency(self) -> int: ...
    @property
    def max_resubmits(self) -> int: ...
    @property
    def wait_deadline(self) -> float | None: ...


@dataclass(frozen=True)
class GenerationPolicy:
    """How the engine generates (see the module doc).

    ``reuse_stored`` / ``retry_rejected`` / ``max_resubmits``: the decision's options
    (:class:`~zimage_dagster.engine.decide.DecisionPolicy`); ``concurrency``: tasks in flight at
    once; ``wait_deadline``: seconds to wait for one task (``None``: the client's);
    ``budget``: the credit budgets and the balance preflight (``None``: none);
    ``thumbnails``: make each image's thumbnail (its materialization shows it) from the
    download's decode; ``image_check``: how each download is checked (``decode``: every pixel;
    ``structure``: the header and the file's completeness, see
    :func:`~zimage_dagster.api.images.decode_image`). Sharded mode sets ``thumbnails=False``
    and ``image_check="structure"`` (:meth:`for_shards`): no event per image shows a thumbnail,
    and those two are most of the CPU of an image.

    >>> GenerationPolicy().for_shards().image_check
    'structure'
    """

    reuse_stored: bool = True
    retry_rejected: bool = False
    max_resubmits: int = 2
    concurrency: int = 8
    wait_deadline: float | None = None
    budget: CreditBudget | None = None
    thumbnails: bool = True
    image_check: ImageCheck = "decode"

    def for_shards(self) -> GenerationPolicy:
        """The policy of sharded mode: no thumbnails, the structure check of downloads."""
        return replace(self, thumbnails=False, image_check="structure")

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.max_resubmits < 0:
            raise ValueError("max_resubmits must be >= 0")

    @classmethod
    def of(cls, options: _Options, resource: _Resource) -> GenerationPolicy:
        """The policy of an asset's or op's options and its resource (the resource holds the
        settings of the client and of the budget it shares: tasks in flight, resubmissions,
        the wait deadline)."""
        return cls(
            reuse_stored=options.reuse_stored,
            retry_rejected=options.retry_rejected,
            max_resubmits=resource.max_resubmits,
            concurrency=resource.concurrency,
            wait_deadline=resource.wait_deadline,
            budget=options.credit_budget,
        )

    def decision(self, *, deferred: bool = False) -> DecisionPolicy:
        """The options of the one decision; a deferred submit cannot fetch a collected task
        again (its sensor watches open tasks only)."""
        return DecisionPolicy(
            reuse_stored=self.reuse_stored,
            retry_rejected=self.retry_rejected,
            max_resubmits=self.max_resubmits,
            refetch_collected=not deferred,
        )


@dataclass(frozen=True)
class RunIdentity:
    """Who is generating: ``run_id`` (recorded in the ledger, the partition claims and the run's
    budget counter), ``step`` (named in the claims), ``is_run_alive`` (``run_id -> alive?``: a
    claim of a run reported dead is taken over at once, else when its lease expires)."""

    run_id: str | None = None
    step: str | None = None
    is_run_alive: RunAliveFn | None = None


_POLICY_FIELDS = frozenset(f.name for f in fields(GenerationPolicy))
_IDENTITY_FIELDS = frozenset(f.name for f in fields(RunIdentity))


def settings_of(
    policy: GenerationPolicy | None,
    identity: RunIdentity | None,
    loose: Mapping[str, Any],
    *,
    where: str,
) -> tuple[GenerationPolicy, RunIdentity]:
    """The settings objects of a call, with the loose keyword arguments of the old signature
    (``concurrency=``, ``run_id=``...) folded in, each with a ``DeprecationWarning``.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     policy, who = settings_of(None, None, {"concurrency": 2, "run_id": "r"}, where="f")
    >>> policy.concurrency, who.run_id, seen[0].category.__name__
    (2, 'r', 'DeprecationWarning')
    """
    unknown = sorted(set(loose) - _POLICY_FIELDS - _IDENTITY_FIELDS)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(unknown)}")
    if loose:
        warnings.warn(
            f"{where}(): pass policy=GenerationPolicy(...) and identity=RunIdentity(...) instead "
            f"of {', '.join(sorted(loose))}",
            DeprecationWarning,
            stacklevel=3,
        )
    return (
        replace(
            policy or GenerationPolicy(), **{k: v for k, v in loose.items() if k in _POLICY_FIELDS}
        ),
        replace(
            identity or RunIdentity(), **{k: v for k, v in loose.items() if k in _IDENTITY_FIELDS}
        ),
    )
