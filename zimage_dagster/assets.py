"""The asset factory: a prompt dataset in, a partitioned image asset out.

:func:`build_image_assets` returns ``dagster.Definitions`` holding one partitioned image asset
(static partitions from the dataset, dynamic partitions, or daily x prompt), its asset checks, a job
over it and, for the daily variant, a schedule. One run may cover many partitions (a single-run
backfill): they are submitted concurrently through the async client and each partition is
materialized (an ``AssetMaterialization`` with its seed, task ID, thumbnail...) the moment its
image is stored. Partitions that fail are listed in a ``dagster.Failure`` at the end; the stored
ones stay materialized, and a re-run of the failed ones does only those.

Why no output: Dagster's IO managers cannot write one output per partition of a range, so the
asset writes through :class:`~zimage_dagster.storage.ImageStore` itself and yields no ``Output``
(one materialization per partition, with its own metadata). Dagster skips downstream steps *in the
same run* of an asset that yields no output, so downstream assets (a contact sheet...) run in
their own runs: an automation condition, a sensor, or a second job. They load images with
:class:`~zimage_dagster.storage.ImageStoreIOManager`.
"""

import hashlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg
from dagster import AssetExecutionContext
from PIL import Image

from zimage_dagster.api import parse_size
from zimage_dagster.engine.jobs import ImageJob, plan_job
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.outcome import BatchReport
from zimage_dagster.engine.request import SeedStrategy
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.engine.watcher import COLLECT_TAG
from zimage_dagster.prompts import PromptDataset, load_prompts
from zimage_dagster.resource import ZImageResource
from zimage_dagster.step import generate_in_step, submit_in_step

__all__ = [
    "CHECK_NAMES",
    "DEFAULT_RETRY_POLICY",
    "ImageAssetSpec",
    "build_image_assets",
]

Partitioning = Literal["static", "dynamic", "daily"]
PromptSource = str | os.PathLike[str] | PromptDataset | Sequence[Mapping[str, Any]]

#: Whole-step retries: exponential backoff from 10 s with +/- jitter. Task-level failures are
#: resubmitted inside the step first; fixable ones raise ``Failure(allow_retries=False)``.
DEFAULT_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

#: The checks evaluated for the partitions a run stored.
CHECK_NAMES = ("image_decodes", "dimensions_match_request", "sha256_matches")

_PROMPT_DIMENSION = "prompt"
_DATE_DIMENSION = "date"


@dataclass(frozen=True)
class ImageAssetSpec:
    """Everything :func:`build_image_assets` was given, resolved (also used by the component)."""

    name: str
    prompts: PromptSource
    storage: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    partitioning: Partitioning = "static"
    key_prefix: tuple[str, ...] = ()
    group_name: str | None = None
    description: str | None = None
    seed_strategy: SeedStrategy = "derived"
    default_size: str | None = None
    daily_start_date: str = "2026-01-01"
    dynamic_partitions_name: str | None = None
    pool: str | None = "zimage"
    retry_policy: dg.RetryPolicy | None = DEFAULT_RETRY_POLICY
    max_partitions_per_run: int | None = None
    reuse_stored: bool = True
    retry_rejected: bool = False
    resource_key: str = "zimage"
    schedule_cron: str | None = None
    schedule_timezone: str = "UTC"
    deferred: bool = False

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, self.name])


def build_image_assets(
    name: str,
    prompts: PromptSource,
    *,
    storage: str | os.PathLike[str] = "zimage_output",
    storage_options: Mapping[str, Any] | None = None,
    partitioning: Partitioning = "static",
    key_prefix: Sequence[str] = (),
    group_name: str | None = None,
    description: str | None = None,
    seed_strategy: SeedStrategy = "derived",
    default_size: str | None = None,
    daily_start_date: str = "2026-01-01",
    dynamic_partitions_name: str | None = None,
    pool: str | None = "zimage",
    retry_policy: dg.RetryPolicy | None = DEFAULT_RETRY_POLICY,
    max_partitions_per_run: int | None = None,
    reuse_stored: bool = True,
    retry_rejected: bool = False,
    resource_key: str = "zimage",
    schedule_cron: str | None = None,
    schedule_timezone: str = "UTC",
    deferred: bool = False,
) -> dg.Definitions:
    """Definitions for a partitioned image asset generated from a prompt dataset.

    Args:
        name: the asset's name (also its folder under ``storage``).
        prompts: a CSV / JSON Lines / JSON / Parquet path or URL, a loaded ``PromptDataset``, or a
            list of dicts with ``prompt`` and optionally ``key``, ``size``, ``seed``, ``nsfw_check``.
        storage: root folder or fsspec URL (``s3://bucket/prefix``) for images, provenance
            records and the task ledger.
        partitioning: ``"static"`` (one partition per dataset row), ``"dynamic"`` (keys added
            at run time, e.g. by the prompt-dataset sensor; the dataset is re-read each run) or
            ``"daily"`` (date x prompt, for recurring generation; seeds differ per day).
        seed_strategy: ``"derived"`` (from asset, partition key and prompt: the same partition
            gives the same request) or ``"random"``; a row's own ``seed`` always wins.
        default_size: size for rows that have none (else the API's default, ``1:1``).
        pool: Dagster concurrency pool of the step (limit it in the instance settings).
        retry_policy: whole-step retries (default exponential backoff with jitter).
        max_partitions_per_run: ``None`` lets one run cover any number of partitions.
        reuse_stored: reuse an image already stored for the identical request.
        retry_rejected: submit again a request the provider rejected with a fixable error.
        resource_key: the key of the :class:`~zimage_dagster.ZImageResource`.
        schedule_cron: with ``partitioning="daily"``, add a schedule (e.g. ``"0 6 * * *"``).
        deferred: a materialization only submits the tasks (ledger first) and ends, holding no
            worker while the provider works; the ``<name>_task_status`` sensor launches a short
            collect run per finished task (run key = task ID). See :mod:`zimage_dagster.sensors`.

    Example:
        >>> import dagster as dg
        >>> from zimage_dagster import ZImageResource, build_image_assets
        >>> images = build_image_assets(
        ...     "catalogue_images",
        ...     [{"key": "fox", "prompt": "a red fox in the snow", "size": "16:9"}],
        ...     storage="/tmp/zimage-doctest",
        ... )
        >>> defs = dg.Definitions.merge(
        ...     images, dg.Definitions(resources={"zimage": ZImageResource()})
        ... )
        >>> images.resolve_asset_graph().get_partitions_def(dg.AssetKey("catalogue_images")).get_partition_keys()
        ['fox']
    """
    spec = ImageAssetSpec(
        name=name,
        prompts=prompts,
        storage=os.fspath(storage),
        storage_options=dict(storage_options or {}),
        partitioning=partitioning,
        key_prefix=tuple(key_prefix),
        group_name=group_name,
        description=description,
        seed_strategy=seed_strategy,
        default_size=default_size,
        daily_start_date=daily_start_date,
        dynamic_partitions_name=dynamic_partitions_name,
        pool=pool,
        retry_policy=retry_policy,
        max_partitions_per_run=max_partitions_per_run,
        reuse_stored=reuse_stored,
        retry_rejected=retry_rejected,
        resource_key=resource_key,
        schedule_cron=schedule_cron,
        schedule_timezone=schedule_timezone,
        deferred=deferred,
    )
    return build_image_definitions(spec)


def build_image_definitions(spec: ImageAssetSpec) -> dg.Definitions:
    """:func:`build_image_assets` for an already resolved :class:`ImageAssetSpec`."""
    dataset = _load(spec.prompts)
    partitions_def = _partitions_def(spec, dataset)
    asset_def = _image_asset(spec, dataset, partitions_def)
    job = dg.define_asset_job(
        f"{spec.name}_job", selection=dg.AssetSelection.assets(asset_def), partitions_def=None
    )
    schedules: list[dg.ScheduleDefinition] = []
    if spec.schedule_cron is not None:
        if spec.partitioning != "daily":
            raise dg.DagsterInvalidDefinitionError(
                f"{spec.name}: schedule_cron needs partitioning='daily' (got {spec.partitioning!r})"
            )
        schedules.append(_daily_schedule(spec, job))
    defs = dg.Definitions(assets=[asset_def], jobs=[job], schedules=schedules)
    if spec.deferred:
        from zimage_dagster.sensors import deferred_definitions

        defs = dg.Definitions.merge(defs, deferred_definitions(spec, job.name))
    return defs


# -- partitions ---------------------------------------------------------------------------------


def _load(source: PromptSource) -> PromptDataset:
    if isinstance(source, PromptDataset):
        return source
    return load_prompts(source)


def _partitions_def(spec: ImageAssetSpec, dataset: PromptDataset) -> dg.PartitionsDefinition:
    if spec.partitioning == "static":
        return dg.StaticPartitionsDefinition(dataset.keys)
    if spec.partitioning == "dynamic":
        return dg.DynamicPartitionsDefinition(
            name=spec.dynamic_partitions_name or f"{spec.name}_prompts"
        )
    if spec.partitioning == "daily":
        return dg.MultiPartitionsDefinition(
            {
                # end_offset=1: today's partition exists from midnight, so the morning
                # schedule can ask for today's image (without it the newest is yesterday's).
                _DATE_DIMENSION: dg.DailyPartitionsDefinition(
                    start_date=spec.daily_start_date,
                    timezone=spec.schedule_timezone,
                    end_offset=1,
                ),
                _PROMPT_DIMENSION: dg.StaticPartitionsDefinition(dataset.keys),
            }
        )
    raise dg.DagsterInvalidDefinitionError(f"unknown partitioning {spec.partitioning!r}")


def _prompt_key(partition_key: str, partitions_def: dg.PartitionsDefinition) -> str:
    """The dataset key of a partition (the ``prompt`` dimension of a date x prompt key)."""
    if isinstance(partition_key, dg.MultiPartitionKey):
        return partition_key.keys_by_dimension[_PROMPT_DIMENSION]
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        multi = partitions_def.get_partition_key_from_str(str(partition_key))
        return multi.keys_by_dimension[_PROMPT_DIMENSION]
    return str(partition_key)


def _daily_schedule(spec: ImageAssetSpec, job: Any) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"{spec.name}_schedule",
        cron_schedule=spec.schedule_cron or "0 6 * * *",
        job=job,
        execution_timezone=spec.schedule_timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Generates today's image for every prompt, one run per prompt.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        tick = context.scheduled_execution_time
        date = tick.strftime("%Y-%m-%d")
        for key in _load(spec.prompts).keys:
            partition = dg.MultiPartitionKey({_DATE_DIMENSION: date, _PROMPT_DIMENSION: key})
            yield dg.RunRequest(run_key=f"{date}|{key}", partition_key=partition)

    return _schedule


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
        "storage": dg.MetadataValue.text(spec.storage),
        "seed_strategy": dg.MetadataValue.text(spec.seed_strategy),
    }
    if dataset.problems:
        definition_metadata["dataset_problem_report"] = dg.MetadataValue.md(
            "\n".join(f"- {p}" for p in dataset.problems[:50])
        )
    check_specs = [
        dg.AssetCheckSpec(
            name=check_name, asset=spec.asset_key, description=_CHECK_DOCS[check_name]
        )
        for check_name in CHECK_NAMES
    ]

    @dg.asset(
        name=spec.name,
        key_prefix=list(spec.key_prefix) or None,
        group_name=spec.group_name,
        description=spec.description
        or f"Z-Image-Turbo images, one per partition, from {_describe_source(spec.prompts, dataset)}.",
        partitions_def=partitions_def,
        backfill_policy=backfill_policy,
        retry_policy=spec.retry_policy,
        pool=spec.pool,
        kinds={"zimage", "image"},
        metadata=definition_metadata,
        output_required=False,
        check_specs=check_specs,
        required_resource_keys={spec.resource_key},
    )
    def _asset(context: AssetExecutionContext) -> Iterator[Any]:
        resource: ZImageResource = getattr(context.resources, spec.resource_key)
        rows = _load(spec.prompts) if spec.partitioning == "dynamic" else dataset
        for problem in rows.problems:
            context.log.warning(f"dataset {rows.source}: {problem} (row left out)")
        report, missing = _generate(context, spec, resource, rows)
        yield from _check_results(spec, report)
        if report.failures or missing:
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
    failed.update({f.job.partition_key: f"{f.code}: {f.message}" for f in report.failures})
    lines = [*(f"- {m}" for m in missing), *(f"- {f.describe()}" for f in report.failures)]
    if len(lines) > _MAX_FAILURE_LINES:
        more = len(lines) - _MAX_FAILURE_LINES
        lines = [*lines[:_MAX_FAILURE_LINES], f"... and {more} more (see failed_partitions)"]
    retryable = sorted(f.job.partition_key for f in report.failures if f.retryable)
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


_CHECK_DOCS = {
    "image_decodes": "Every image stored by the run decodes fully.",
    "dimensions_match_request": "Each image has the requested WxH, or the requested aspect ratio.",
    "sha256_matches": "The stored file's sha256 matches the one recorded at download.",
}


def _describe_source(source: PromptSource, dataset: PromptDataset) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return dataset.source


def _generate(
    context: dg.AssetExecutionContext,
    spec: ImageAssetSpec,
    resource: ZImageResource,
    dataset: PromptDataset,
) -> tuple[BatchReport, list[str]]:
    store = ImageStore(spec.storage, spec.storage_options)
    ledger = TaskLedger(store)
    jobs: list[ImageJob] = []
    missing: list[str] = []
    partitions_def = context.assets_def.partitions_def
    assert partitions_def is not None
    for partition_key in context.partition_keys:
        prompt_key = _prompt_key(partition_key, partitions_def)
        row = dataset.get(prompt_key)
        if row is None:
            missing.append(f"{partition_key}: no row with key {prompt_key!r} in {dataset.source}")
            continue
        jobs.append(
            plan_job(
                ledger,
                spec.asset_key.path,
                str(partition_key),
                row,
                strategy=spec.seed_strategy,
                default_size=spec.default_size,
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
        jobs = [job for job in jobs if job.partition_key not in done]

    if spec.deferred and COLLECT_TAG not in context.run.tags:
        # Deferred mode: create the tasks, write them to the ledger and end; the task-status
        # sensor launches a collect run (tagged COLLECT_TAG) per finished task. Partitions whose
        # image is already stored for the identical request are materialized at once below.
        submitted = submit_in_step(
            context,
            resource,
            ledger,
            spec.asset_key,
            jobs,
            reuse_stored=spec.reuse_stored,
            retry_rejected=spec.retry_rejected,
        )
        context.log.info(
            f"deferred: {submitted.summary()}; the task-status sensor collects the rest"
        )
        return submitted, missing

    report = generate_in_step(
        context,
        resource,
        ledger,
        spec.asset_key,
        jobs,
        reuse_stored=spec.reuse_stored,
        retry_rejected=spec.retry_rejected,
    )
    return report, missing


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


def _check_results(spec: ImageAssetSpec, report: BatchReport) -> Iterator[dg.AssetCheckResult]:
    """One evaluation per check over the partitions the run stored: the stored file is read back
    and hashed (what a downstream asset will load, not what was downloaded); a file whose sha256
    is the download's was fully decoded at download, any other one is decoded here."""
    store = ImageStore(spec.storage, spec.storage_options)
    problems: dict[str, list[str]] = {name: [] for name in CHECK_NAMES}
    for success in report.successes:
        record = success.record
        key = success.job.partition_key
        try:
            data = store.read_bytes(spec.asset_key.path, success.job.partition_key)
        except FileNotFoundError:
            for name in CHECK_NAMES:
                problems[name].append(f"{key}: image file missing")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest == record.sha256 and record.width and record.height:
            # The very bytes that were fully decoded when downloaded: no second decode.
            width, height = record.width, record.height
        else:
            if digest != record.sha256:
                problems["sha256_matches"].append(f"{key}: stored file differs from the download")
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    width, height = image.size
            except Exception as exc:
                problems["image_decodes"].append(f"{key}: {exc}")
                continue
        mismatch = _dimension_mismatch(record.size_requested, width, height)
        if mismatch:
            problems["dimensions_match_request"].append(f"{key}: {mismatch}")
    checked = len(report.successes)
    for name in CHECK_NAMES:
        failures = problems[name]
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key=spec.asset_key,
            passed=not failures,
            description=_CHECK_DOCS[name],
            metadata={
                "partitions_checked": checked,
                "partitions_failed": len(failures),
                "failures": dg.MetadataValue.json(failures[:100]),
            },
        )


def _dimension_mismatch(size: str, width: int, height: int) -> str | None:
    exact = parse_size(size)
    if exact is not None:
        if (width, height) != exact:
            return f"got {width}x{height}, requested {size}"
        return None
    ratio_w, ratio_h = (int(part) for part in size.split(":"))
    if abs(width / height - ratio_w / ratio_h) > 0.02 * (ratio_w / ratio_h):
        return f"got {width}x{height} ({width / height:.3f}), requested ratio {size}"
    return None
