"""A request's identity: the one seed rule and the one fingerprint.

Seeds are always known: we send one with every request and record it. :func:`choose_seed` is the
only place that decides which one:

1. the row's own ``seed`` when the partition is the row itself (static, dynamic, op rows); when
   one row feeds many partitions (daily: ``<date>|<key>``), a seed derived from the row's seed and
   the partition key, so each day differs but stays reproducible;
2. else, with ``strategy="derived"``, a seed derived from the asset, partition key and prompt: the
   same partition always sends the same request;
3. else (``strategy="random"``) the seed already drawn for this very request (``kept``, from the
   ledger), or a fresh draw.

Candidates (``variants=N``): candidate 0 gets exactly the seed above; candidate ``i`` gets the
row's seed plus ``i`` (``s, s+1, ...``, wrapping inside 1..2147483647), a seed derived with ``i``
as one more part, or its own recorded draw. A regeneration of a rejected partition
(``regeneration``: the reject record's id) gets new seeds derived from that id, whatever the
strategy: the same reject always gives the same seeds (one reject never pays twice), a later
reject gives others.

:func:`request_fingerprint` is the identity of a request's content (prompt, size, seed,
nsfw_check): equal fingerprints mean "the identical request", which is what lets a re-run reuse a
stored image, re-attach to a live task, or keep a rejection.

>>> choose_seed("hero", "fox", row_key="fox", prompt="a fox", row_seed=7)
7
>>> choose_seed("hero", "fox", row_key="fox", prompt="a fox") == derive_seed("hero", "fox", "a fox")
True
>>> request_fingerprint("a fox", None, 7) == request_fingerprint("a fox", "1:1", 7, False)
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from zimage_dagster.api import DEFAULT_SIZE, MAX_SEED, MIN_SEED, draw_seed

__all__ = [
    "DEFAULT_SIZE",
    "SeedStrategy",
    "choose_seed",
    "derive_seed",
    "random_seed",
    "request_fingerprint",
]

#: ``"derived"``: reproducible from asset, partition key and prompt; ``"random"``: drawn once.
SeedStrategy = Literal["derived", "random"]


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def derive_seed(*parts: str) -> int:
    """A deterministic seed in 1..2147483647 from the given strings (asset key, partition key,
    prompt): sha256 of their JSON list.

    >>> derive_seed("hero", "fox", "a red fox") == derive_seed("hero", "fox", "a red fox")
    True
    >>> derive_seed("hero", "fox", "a red fox") != derive_seed("hero", "fox2", "a red fox")
    True
    """
    if not parts:
        raise ValueError("derive_seed needs at least one part")
    digest = hashlib.sha256(_utf8(json.dumps(list(parts), ensure_ascii=False))).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_SEED - MIN_SEED + 1) + MIN_SEED


#: A random seed in 1..2147483647 (for "draw a new seed" modes): the client's one draw.
random_seed = draw_seed


def choose_seed(
    asset: str,
    partition_key: str,
    *,
    row_key: str,
    prompt: str,
    row_seed: int | None = None,
    strategy: SeedStrategy = "derived",
    kept: int | None = None,
    candidate: int = 0,
    regeneration: str | None = None,
) -> int:
    """The seed sent for a partition (the rule in the module doc).

    ``asset`` is the asset key as a string (``"catalog/hero"``); ``kept`` is the seed of an
    earlier request for this partition with otherwise identical content (used by ``"random"``).

    >>> daily = choose_seed("hero", "2026-01-01|fox", row_key="fox", prompt="p", row_seed=7)
    >>> daily == derive_seed("7", "2026-01-01|fox")
    True
    >>> choose_seed("hero", "fox", row_key="fox", prompt="p", strategy="random", kept=99)
    99

    ``candidate`` is the candidate's index (0: the seed of a partition without candidates);
    ``regeneration`` the id of the reject record a regeneration answers:

    >>> [choose_seed("hero", "fox", row_key="fox", prompt="p", row_seed=7, candidate=i)
    ...  for i in range(3)]
    [7, 8, 9]
    >>> choose_seed("hero", "fox", row_key="fox", prompt="p", candidate=1) == derive_seed(
    ...     "hero", "fox", "p", "1")
    True
    >>> again = choose_seed("hero", "fox", row_key="fox", prompt="p", row_seed=7, regeneration="r1")
    >>> again != 7 and again == choose_seed(
    ...     "hero", "fox", row_key="fox", prompt="p", row_seed=7, regeneration="r1")
    True
    """
    if not 0 <= candidate < 1000:
        raise ValueError(f"candidate index {candidate} out of range 0..999")
    if regeneration is not None:
        return derive_seed(asset, partition_key, prompt, str(candidate), regeneration)
    if row_seed is not None:
        base = row_seed if partition_key == row_key else derive_seed(str(row_seed), partition_key)
        return (base - MIN_SEED + candidate) % (MAX_SEED - MIN_SEED + 1) + MIN_SEED
    if strategy == "random":
        return kept if kept is not None else random_seed()
    if candidate:
        return derive_seed(asset, partition_key, prompt, str(candidate))
    return derive_seed(asset, partition_key, prompt)


def request_fingerprint(
    prompt: str, size: str | None = None, seed: int | None = None, nsfw_check: bool | None = None
) -> str:
    """16 hex of the sha256 of a request's content (size defaults to 1:1, nsfw_check to false).

    >>> request_fingerprint("a fox", None, 7) != request_fingerprint("a fox", None, 8)
    True
    """
    payload = {
        "prompt": prompt,
        "size": size or DEFAULT_SIZE,
        "seed": seed,
        "nsfw_check": bool(nsfw_check),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(_utf8(text)).hexdigest()[:16]
