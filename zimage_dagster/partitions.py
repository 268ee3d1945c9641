"""An image asset's partitions: their definition, the dataset key of a partition, and the
smallest partition range holding a set of partitions (what a collect run covers).

Example:
    >>> from zimage_dagster.spec import ImageAssetSpec
    >>> spec = ImageAssetSpec(asset_name="cards", prompts=["a fox", "an owl", "an elk"])
    >>> pd = partitions_def_for(spec, spec_dataset(spec.prompts))
    >>> keys = pd.get_partition_keys()
    >>> partition_range(pd, [keys[2], keys[0]]) == (keys[0], keys[2])
    True
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

import dagster as dg

from zimage_dagster.engine.shards import shard_count, shard_keys
from zimage_dagster.prompts import PromptDataset, PromptDatasetError, RowProblem, load_prompts
from zimage_dagster.spec import ImageAssetSpec, PromptSource

__all__ = ["partition_range", "partitions_def_for", "prompt_key", "spec_dataset"]

log = logging.getLogger(__name__)

PROMPT_DIMENSION = "prompt"
DATE_DIMENSION = "date"


def spec_dataset(source: PromptSource) -> PromptDataset:
    r"""The dataset of a spec's ``prompts`` (a loaded one as it is).

    A file that cannot be read as a dataset at all (no ``prompt`` column, a quote never closed,
    not UTF-8...) is an empty dataset whose one problem says why: the asset has no partitions
    until the file is fixed, is shown with the reason in its ``dataset_problem_report``, and the
    code location, with every other asset, still loads. (Rows in Python are code: their errors
    raise.)

    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "prompts.csv"
    >>> _ = bad.write_text("title\na fox\n")
    >>> ds = spec_dataset(str(bad))
    >>> len(ds), ds.problems[0].field, "no 'prompt' column" in ds.problems[0].reason
    (0, 'file', True)
    """
    if isinstance(source, PromptDataset):
        return source
    try:
        return load_prompts(source)
    except PromptDatasetError as exc:
        if not isinstance(source, (str, os.PathLike)):
            raise
        log.warning(f"{exc}; the asset has no partitions from it until it is fixed")
        problem = RowProblem(0, "file", None, f"{exc} (no row loaded)")
        return PromptDataset(rows=(), problems=(problem,), source=str(source))


def partitions_def_for(spec: ImageAssetSpec, dataset: PromptDataset) -> dg.PartitionsDefinition:
    """The partitions of the spec's image asset over ``dataset``."""
    if spec.partitioning == "static":
        return dg.StaticPartitionsDefinition(dataset.keys)
    if spec.partitioning == "dynamic":
        return dg.DynamicPartitionsDefinition(name=spec.partitions_name)
    if spec.partitioning == "daily":
        return dg.MultiPartitionsDefinition(
            {
                # end_offset=1: today's partition exists from midnight, so the morning
                # schedule can ask for today's image (without it the newest is yesterday's).
                DATE_DIMENSION: dg.DailyPartitionsDefinition(
                    start_date=spec.first_day,
                    timezone=spec.timezone,
                    end_offset=1,
                ),
                PROMPT_DIMENSION: dg.StaticPartitionsDefinition(dataset.keys),
            }
        )
    if spec.partitioning == "shards":
        count = shard_count(len(dataset), spec.shard_size, spec.shard_count)
        return dg.StaticPartitionsDefinition(shard_keys(count))
    raise dg.DagsterInvalidDefinitionError(f"unknown partitioning {spec.partitioning!r}")


def prompt_key(partition_key: str, partitions_def: dg.PartitionsDefinition) -> str:
    """The dataset key of a partition (the ``prompt`` dimension of a date x prompt key)."""
    if isinstance(partition_key, dg.MultiPartitionKey):
        return partition_key.keys_by_dimension[PROMPT_DIMENSION]
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        multi = partitions_def.get_partition_key_from_str(str(partition_key))
        return multi.keys_by_dimension[PROMPT_DIMENSION]
    return str(partition_key)


def partition_range(
    partitions_def: dg.PartitionsDefinition,
    keys: Collection[str],
    instance: dg.DagsterInstance | None = None,
) -> tuple[str, str]:
    """``(first, last)``: the smallest range of ``partitions_def`` holding every one of ``keys``
    (for a multi-partitioned asset, the box of each dimension's first and last key). Keys the
    definition does not know sort last."""
    if not keys:
        raise ValueError("no partition keys")
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        parsed = [partitions_def.get_partition_key_from_str(k).keys_by_dimension for k in keys]
        lows: dict[str, str] = {}
        highs: dict[str, str] = {}
        for dim in partitions_def.partitions_defs:
            values = {p[dim.name] for p in parsed}
            lows[dim.name], highs[dim.name] = _bounds(dim.partitions_def, values, instance)
        return str(dg.MultiPartitionKey(lows)), str(dg.MultiPartitionKey(highs))
    return _bounds(partitions_def, set(keys), instance)


def _bounds(
    partitions_def: dg.PartitionsDefinition,
    keys: Collection[str],
    instance: dg.DagsterInstance | None,
) -> tuple[str, str]:
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return min(keys), max(keys)  # date keys: their text order is their time order
    order = {
        k: i
        for i, k in enumerate(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
    }
    ranked = sorted(keys, key=lambda k: (order.get(k, len(order)), k))
    return ranked[0], ranked[-1]
