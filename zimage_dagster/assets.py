"""The asset factory: a prompt dataset in, a partitioned image asset out.

:func:`build_image_assets` returns ``dagster.Definitions`` holding one partitioned image asset
(static partitions from the dataset, dynamic partitions, or daily x prompt), its asset checks, a job
over it and, for the daily variant, a schedule. One run may cover many partitions (a single-run
backfill): they are submitted concurrently through the async client and each partition is
materialized (an ``AssetMaterialization`` with its seed, task ID, thumbnail...) the moment its
image is stored. Partitions that fail are listed in a ``dagster.Failure`` at the end; the stored
ones stay materialized, and a re-run of the failed ones does only those.

Why no output: Dagster's IO managers cannot write one output per partition of a range, so the
asset writes through :class:`~zimage_dagster.engine.store.ImageStore` itself and yields no ``Output``
(one materialization per partition, with its own metadata). Dagster skips downstream steps *in the
same run* of an asset that yields no output, so downstream assets (a contact sheet...) run in
their own runs: an automation condition, a sensor, or a second job. They load images with
:class:`~zimage_dagster.io_manager.ImageStoreIOManager`.
"""

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import dagster as dg
from dagster import AssetExecutionContext

from zimage_dagster.balance import balance_definitions
from zimage_dagster.checks import (
    CHECK_NAMES,
    PARTITIONED_CHECKS,
    check_evaluations,
    check_outputs,
    check_specs,
)
from zimage_dagster.engine.collect import COLLECT_TAG, batch_partitions
from zimage_dagster.engine.jobs import ImageJob, plan_candidates
from zimage_dagster.engine.keys import partition_key_problem, split_candidate
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.outcome import BatchReport
from zimage_dagster.engine.reviews import current_verdicts
from zimage_dagster.engine.settings import GenerationPolicy
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery.links import gallery_base_url, grid_url
from zimage_dagster.partitions import partitions_def_for, prompt_key, spec_dataset
from zimage_dagster.picks import picks_asset
from zimage_dagster.prompts import PromptDataset
from zimage_dagster.resource import ZImageResource
from zimage_dagster.review_sensor import review_definitions
from zimage_dagster.sensors import automation_definitions
from zimage_dagster.shards import materialize_shards
from zimage_dagster.spec import ImageAssetSpec, PromptSource
from zimage_dagster.step import StepOptions, materialized_successes, run_in_step

__all__ = [
    "CHECK_NAMES",
    "build_image_assets",
    "build_image_definitions",
]


def build_image_assets(
    name: str, prompts: PromptSource | os.PathLike[str] | Sequence[Any], **options: Any
) -> dg.Definitions:
    """Definitions for a partitioned image asset generated from a prompt dataset.

    ``name`` is the asset's name (also its folder under the storage root) and ``prompts`` the
    dataset: a CSV / JSON Lines / JSON / Parquet path or URL, a loaded ``PromptDataset``, or a list
    of rows (strings, or dicts with ``prompt`` and optionally ``key``, ``size``, ``seed``,
    ``nsfw_check``). The other options are the fields of :class:`ImageAssetSpec` (each described
    there, validated there): ``storage`` (default ``$ZIMAGE_STORAGE_URL``, else
    ``zimage_output``), ``partitioning`` (``static``, ``dynamic``, ``daily``), ``mode``
    (``blocking``, ``deferred``), ``schedule``, ``seed_strategy``, ``default_size``, ``retry``,
    ``deps``, ``tags``, ``owners``, ``kinds``, ``automation_condition``, ``code_version``,
    ``op_tags``...

    The definitions hold the asset (with its checks), the job ``<name>_job`` over it, and the
    sensors and schedule :func:`~zimage_dagster.sensors.automation_definitions` decides for it.

    Example:
        >>> import dagster as dg
        >>> from zimage_dagster import ZImageResource, build_image_assets
        >>> defs = dg.Definitions.merge(
        ...     build_image_assets(
        ...         "catalogue_images",
        ...         [{"key": "fox", "prompt": "a red fox in the snow", "size": "16:9"}],
        ...         storage="memory://zimage-doctest",
        ...     ),
        ...     dg.Definitions(resources={"zimage": ZImageResource()}),
        ... )
        >>> graph = defs.resolve_asset_graph()
        >>> graph.get(dg.AssetKey("catalogue_images")).partitions_def.get_partition_keys()
        ['fox']
    """
    return build_image_definitions(ImageAssetSpec(asset_name=name, prompts=prompts, **options))


def build_image_definitions(
    spec: ImageAssetSpec,
    *,
    task_status_options: Mapping[str, Any] | None = None,
    dataset_options: Mapping[str, Any] | None = None,
) -> dg.Definitions:
    """:func:`build_image_assets` for a spec: the one code path of the factory and the component.

    The options go to the sensor builders (see :func:`~zimage_dagster.sensors.automation_definitions`).
    """
    dataset = spec_dataset(spec.prompts)
    left_out = dataset.left_out_summary(spec.asset_name)
    if left_out:  # one line per asset on load; the full report is in the definition metadata
        dg.get_dagster_logger().warning(left_out)
    partitions_def = partitions_def_for(spec, dataset)
    with warnings.catch_warnings():
        # A single-run BackfillPolicy is what lets one run cover a range of partitions (the batch
        # engine's reason to exist); Dagster marks the parameter beta. Chosen knowingly, so that
        # one warning is silenced here instead of on every load of a user's code location.
        warnings.filterwarnings(
            "ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning
        )
        asset_def = _image_asset(spec, dataset, partitions_def)
    # The job's one step (the image asset) runs in the run's own process: the multiprocess
    # executor would start a child that imports and loads the code location again before the
    # step begins, 10 to 35 s before the first task on 2 shared cores (python -m benchmarks.run
    # executor), for no parallelism a single step could use. A job of one's own over the asset
    # picks any other executor.
    job = dg.define_asset_job(
        spec.job_name,
        selection=dg.AssetSelection.assets(asset_def),
        partitions_def=None,
        executor_def=dg.in_process_executor,
    )
    parts = [
        dg.Definitions(assets=[asset_def], jobs=[job]),
        automation_definitions(
            spec,
            job,
            partitions_def=partitions_def,
            task_status_options=task_status_options,
            dataset_options=dataset_options,
        ),
    ]
    # Verdicts written in the gallery: the review sensor reports them as the review check
    # (per image: not of a shard).
    if spec.partitioning != "shards":
        parts.append(review_definitions(spec, partitions_def))
    if spec.picks:
        parts.append(dg.Definitions(assets=[picks_asset(spec, partitions_def)]))
    if spec.balance_asset:
        parts.append(balance_definitions(spec))
    return dg.Definitions.merge(*parts)


# -- the asset ----------------------------------------------------------------------------------


def _image_asset(
    spec: ImageAssetSpec, dataset: PromptDataset, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    backfill_policy = (
        dg.BackfillPolicy.single_run()
        if spec.max_partitions_per_run is None
        else dg.BackfillPolicy.multi_run(spec.max_partitions_per_run)
    )
    definition_metadata: dict[str, Any] = {
        "dataset": dg.MetadataValue.text(_describe_source(spec.prompts, dataset)),
        "dataset_rows": dg.MetadataValue.int(len(dataset)),
        "dataset_problems": dg.MetadataValue.int(len(dataset.problems)),
        "storage": dg.MetadataValue.text(spec.storage_root),
        "seed_strategy": dg.MetadataValue.text(spec.seed_strategy),
    }
    sharded = spec.partitioning == "shards"
    if sharded:
        definition_metadata["shards"] = dg.MetadataValue.int(
            len(partitions_def.get_partition_keys())
        )
        definition_metadata["shard_size"] = dg.MetadataValue.int(spec.shard_size)
    gallery = gallery_base_url(spec.gallery_url)
    if gallery is not None:
        definition_metadata["gallery"] = dg.MetadataValue.url(
            grid_url(gallery, spec.asset_key.path)
        )
    if dataset.problems:
        definition_metadata["dataset_problem_report"] = dg.MetadataValue.md(
            "\n".join(f"- {p}" for p in dataset.problems[:50])
        )

    @dg.asset(
        name=spec.asset_name,
        key_prefix=list(spec.key_prefix) or None,
        group_name=spec.group_name,
        description=_with_gallery_link(
            spec.description
            or (
                f"Z-Image-Turbo images, {'a shard of rows' if sharded else 'one'} per "
                f"partition, from {_describe_source(spec.prompts, dataset)}."
            ),
            gallery,
            spec.asset_key,
        ),
        partitions_def=partitions_def,
        backfill_policy=backfill_policy,
        retry_policy=spec.retry_policy,
        pool=spec.pool,
        kinds=set(spec.kinds),
        metadata=definition_metadata,
        output_required=False,
        check_specs=None if sharded else check_specs(spec.asset_key, partitions_def),
        required_resource_keys={spec.resource_key},
        deps=[_dep(d) for d in spec.deps],
        tags=dict(spec.tags) or None,
        owners=list(spec.owners) or None,
        automation_condition=spec.automation_condition,
        code_version=spec.code_version,
        op_tags=dict(spec.op_tags) or None,
    )
    def _asset(context: AssetExecutionContext) -> Iterator[Any]:
        resource: ZImageResource = getattr(context.resources, spec.resource_key)
        rows = spec_dataset(spec.prompts) if spec.partitioning == "dynamic" else dataset
        for problem in rows.problems:
            context.log.warning(f"dataset {rows.source}: {problem} (row left out)")
        if sharded:
            count = len(partitions_def.get_partition_keys())
            yield from materialize_shards(context, spec, resource, dataset, count)
            return
        report, missing = _generate(context, spec, resource, rows)
        yield from _check_results(spec, report, context.instance)
        yield from check_outputs(context)
        if _collect_batch(spec, context) is not None:
            _log_collect_failures(context, report, missing)
        elif report.failures or missing:
            policy = spec.retry_policy
            retries_left = policy is not None and context.retry_number < policy.max_retries
            raise _failure(report, missing, len(context.partition_keys), retries_left)

    return _asset


_MAX_FAILURE_LINES = 50


def _failure(
    report: BatchReport, missing: Sequence[str], total: int, retries_left: bool = True
) -> dg.Failure:
    """The step's failure: every failed partition with its code and the provider's message.

    Retries are allowed when any failure may pass on a retry (a timeout, a provider outage):
    a retry redoes only the partitions not materialized yet, and those rejected for good fail
    again at once from the ledger, at no cost. When every failure needs a fix (content policy,
    a missing dataset row), retrying is pointless and ``allow_retries`` is False. On the last
    attempt the policy allows (``retries_left`` False) it is False too, so the step fails with
    this message rather than Dagster's bare "Exceeded max_retries" (which hides it in a cause).
    """
    failed = dict(m.split(": ", 1) for m in missing)
    failed.update({f.job.partition: f"{f.code}: {f.message}" for f in report.failures})
    lines = [*(f"- {m}" for m in missing), *(f"- {f.describe()}" for f in report.failures)]
    if len(lines) > _MAX_FAILURE_LINES:
        more = len(lines) - _MAX_FAILURE_LINES
        lines = [*lines[:_MAX_FAILURE_LINES], f"... and {more} more (see failed_partitions)"]
    retryable = sorted({f.job.partition for f in report.failures if f.retryable})
    return dg.Failure(
        description=(
            f"{len(failed)} of {total} partitions failed "
            f"({len(report.successes)} stored and materialized):\n" + "\n".join(lines)
        ),
        metadata={
            "failed_partitions": dg.MetadataValue.json(failed),
            "retryable_partitions": dg.MetadataValue.json(retryable),
            "stored": len(report.successes),
            "failed": len(failed),
        },
        allow_retries=bool(retryable) and retries_left,
    )


def _with_gallery_link(description: str, gallery: str | None, key: dg.AssetKey) -> str:
    """The description, then markdown links to the asset's grid in the gallery (if any) and to
    its review (the grid's unreviewed partitions, each page laying out its candidates).

    >>> print(_with_gallery_link("Images.", "http://g", dg.AssetKey("hero")))
    Images.
    <BLANKLINE>
    [See every image in the gallery](http://g/assets/hero/) · [Review the unreviewed candidates](http://g/assets/hero/?review=unreviewed)
    """
    if gallery is None:
        return description
    grid = grid_url(gallery, key.path)
    review = f"{grid}?{urlencode({'review': 'unreviewed'})}"
    return (
        f"{description}\n\n[See every image in the gallery]({grid}) · "
        f"[Review the unreviewed candidates]({review})"
    )


def _describe_source(source: PromptSource, dataset: PromptDataset) -> str:
    """Where the prompts come from, as the UI shows it (markdown: a ``<python>`` label would
    be taken for an HTML tag and vanish).

    >>> from zimage_dagster.prompts import load_prompts
    >>> _describe_source([{"prompt": "a fox"}], load_prompts([{"prompt": "a fox"}]))
    '1 prompt(s) listed in the code'
    """
    if isinstance(source, str):
        return source
    if dataset.source.startswith("<"):
        return f"{len(dataset.rows)} prompt(s) listed in the code"
    return dataset.source


def _dep(dep: Any) -> Any:
    """A dependency as ``@dg.asset(deps=...)`` takes it; ``"a/b"`` names ``AssetKey(["a", "b"])``."""
    return dg.AssetKey.from_user_string(dep) if isinstance(dep, str) else dep


def _generate(
    context: dg.AssetExecutionContext,
    spec: ImageAssetSpec,
    resource: ZImageResource,
    dataset: PromptDataset,
) -> tuple[BatchReport, list[str]]:
    store = ImageStore(spec.storage_root, spec.storage_options)
    ledger = TaskLedger(store)
    jobs: list[ImageJob] = []
    missing: list[str] = []
    partitions_def = context.assets_def.partitions_def
    assert partitions_def is not None
    batch = _collect_batch(spec, context)
    partition_keys: Sequence[str] = context.partition_keys
    if batch is not None:
        # A collect run covers the range around its batch: it works on the batch alone.
        # Its units' partitions, every candidate of each (those stored are reused, those still
        # running waited for): a partition is materialized whole.
        wanted = {
            split_candidate(unit)[0]
            for unit in batch_partitions(ledger, spec.asset_key.path, batch)
        }
        partition_keys = [k for k in partition_keys if str(k) in wanted]
        context.log.info(
            f"collect batch {batch}: {len(partition_keys)} partition(s) to collect, resubmit or "
            f"regenerate, of the {len(context.partition_keys)} in the run's range"
        )
    rejects = _rejects(spec, store)
    for partition_key in partition_keys:
        problem = partition_key_problem(str(partition_key))  # e.g. a dynamic one added by hand
        if problem is not None:
            missing.append(
                f"{partition_key}: partition key {str(partition_key)!r} refused: {problem}"
            )
            continue
        row_key = prompt_key(partition_key, partitions_def)
        row = dataset.get(row_key)
        if row is None:
            missing.append(f"{partition_key}: no row with key {row_key!r} in {dataset.source}")
            continue
        jobs.extend(
            plan_candidates(
                ledger,
                spec.asset_key.path,
                str(partition_key),
                row,
                spec.variants,
                strategy=spec.seed_strategy,
                default_size=spec.default_size,
                regeneration=rejects.get(str(partition_key)),
                regenerations=spec.regenerate_rejected,
            )
        )
    if context.retry_number > 0:
        # A retried step: partitions an earlier attempt of this run materialized are done
        # (whether generated, re-attached or reused); do only the rest.
        done = _materialized_in_run(context)
        if done:
            context.log.info(
                f"step retry {context.retry_number}: {len(done)} partition(s) already "
                "materialized by an earlier attempt of this run are skipped"
            )
        jobs = [job for job in jobs if job.partition not in done]

    # Deferred mode: create the tasks, write them to the ledger and end; the task-status sensor
    # launches collect runs (tagged COLLECT_TAG) over batches of finished tasks. Partitions whose
    # image is already stored for the identical request are materialized at once.
    deferred = spec.deferred and batch is None
    options = StepOptions(
        GenerationPolicy.of(spec, resource),
        gallery_url=gallery_base_url(spec.gallery_url),
        deferred=deferred,
        # A task a collect run creates (resubmission, regeneration) stays watched by the sensor,
        # and is left alone while this run is on it.
        ledger_extra=None if batch is None else {"deferred": True, "collect_batch": batch},
        replaced=_replaced(store, spec, jobs) if rejects else None,
    )
    report = run_in_step(context, resource, ledger, spec.asset_key, jobs, options)
    report.successes = materialized_successes(jobs, report)  # of whole partitions only
    if deferred:
        context.log.info(f"deferred: {report.summary()}; the task-status sensor collects the rest")
    return report, missing


def _rejects(spec: ImageAssetSpec, store: ImageStore) -> dict[str, str]:
    """``{partition key: reject record id}`` of the partitions to regenerate: those whose
    winning verdict is a reject, when the asset regenerates rejected partitions."""
    if not spec.regenerate_rejected:
        return {}
    verdicts = current_verdicts(store, spec.asset_key.path)
    return {key: v.record_id for key, v in verdicts.items() if v.verdict == "reject"}


def _replaced(
    store: ImageStore, spec: ImageAssetSpec, jobs: Sequence[ImageJob]
) -> dict[str, list[dict[str, Any]]]:
    """The history a regeneration keeps: ``{partition: [{candidate, seed, task_id,
    rejected_by}]}`` of the stored candidates the regenerated units will replace."""
    history: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        if job.regeneration is None:
            continue
        found = store.find(spec.asset_key.path, job.partition_key)
        if found is None or found.provenance.get("fingerprint") == job.fingerprint:
            continue
        history.setdefault(job.partition, []).append(
            {
                "candidate": job.candidate,
                "seed": found.provenance.get("seed"),
                "task_id": found.provenance.get("task_id"),
                "rejected_by": job.regeneration,
            }
        )
    return history


def _collect_batch(spec: ImageAssetSpec, context: dg.AssetExecutionContext) -> str | None:
    """The batch ID of a deferred asset's collect run (tag ``zimage/collect``), else ``None``."""
    return context.run.tags.get(COLLECT_TAG) if spec.deferred else None


def _log_collect_failures(
    context: dg.AssetExecutionContext, report: BatchReport, missing: Sequence[str]
) -> None:
    """A collect run does not fail for its failed partitions: a failed step would mark every
    partition of its range failed, those outside the batch too. The sensor decides what comes
    next for each (another collect run, or a report of a failure for good)."""
    lines = [*missing, *(f.describe() for f in report.failures)]
    if lines:
        context.log.warning(
            f"{len(lines)} partition(s) of the batch not collected (the task-status sensor "
            "decides what comes next for each):\n" + "\n".join(f"- {line}" for line in lines[:50])
        )


def _materialized_in_run(context: dg.AssetExecutionContext) -> set[str]:
    """Partition keys of this asset materialized so far in this run (by earlier step attempts)."""
    entries = context.instance.all_logs(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    done: set[str] = set()
    for entry in entries:
        materialization = entry.asset_materialization
        if (
            materialization is not None
            and materialization.asset_key == context.asset_key
            and materialization.partition is not None
        ):
            done.add(str(materialization.partition))
    return done


# -- checks -------------------------------------------------------------------------------------


def _check_results(
    spec: ImageAssetSpec, report: BatchReport, instance: dg.DagsterInstance | None = None
) -> Iterator[dg.AssetCheckEvaluation | dg.AssetCheckResult]:
    """The checks of the partitions the run stored (:mod:`zimage_dagster.checks`); on Dagster
    without partitioned checks, ``review`` too, from the verdicts already recorded."""
    store = ImageStore(spec.storage_root, spec.storage_options)
    per_asset_review = report.successes and not PARTITIONED_CHECKS
    verdicts = current_verdicts(store, spec.asset_key.path) if per_asset_review else {}
    yield from check_evaluations(store, spec.asset_key, report.successes, verdicts, instance)
