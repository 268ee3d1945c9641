"""Sensors of deferred mode and of the dynamic-partitions variant.

- :func:`build_task_status_sensor`: each tick, a :class:`~zimage_dagster.engine.collect.TaskWatcher`
  reads the asset's deferred ledger entries in bulk, polls the open tasks concurrently within a
  time budget (a cursor spreads a large backlog over ticks), and answers with at most one
  collect run per tick, over up to ``max_per_run`` partitions (completed tasks to store, retryable failures to
  resubmit, expired results to regenerate: the run does all three; ``run_key`` =
  ``collect:<batch ID>``, a digest of the batch's task IDs, tag ``zimage/collect``), and one
  ``AssetObservation`` per partition that failed for good (with the provider's code and message;
  shown on the partition's events). It never creates a task itself.
- :func:`build_prompt_dataset_sensor`: watches a prompt dataset (a file or a folder of files,
  local or any fsspec URL), adds new keys as dynamic partitions and requests their runs, requests
  the regeneration of a key whose prompt changed, and reports keys that left the dataset (it
  never deletes a partition). Its cursor is a digest of the files' (path, size, mtime/etag):
  small however large the dataset; per-key state comes from storage (provenance, ledger).
- :func:`automation_definitions`: the one function deciding which of them, and which schedule,
  an image asset has: the task-status sensor in deferred mode, the prompt-dataset sensor for a
  dynamic asset watching a file (in either mode, unless ``dataset_sensor`` is false), and for a
  daily asset with a ``schedule``, a schedule built from the partitioned job the Dagster way
  (``build_schedule_from_partitioned_job``: it requests the newest day's partitions known at
  load, so a dataset changed after load never fails a tick).

Example:
    >>> from zimage_dagster.spec import ImageAssetSpec
    >>> spec = ImageAssetSpec(asset_name="cards", prompts="cards.csv", partitioning="dynamic",
    ...                       mode="deferred")
    >>> defs = automation_definitions(spec, dg.define_asset_job("cards_job"))
    >>> sorted(s.name for s in defs.sensors)
    ['cards_prompt_dataset', 'cards_task_status']
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from upath import UPath

from zimage_dagster.dataset.request import request_fingerprint
from zimage_dagster.engine.collect import (
    COLLECT_TAG,
    DEFAULT_MAX_ACTIVE_RUNS,
    DEFAULT_MAX_COLLECT_RUNS,
    DEFAULT_MAX_PER_RUN,
    DEFAULT_RESULT_TTL_S,
    BatchState,
    CollectBatch,
    TaskWatcher,
    TickReport,
)
from zimage_dagster.engine.decide import Action, DecisionPolicy, decide, stored_record
from zimage_dagster.engine.jobs import plan_job_for
from zimage_dagster.engine.keys import split_candidate
from zimage_dagster.engine.ledger import LedgerEntry, TaskLedger
from zimage_dagster.engine.settings import GenerationPolicy
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.partitions import partition_range, partitions_def_for, spec_dataset
from zimage_dagster.prompts import PromptDataset, PromptRow, load_prompts
from zimage_dagster.spec import ImageAssetSpec

if TYPE_CHECKING:
    from zimage_dagster.resource import ZImageResource

__all__ = [
    "DATASET_SUFFIXES",
    "REASON_TAG",
    "automation_definitions",
    "build_prompt_dataset_sensor",
    "build_task_status_sensor",
    "dataset_digest",
    "dataset_files",
    "load_dataset",
]

#: Tag saying why the prompt-dataset sensor requested a run: ``new`` or ``changed``.
REASON_TAG = "zimage/reason"
#: The task watcher's share of a task-status tick's budget (the rest: building the answer).
WATCHER_SHARE = 0.85
#: File suffixes read from a dataset folder.
DATASET_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")


def _store(spec: ImageAssetSpec) -> ImageStore:
    return ImageStore(spec.storage_root, spec.storage_options)


# -- task status --------------------------------------------------------------------------------


def build_task_status_sensor(
    spec: ImageAssetSpec,
    job_name: str,
    *,
    name: str | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    minimum_interval_seconds: int = 30,
    tick_budget_s: float = 30.0,
    concurrency: int = 32,
    max_resubmits: int | None = None,
    max_per_run: int = DEFAULT_MAX_PER_RUN,
    max_collect_runs: int = DEFAULT_MAX_COLLECT_RUNS,
    max_active_runs: int = DEFAULT_MAX_ACTIVE_RUNS,
    result_ttl_s: float = DEFAULT_RESULT_TTL_S,
    expiry_margin_s: float = 3600.0,
    recollect_after_s: float = 600.0,
    resource_key: str | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """A sensor that watches the asset's deferred tasks and launches their collect runs.

    Args:
        spec: the image asset's spec (storage, asset key, resource key).
        job_name: the job that materializes the asset (``<name>_job``); a collect run runs it
            over the smallest partition range holding its batch, with the tag
            ``zimage/collect=<batch ID>`` and ``run_key=collect:<batch ID>``, and works on the
            batch's partitions alone.
        name: the sensor's name (default ``<asset name>_task_status``).
        partitions_def: the asset's partitions (default: built from the spec, which reads the
            dataset once); they order the partitions of a collect run's range.
        minimum_interval_seconds: seconds between ticks.
        tick_budget_s: a tick's time budget; keep it well under Dagster's sensor timeout (60 s,
            ``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS``). The watcher gets 85 % of it (polls, ledger
            writes), the answer the rest. Work that does not fit resumes next tick.
        concurrency: status requests in flight at once.
        max_resubmits: the resubmission budget (see :mod:`zimage_dagster.engine.decide`);
            default: the resource's ``max_resubmits``, the one option the collect runs use too
            (they create the new tasks, never the sensor).
        max_per_run: partitions per collect run (a tick asks for one run; more wait for the next).
        max_collect_runs: collect runs a partition may go through uncollected before it is
            reported as failed for good.
        max_active_runs: collect runs of the asset queued or running at once; while that many
            are, ready partitions wait for a later tick and one bigger batch (fewer run starts).
        result_ttl_s: lifetime of the provider's result links (24 h).
        expiry_margin_s: regenerate, rather than collect, a result this close to expiring.
        recollect_after_s: ask again (same run key) for a collect run not created after this long.
        resource_key: the :class:`~zimage_dagster.ZImageResource` key (default the spec's).
        default_status: RUNNING by default: it only acts on tasks submitted in deferred mode,
            and deferred mode does nothing useful without it.
        clock: unix seconds (tests shift it to simulate a day passing).
    """
    key = resource_key or spec.resource_key
    sensor_name = name or f"{_safe_name(spec)}_task_status"
    watcher_options: dict[str, Any] = {
        # The watcher's share; the rest is for the answer (partition ranges, run requests).
        "tick_budget_s": tick_budget_s * WATCHER_SHARE,
        "concurrency": concurrency,
        "max_per_run": max_per_run,
        "max_collect_runs": max_collect_runs,
        "max_active_runs": max_active_runs,
        "result_ttl_s": result_ttl_s,
        "expiry_margin_s": expiry_margin_s,
        "recollect_after_s": recollect_after_s,
        "clock": clock,
    }
    ordering: list[dg.PartitionsDefinition] = [partitions_def] if partitions_def else []
    # Polls that found a task still open, kept across ticks (in the code server's memory) so
    # that the ledger records how many polls each task took; only open tasks are held.
    open_polls: dict[str, int] = {}

    def partitions() -> dg.PartitionsDefinition:
        if not ordering:  # built once, when first needed
            ordering.append(partitions_def_for(spec, spec_dataset(spec.prompts)))
        return ordering[0]

    @dg.sensor(
        name=sensor_name,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={key},
        description=(
            f"Deferred mode of {spec.asset_key.to_user_string()}: polls the submitted tasks and "
            f"launches collect runs over batches of up to {max_per_run} partitions (they also "
            "resubmit retryable failures and regenerate expired results); reports permanent "
            "failures."
        ),
    )
    def _task_status_sensor(context: dg.SensorEvaluationContext, **_: Any) -> dg.SensorResult:
        resource: ZImageResource = getattr(context.resources, key)
        watcher = TaskWatcher(
            TaskLedger(_store(spec), clock=clock),
            spec.asset_key.path,
            logger=context.log,
            open_polls=open_polls,
            policy=GenerationPolicy(
                max_resubmits=resource.max_resubmits if max_resubmits is None else max_resubmits
            ),
            **watcher_options,
        )

        async def run() -> TickReport:
            async with resource.async_client() as client:
                return await watcher.tick(
                    client, _cursor_after(context.cursor), _batch_state(context.instance)
                )

        report = asyncio.run(run())
        return _task_status_result(spec, job_name, report, partitions, context)

    return _task_status_sensor


def _batch_state(instance: dg.DagsterInstance) -> BatchState:
    """The state of a batch's collect run, from the instance's runs (by tag)."""

    def state(batch_id: str) -> Literal["active", "finished"] | None:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={COLLECT_TAG: batch_id}), limit=1)
        if not runs:
            return None
        return "finished" if runs[0].is_finished else "active"

    return state


def _cursor_after(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        after = json.loads(cursor).get("after")
    except (ValueError, AttributeError):
        return None
    return after if isinstance(after, str) else None


def _collect_request(
    job_name: str,
    batch: CollectBatch,
    partitions: Callable[[], dg.PartitionsDefinition],
    instance: dg.DagsterInstance,
) -> dg.RunRequest:
    """One collect run: the asset's job over the smallest range holding the batch (the
    partitions of its units: a candidate's unit key names its partition, see
    :func:`~zimage_dagster.engine.keys.split_candidate`)."""
    tags = {COLLECT_TAG: batch.batch_id}
    keys = sorted({split_candidate(unit)[0] for unit in batch.partitions})
    if len(keys) == 1:
        return dg.RunRequest(
            run_key=batch.run_key,
            job_name=job_name,
            partition_key=keys[0],
            tags=tags,
        )
    first, last = partition_range(partitions(), keys, instance)
    return dg.RunRequest(
        run_key=batch.run_key,
        job_name=job_name,
        tags={
            **tags,
            ASSET_PARTITION_RANGE_START_TAG: first,
            ASSET_PARTITION_RANGE_END_TAG: last,
        },
    )


def _task_status_result(
    spec: ImageAssetSpec,
    job_name: str,
    report: TickReport,
    partitions: Callable[[], dg.PartitionsDefinition],
    context: dg.SensorEvaluationContext,
) -> dg.SensorResult:
    context.log.info(report.summary())
    for error in report.errors[:20]:
        context.log.warning(error)
    run_requests = [
        _collect_request(job_name, batch, partitions, context.instance) for batch in report.batches
    ]
    events: list[dg.AssetObservation] = []
    for f in report.failures:
        context.log.warning(
            f"partition {f.partition_key}: task {f.task_id} failed for good: {f.code}: {f.message}"
        )
        events.append(
            dg.AssetObservation(
                asset_key=spec.asset_key,
                partition=split_candidate(f.partition_key)[0],
                description=f"generation failed: {f.code}: {f.message}",
                metadata={
                    "zimage_status": dg.MetadataValue.text("failed"),
                    "error_code": dg.MetadataValue.text(f.code),
                    "error_message": dg.MetadataValue.text(f.message),
                    "task_id": dg.MetadataValue.text(f.task_id),
                    "seed": dg.MetadataValue.int(f.seed),
                    "prompt": dg.MetadataValue.text(f.prompt),
                    "attempts": dg.MetadataValue.int(f.attempts),
                },
            )
        )
    cursor = None if report.complete else json.dumps({"after": report.cursor})
    if not run_requests and not events:
        return dg.SensorResult(skip_reason=report.summary(), cursor=cursor)
    return dg.SensorResult(run_requests=run_requests, asset_events=events, cursor=cursor)


# -- prompt dataset -----------------------------------------------------------------------------


def _dataset_root(spec: ImageAssetSpec) -> UPath:
    source = spec.prompts
    if isinstance(source, str):
        return UPath(source, **dict(spec.storage_options or {}))
    raise dg.DagsterInvalidDefinitionError(
        f"{spec.asset_name}: the prompt-dataset sensor watches a file or folder (path or URL), "
        f"not a {type(source).__name__}"
    )


def dataset_files(root: UPath) -> list[UPath]:
    """The dataset's files: ``root`` itself, or the dataset files under the folder ``root``."""
    if root.is_dir():
        return sorted(
            (
                p
                for p in root.rglob("*")
                if p.suffix.lower() in DATASET_SUFFIXES
                and not p.name.startswith(".")
                and p.is_file()
            ),
            key=str,
        )
    return [root]


_STAT_KEYS = ("size", "mtime", "LastModified", "last_modified", "ETag", "etag", "md5Hash")


def dataset_digest(files: Sequence[UPath]) -> str:
    """sha256 (24 hex) of every file's path, size and mtime/etag: one ``info`` call per file."""
    items = []
    for p in files:
        try:
            info = p.fs.info(p.path)
        except FileNotFoundError:
            continue
        items.append([str(p), {k: info[k] for k in _STAT_KEYS if k in info}])
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_dataset(files: Sequence[UPath]) -> tuple[dict[str, PromptRow], list[str]]:
    """Rows by key from every file (the first file holding a key wins) and the problems."""
    rows: dict[str, PromptRow] = {}
    problems: list[str] = []
    for p in files:
        try:
            dataset: PromptDataset = load_prompts(p)
        except (ValueError, OSError) as exc:
            problems.append(f"{p}: {exc}")
            continue
        problems.extend(f"{p}: {problem}" for problem in dataset.problems)
        for row in dataset:
            if row.key in rows:
                problems.append(f"{p}: key {row.key!r} already defined in an earlier file")
                continue
            rows[row.key] = row
    return rows, problems


def _read_provenance(store: ImageStore, spec: ImageAssetSpec) -> dict[str, dict[str, Any]]:
    """Every provenance record of the asset, by partition key, in one bulk read (the store's)."""
    return {r.partition_key: dict(r.provenance) for r in store.records(spec.asset_key.path)}


def build_prompt_dataset_sensor(
    spec: ImageAssetSpec,
    job_name: str,
    *,
    name: str | None = None,
    minimum_interval_seconds: int = 60,
    max_run_requests: int = 1000,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """A sensor that keeps the dynamic partitions in step with the prompt dataset.

    When the dataset's files change (a digest of their paths, sizes and mtimes/etags, which is
    also the whole cursor), it reads the dataset, the dynamic partitions and, in bulk, the
    asset's provenance records and ledger, and:

    - adds keys new to the dataset as dynamic partitions and requests a run for each;
    - requests a run for an existing key whose prompt, size, nsfw_check or explicit seed no longer
      matches what was generated (or is being generated), and for one never generated;
    - reports keys that left the dataset once (a log line and an ``AssetObservation``); it never
      deletes a partition nor an image.

    Run keys are ``<key>:<request fingerprint>:<task ID of the stored image or "new">``, so the
    same change is requested once. At most ``max_run_requests`` runs per tick: the rest follow on
    the next ticks. ``default_status`` is STOPPED: turning it on starts paid generation.
    """
    if spec.partitioning != "dynamic":
        raise dg.DagsterInvalidDefinitionError(
            f"{spec.asset_name}: the prompt-dataset sensor needs partitioning='dynamic' "
            f"(got {spec.partitioning!r})"
        )
    root = _dataset_root(spec)
    partitions_name = spec.partitions_name
    sensor_name = name or f"{_safe_name(spec)}_prompt_dataset"

    @dg.sensor(
        name=sensor_name,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Keeps the dynamic partitions {partitions_name!r} in step with {root}: adds new "
            "keys, regenerates changed prompts, reports removed keys (never deletes)."
        ),
    )
    def _prompt_dataset_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        files = dataset_files(root)
        digest = dataset_digest(files)
        previous = _json_cursor(context.cursor)
        if previous.get("digest") == digest and not previous.get("backlog"):
            return dg.SensorResult(skip_reason="dataset unchanged", cursor=context.cursor)
        return _evaluate_dataset(
            spec,
            job_name,
            partitions_name,
            files,
            digest,
            max_run_requests,
            previous.get("after") if previous.get("backlog") else None,
            context,
        )

    return _prompt_dataset_sensor


def _json_cursor(cursor: str | None) -> dict[str, Any]:
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _evaluate_dataset(
    spec: ImageAssetSpec,
    job_name: str,
    partitions_name: str,
    files: Sequence[UPath],
    digest: str,
    max_run_requests: int,
    previous_after: object,
    context: dg.SensorEvaluationContext,
) -> dg.SensorResult:
    rows, problems = load_dataset(files)
    for problem in problems[:50]:
        context.log.warning(f"dataset: {problem} (row left out)")
    existing = set(context.instance.get_dynamic_partitions(partitions_name))
    store = _store(spec)
    ledger = TaskLedger(store)
    entries = {e.partition_key: e for e in ledger.iter_entries(spec.asset_key.path)}

    new_keys = [k for k in rows if k not in existing]
    wanted = _runs_wanted(spec, rows, entries, _read_provenance(store, spec), context)

    # A backlog larger than one tick's share goes on after the last key requested (the cursor
    # holds that one key, not the set): already requested runs are not requested again.
    after = previous_after if isinstance(previous_after, str) else None
    remaining = [w for w in wanted if after is None or w[0] > after]
    picked = remaining[:max_run_requests]
    backlog = len(remaining) > max_run_requests
    run_requests = [
        dg.RunRequest(
            run_key=run_key, job_name=job_name, partition_key=key, tags={REASON_TAG: reason}
        )
        for key, reason, run_key in picked
    ]
    events = _removed_keys(spec, ledger, existing - set(rows), context)
    context.log.info(
        f"dataset {len(rows)} keys: {len(new_keys)} new, "
        f"{sum(1 for w in wanted if w[1] == 'changed')} changed, {len(existing - set(rows))} "
        f"removed; {len(run_requests)} run(s) requested{' (more next tick)' if backlog else ''}"
    )
    cursor = json.dumps(
        {"digest": digest, **({"backlog": True, "after": picked[-1][0]} if backlog else {})}
    )
    dynamic = [dg.AddDynamicPartitionsRequest(partitions_name, new_keys)] if new_keys else []
    if not run_requests and not events and not dynamic:
        return dg.SensorResult(skip_reason="dataset changed; nothing to do", cursor=cursor)
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=dynamic,
        asset_events=events,
        cursor=cursor,
    )


def _runs_wanted(
    spec: ImageAssetSpec,
    rows: Mapping[str, PromptRow],
    entries: Mapping[str, LedgerEntry],
    provenance: Mapping[str, Mapping[str, Any]],
    context: dg.SensorEvaluationContext,
) -> list[tuple[str, str, str]]:
    """``(key, reason, run key)`` of each row a run would generate as it is now (the one
    decision, :func:`~zimage_dagster.engine.decide.decide`, says ``create`` for its planned
    request), sorted by key; ``reason`` is ``new`` or ``changed``. Not wanted: a row whose image
    is stored for its request, whose task is open, or that was rejected as it is (the user must
    change it); a retryable failure is wanted again."""
    policy = DecisionPolicy(
        reuse_stored=True,  # stored for the row's request: up to date, whatever runs do
        retry_rejected=spec.retry_rejected,
        refetch_collected=False,  # collected but its image gone: a run is wanted
    )
    wanted: list[tuple[str, str, str]] = []
    for key, row in rows.items():
        entry = entries.get(key)
        record = stored_record(provenance.get(key))
        job = plan_job_for(
            entry,
            spec.asset_key.path,
            key,
            row,
            strategy=spec.seed_strategy,
            default_size=spec.default_size,
            regenerations=spec.regenerate_rejected,  # a regenerated row is up to date
        )
        if decide(entry, record, job.fingerprint, policy).action != Action.CREATE:
            continue
        if record is None and entry is None:
            reason, basis = "new", "new"
        else:
            reason = "changed"
            basis = record.task_id if record is not None else entry.task_id if entry else "new"
            context.log.info(f"key {key!r}: the dataset row changed; requesting regeneration")
        # Named by the row's content (its own seed, if any): a random draw never renames it.
        fp = request_fingerprint(job.row.prompt, job.row.size, row.seed, job.row.nsfw_check)
        wanted.append((key, reason, f"{key}:{fp}:{basis}"))
    return sorted(wanted, key=lambda w: w[0])


def _removed_keys(
    spec: ImageAssetSpec,
    ledger: TaskLedger,
    removed: set[str],
    context: dg.SensorEvaluationContext,
) -> list[dg.AssetObservation]:
    """One observation per key newly gone from the dataset; the reported set lives in storage."""
    path = ledger.state_path(spec.asset_key.path, "dataset_removed_keys")
    raw = ledger.store.read_bytes_or_none(path)
    reported = set(json.loads(raw)) if raw else set()
    fresh = sorted(removed - reported)
    if fresh:
        shown = ", ".join(fresh[:20]) + (f" and {len(fresh) - 20} more" if len(fresh) > 20 else "")
        context.log.warning(
            f"{len(fresh)} key(s) left the dataset (partitions and images kept): {shown}"
        )
    if removed != reported:
        ledger.store.write_atomic(path, json.dumps(sorted(removed)).encode())
    return [
        dg.AssetObservation(
            asset_key=spec.asset_key,
            partition=key,
            description="this key is no longer in the prompt dataset (partition and image kept)",
            metadata={"zimage_status": dg.MetadataValue.text("removed_from_dataset")},
        )
        for key in fresh
    ]


# -- bundle -------------------------------------------------------------------------------------


def automation_definitions(
    spec: ImageAssetSpec,
    job: dg.UnresolvedAssetJobDefinition,
    *,
    partitions_def: dg.PartitionsDefinition | None = None,
    task_status_options: Mapping[str, Any] | None = None,
    dataset_options: Mapping[str, Any] | None = None,
) -> dg.Definitions:
    """The sensors and schedule of an image asset, decided here and nowhere else.

    - deferred mode: the task-status sensor (:func:`build_task_status_sensor`);
    - ``spec.wants_dataset_sensor`` (dynamic partitions fed by a file or URL, unless
      ``dataset_sensor`` is false), in either mode: the prompt-dataset sensor;
    - ``schedule`` (daily partitioning): ``<asset>_schedule``, built from the job by
      ``dagster.build_schedule_from_partitioned_job`` at the schedule's hour and minute, in the
      partitions' time zone.

    The prompt-dataset sensor and the schedule start as ``spec.default_status`` says (stopped
    by default: their ticks start paid generation); the task-status sensor starts running (it
    only collects tasks already paid for).

    The options are passed to the sensor builders (intervals, budgets, default status);
    ``partitions_def`` (the asset's) orders the partitions of the collect runs' ranges.
    """
    sensors: list[dg.SensorDefinition] = []
    if spec.deferred:
        options = {"partitions_def": partitions_def, **dict(task_status_options or {})}
        sensors.append(build_task_status_sensor(spec, job.name, **options))
    if spec.wants_dataset_sensor:
        options = {"default_status": spec.sensor_status, **dict(dataset_options or {})}
        sensors.append(build_prompt_dataset_sensor(spec, job.name, **options))
    schedules: list[Any] = []
    if spec.schedule is not None:
        hour, minute = spec.schedule.hour_and_minute
        schedules.append(
            dg.build_schedule_from_partitioned_job(
                job,
                name=f"{spec.asset_name}_schedule",
                hour_of_day=hour,
                minute_of_hour=minute,
                default_status=spec.schedule_status,
                description=(
                    "Generates the day's image of every prompt (one run per prompt, run key = "
                    "partition key)."
                ),
            )
        )
    return dg.Definitions(sensors=sensors, schedules=schedules)


def _safe_name(spec: ImageAssetSpec) -> str:
    return "__".join(spec.asset_key.path).replace("-", "_")
