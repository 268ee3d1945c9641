"""The review sensor: verdicts written in the gallery become Dagster check evaluations.

:func:`review_definitions` gives an image asset ``<name>_review_sensor`` and, on Dagster with
partitioned checks (:data:`~zimage_dagster.checks.PARTITIONED_CHECKS`), the partitioned
``review`` check and ``<name>_review_job``, which runs that check alone.

Each tick the sensor reads the asset's review records
(:func:`~zimage_dagster.engine.reviews.read_records`, one bulk read) and takes those newer than
its cursor (the newest record id it has reported: ids sort by the writer's clock). In that one
tick, for the partitions they touch, it:

- records an ``AssetObservation`` of each partition with its review state (``picked``,
  ``rejected``, or ``unreviewed`` when every verdict was undone), reviewer and winning record;
- requests one run of ``<name>_review_job`` over the range holding them (``run_key`` = the
  newest record's id), which evaluates ``review`` per partition from the current verdicts:
  passed = picked, failed = rejected (severity WARN), none = unreviewed (the UI shows the
  planned evaluation as skipped). The run reads the store only.

Why a run and not ``SensorResult(asset_events=[AssetCheckEvaluation(...)])``: Dagster stores a
run-less check evaluation under run id ``""``, and its table keeps one row per
(check, run id, partition), so the second run-less evaluation of a partition (a verdict
changed) fails the tick with an ``IntegrityError`` (Dagster 1.13.27, measured here).

On older Dagster (per-asset checks only) the sensor records the observations alone, and the
image asset's runs evaluate ``review`` per asset.

The sensor creates no task. It is stopped by default (``default_status``): turn it on in the UI.

Example:
    >>> from zimage_dagster.spec import ImageAssetSpec
    >>> spec = ImageAssetSpec(asset_name="cards", prompts=["a fox"])
    >>> defs = review_definitions(spec, dg.StaticPartitionsDefinition(["a-fox"]))
    >>> [(s.name, s.default_status.value) for s in defs.sensors]
    [('cards_review_sensor', 'STOPPED')]
"""

from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from zimage_dagster.checks import (
    PARTITIONED_CHECKS,
    latest_materializations,
    review_check_spec,
    review_evaluation,
)
from zimage_dagster.engine.reviews import (
    ReviewRecord,
    current_verdicts,
    read_records,
    review_state,
    winning_verdict,
)
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.partitions import partition_range
from zimage_dagster.spec import ImageAssetSpec

__all__ = ["DEFAULT_REVIEW_INTERVAL_S", "review_definitions", "review_observations"]

#: Seconds between two ticks by default.
DEFAULT_REVIEW_INTERVAL_S = 30


def review_observations(
    asset_key: dg.AssetKey, records: Sequence[ReviewRecord], cursor: str | None
) -> tuple[list[dg.AssetObservation], str | None]:
    """One observation per partition touched by a record newer than ``cursor``, and the next
    cursor. ``records`` are all of the asset's records (a verdict needs its whole history)."""
    fresh = [r for r in records if cursor is None or r.id > cursor]
    if not fresh:
        return [], cursor
    by_key: dict[str, list[ReviewRecord]] = {r.partition_key: [] for r in fresh}
    for record in records:
        if record.partition_key in by_key:
            by_key[record.partition_key].append(record)
    events = []
    for key in sorted(by_key):
        verdict = winning_verdict(by_key[key])
        metadata: dict[str, Any] = {"review_state": dg.MetadataValue.text(review_state(verdict))}
        if verdict is not None:
            metadata["reviewer"] = dg.MetadataValue.text(verdict.reviewer)
            metadata["review_record"] = dg.MetadataValue.text(verdict.record_id)
            if verdict.candidate is not None:
                metadata["candidate"] = dg.MetadataValue.int(verdict.candidate)
        events.append(dg.AssetObservation(asset_key=asset_key, partition=key, metadata=metadata))
    return events, max(r.id for r in fresh)


def _review_check(
    spec: ImageAssetSpec, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    check_spec = review_check_spec(spec.asset_key, partitions_def)

    @dg.multi_asset_check(
        specs=[check_spec],
        name=f"{spec.asset_name}_review_check",
        description="Evaluates the review check of the run's partitions from their verdicts.",
    )
    def _review(context: dg.AssetCheckExecutionContext) -> Iterator[Any]:
        op_context = context.op_execution_context
        keys = [str(k) for k in op_context.partition_keys]
        store = ImageStore(spec.storage_root, spec.storage_options)
        verdicts = current_verdicts(store, spec.asset_key.path)
        reviewed = [k for k in keys if k in verdicts]
        targets = latest_materializations(context.instance, spec.asset_key, reviewed)
        for key in reviewed:
            evaluation = review_evaluation(spec.asset_key, key, verdicts[key], targets.get(key))
            if evaluation is not None:
                yield evaluation
        context.log.info(
            f"review: {len(reviewed)} of {len(keys)} partition(s) reviewed "
            "(the others stay unevaluated)"
        )
        for output_name in op_context.assets_def.check_specs_by_output_name:
            yield dg.Output(None, output_name=output_name)

    return _review


def review_definitions(
    spec: ImageAssetSpec,
    partitions_def: dg.PartitionsDefinition,
    *,
    minimum_interval_seconds: int = DEFAULT_REVIEW_INTERVAL_S,
) -> dg.Definitions:
    """The review sensor (stopped unless ``spec.default_status`` is running) and, with
    partitioned checks, the ``review`` check and its job (see the module doc)."""
    job = None
    checks: list[dg.AssetChecksDefinition] = []
    if PARTITIONED_CHECKS:
        check = _review_check(spec, partitions_def)
        checks.append(check)
        job = dg.define_asset_job(
            f"{spec.asset_name}_review_job",
            selection=dg.AssetSelection.checks(check),  # partitioned as the check is
            executor_def=dg.in_process_executor,
        )

    @dg.sensor(
        name=f"{spec.asset_name}_review_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=spec.sensor_status,
        description=(
            f"Reports new gallery verdicts on {spec.asset_key.to_user_string()}: observations, "
            "and a run of the review check. Reads the store only; creates no task."
        ),
    )
    def _review_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        store = ImageStore(spec.storage_root, spec.storage_options)
        records = read_records(store, spec.asset_key.path)
        events, cursor = review_observations(spec.asset_key, records, context.cursor)
        requests = []
        if events and job is not None:
            keys = [str(e.partition) for e in events]
            first, last = partition_range(partitions_def, keys, context.instance)
            requests.append(
                dg.RunRequest(
                    run_key=f"review:{cursor}",
                    tags={
                        ASSET_PARTITION_RANGE_START_TAG: first,
                        ASSET_PARTITION_RANGE_END_TAG: last,
                    },
                )
            )
        return dg.SensorResult(asset_events=events, run_requests=requests, cursor=cursor)

    return dg.Definitions(
        sensors=[_review_sensor], jobs=[job] if job is not None else [], asset_checks=checks
    )
