"""``<name>_picks``: only the images people picked, for a publishing step to consume.

:func:`picks_asset` (opted into with ``picks=True`` on the factory, the spec or the component)
is a partitioned asset downstream of the image asset, with the same partitions. Materializing a
range copies, for each partition whose verdict is a pick
(:func:`~zimage_dagster.engine.reviews.current_verdicts`), the picked candidate's image and
provenance into the store under ``<name>_picks`` and records a materialization (its sha256,
reviewer, candidate). A partition that is rejected or unreviewed is not materialized, and a
pick stored earlier and since rejected or undone is removed from ``<name>_picks``. A
publishing asset then loads ``<name>_picks`` with :class:`~zimage_dagster.io_manager.ImageStoreIOManager`
(``allow_missing_partitions``) and gets approved images alone.

Candidates: a pick names a candidate index (``variants=N``: 0..N-1); :func:`candidate_image`
finds that candidate's image in the store.

Example:
    >>> from zimage_dagster.spec import ImageAssetSpec
    >>> spec = ImageAssetSpec(asset_name="cards", prompts=["a fox"], picks=True)
    >>> picks_asset(spec, dg.StaticPartitionsDefinition(["a-fox"])).key.to_user_string()
    'cards_picks'
"""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg

from zimage_dagster.engine.keys import candidate_key
from zimage_dagster.engine.reviews import MAX_CANDIDATES, current_verdicts
from zimage_dagster.engine.store import ImageStore, StoredImage
from zimage_dagster.spec import ImageAssetSpec

__all__ = ["candidate_image", "picks_asset", "picks_key"]


def picks_key(spec: ImageAssetSpec) -> dg.AssetKey:
    """``<key prefix>/<asset name>_picks``."""
    return dg.AssetKey([*spec.key_prefix, f"{spec.asset_name}_picks"])


def candidate_image(
    store: ImageStore, asset: dg.AssetKey, partition_key: str, candidate: int
) -> StoredImage | None:
    """The stored image of one candidate of a partition (``variants=N``: 0..N-1), or ``None``.

    >>> import tempfile
    >>> from zimage_dagster.engine.keys import candidate_key
    >>> store = ImageStore(tempfile.mkdtemp())
    >>> _ = store.save("hero", candidate_key("fox", 2), b"third", "png", {"seed": 9})
    >>> candidate_image(store, dg.AssetKey("hero"), "fox", 2).provenance["seed"]
    9
    >>> candidate_image(store, dg.AssetKey("hero"), "fox", 1) is None
    True
    """
    if not 0 <= candidate < MAX_CANDIDATES:
        return None
    return store.find(asset.path, candidate_key(partition_key, candidate))


def picks_asset(
    spec: ImageAssetSpec, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    """The ``<name>_picks`` asset of an image asset (see the module doc)."""
    key = picks_key(spec)
    with warnings.catch_warnings():
        # A single-run backfill policy, as the image asset's (Dagster marks it beta).
        warnings.filterwarnings(
            "ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning
        )

        @dg.asset(
            key=key,
            group_name=spec.group_name,
            description=(
                f"The images picked in the gallery's review of {spec.asset_key.to_user_string()}: "
                "one per picked partition; rejected and unreviewed partitions are absent."
            ),
            partitions_def=partitions_def,
            backfill_policy=dg.BackfillPolicy.single_run(),
            deps=[spec.asset_key],
            kinds={"zimage"},
            output_required=False,
        )
        def _picks(context: dg.AssetExecutionContext) -> Iterator[Any]:
            store = ImageStore(spec.storage_root, spec.storage_options)
            verdicts = current_verdicts(store, spec.asset_key.path)
            copied = withdrawn = 0
            for partition in (str(k) for k in context.partition_keys):
                verdict = verdicts.get(partition)
                found = None
                if verdict is not None and verdict.verdict == "pick":
                    found = candidate_image(
                        store, spec.asset_key, partition, verdict.candidate or 0
                    )
                    if found is None:
                        context.log.warning(
                            f"{partition}: picked candidate {verdict.candidate} is not stored"
                        )
                if verdict is None or found is None:
                    if store.exists(key.path, partition):
                        store.delete(key.path, partition)
                        withdrawn += 1
                    continue
                data = store.read_bytes_or_none(found.path)
                if data is None:
                    context.log.warning(f"{partition}: picked image vanished from the store")
                    continue
                provenance = {
                    **dict(found.provenance),
                    "picked_by": verdict.reviewer,
                    "picked_at": verdict.at,
                    "review_record": verdict.record_id,
                    "candidate": verdict.candidate,
                }
                store.save(key.path, partition, data, found.path.suffix.lstrip("."), provenance)
                copied += 1
                yield dg.AssetMaterialization(
                    asset_key=key,
                    partition=partition,
                    metadata={
                        "sha256": dg.MetadataValue.text(found.sha256 or ""),
                        "reviewer": dg.MetadataValue.text(verdict.reviewer),
                        "candidate": dg.MetadataValue.int(verdict.candidate or 0),
                        "source": dg.MetadataValue.text(str(found.path)),
                    },
                )
            context.log.info(
                f"{copied} picked image(s) stored; {withdrawn} earlier pick(s) withdrawn; "
                f"{len(context.partition_keys) - copied - withdrawn} partition(s) not picked"
            )

    return _picks
