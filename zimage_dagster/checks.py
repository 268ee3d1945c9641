"""The image asset's checks: what each one says of a partition, and how Dagster is told.

Five checks, each judged per partition (:func:`judge_partition`):

- ``image_decodes``: the stored file decodes fully;
- ``dimensions_match_request``: it has the requested WxH, or the requested aspect ratio;
- ``sha256_matches``: the stored file's sha256 is the one recorded at download;
- ``not_blank``: it is not near-uniform (the standard deviation of its pixels, on the
  thumbnail-size image, is at least :data:`BLANK_STDDEV`);
- ``review``: a person's verdict (:mod:`zimage_dagster.engine.reviews`): passed = picked,
  failed = rejected (severity WARN: a judgement, not a defect), no evaluation = unreviewed.

How Dagster is told depends on the installed Dagster, decided once here
(:data:`PARTITIONED_CHECKS`): from 1.12.14 the checks are partitioned
(``AssetCheckSpec(partitions_def=...)``) and each partition gets its own evaluation
(:func:`check_evaluations`), so each prompt shows its own status. Older Dagster has per-asset
checks only: one evaluation per check and run, failed if any partition the run stored failed,
the failing partitions listed in its metadata.

>>> from PIL import Image
>>> flat = Image.new("RGB", (64, 64), "gray")
>>> is_blank(flat), is_blank(Image.effect_noise((64, 64), 60).convert("RGB"))
(True, False)
"""

from __future__ import annotations

import hashlib
import inspect
import io
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from PIL import Image, ImageStat

from zimage_dagster.api import parse_size
from zimage_dagster.engine.outcome import ImageSuccess
from zimage_dagster.engine.reviews import Verdict, review_state
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.engine.thumbnails import fit_image

__all__ = [
    "BLANK_STDDEV",
    "CHECK_NAMES",
    "IMAGE_CHECKS",
    "PARTITIONED_CHECKS",
    "REVIEW_CHECK",
    "Finding",
    "check_evaluations",
    "check_outputs",
    "check_specs",
    "is_blank",
    "judge_partition",
    "judge_partitions",
    "latest_materializations",
    "review_check_spec",
    "review_evaluation",
]

#: The checks of an image asset, in the order the UI lists them.
CHECK_NAMES = ("image_decodes", "dimensions_match_request", "sha256_matches", "not_blank", "review")
#: The checks of the image itself, evaluated by the run that stores it.
IMAGE_CHECKS = CHECK_NAMES[:4]
#: The check a person's verdict sets.
REVIEW_CHECK = "review"
#: Below this standard deviation (0-255, mean over the RGB bands of the thumbnail-size image)
#: an image is blank: a flat colour, or nearly (JPEG noise on a flat field stays under 2).
BLANK_STDDEV = 4.0
_BLANK_SIDE = 256

#: Whether the installed Dagster has partitioned asset checks (1.12.14 and later): checks and
#: their evaluations per partition. Decided here, and nowhere else.
PARTITIONED_CHECKS: bool = (
    "partitions_def" in inspect.signature(dg.AssetCheckSpec.__new__).parameters
    and "partition" in inspect.signature(dg.AssetCheckEvaluation.__new__).parameters
)

_CHECK_DOCS = {
    "image_decodes": "The stored image decodes fully.",
    "dimensions_match_request": "The image has the requested WxH, or the requested aspect ratio.",
    "sha256_matches": "The stored file's sha256 matches the one recorded at download.",
    "not_blank": f"The image is not near-uniform (pixel stddev at least {BLANK_STDDEV:g}).",
    "review": "A person's verdict in the gallery: passed = picked, failed = rejected, "
    "no evaluation = not reviewed yet.",
}


def check_specs(
    asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition | None
) -> list[dg.AssetCheckSpec]:
    """The check specs the image asset evaluates itself: partitioned like the asset where
    Dagster allows, and then the four image checks (``review`` is its own check definition,
    :func:`~zimage_dagster.review_sensor.review_definitions`); on older Dagster all five,
    per asset.

    >>> [s.name for s in check_specs(dg.AssetKey("hero"), None)][-1]
    'not_blank'
    """
    options: dict[str, Any] = {}
    names: tuple[str, ...] = CHECK_NAMES
    if PARTITIONED_CHECKS:
        names = IMAGE_CHECKS
        if partitions_def is not None:
            options["partitions_def"] = partitions_def
    with warnings.catch_warnings():
        # Partitioned checks are "preview" in Dagster; chosen knowingly (each prompt shows its
        # own status), so the warning is silenced here instead of on every load.
        warnings.filterwarnings("ignore", message="Specifying a partitions_def")
        return [
            dg.AssetCheckSpec(name=name, asset=asset_key, description=_CHECK_DOCS[name], **options)
            for name in names
        ]


def review_check_spec(
    asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition | None
) -> dg.AssetCheckSpec:
    """The partitioned ``review`` check's spec (Dagster with partitioned checks only)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying a partitions_def")
        return dg.AssetCheckSpec(
            name=REVIEW_CHECK,
            asset=asset_key,
            description=_CHECK_DOCS[REVIEW_CHECK],
            partitions_def=partitions_def,
        )


@dataclass(frozen=True)
class Finding:
    """One check's outcome for one partition: passed or not, and why not."""

    check_name: str
    passed: bool
    problem: str = ""


def is_blank(image: Image.Image) -> bool:
    """Whether the image is near-uniform (see :data:`BLANK_STDDEV`)."""
    stddev = ImageStat.Stat(image.convert("RGB")).stddev
    return sum(stddev) / len(stddev) < BLANK_STDDEV


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


def judge_partition(
    store: ImageStore, asset: Sequence[str], success: ImageSuccess
) -> list[Finding]:
    """The four image checks of one stored partition, read back from the store (what a
    downstream asset will load, not what was downloaded)."""
    key = success.job.partition_key
    record = success.record
    try:
        data = store.read_bytes(asset, key)
    except FileNotFoundError:
        return [Finding(name, False, "image file missing") for name in CHECK_NAMES[:4]]
    found: dict[str, Finding] = {}
    digest = hashlib.sha256(data).hexdigest()
    found["sha256_matches"] = Finding(
        "sha256_matches",
        digest == record.sha256,
        "" if digest == record.sha256 else "stored file differs from the download",
    )
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            small = fit_image(image, _BLANK_SIDE)
    except Exception as exc:
        problem = f"does not decode: {exc}"
        found["image_decodes"] = Finding("image_decodes", False, problem)
        found["dimensions_match_request"] = Finding("dimensions_match_request", False, problem)
        found["not_blank"] = Finding("not_blank", False, problem)
        return [found[name] for name in CHECK_NAMES[:4]]
    found["image_decodes"] = Finding("image_decodes", True)
    mismatch = _dimension_mismatch(record.size_requested, width, height)
    found["dimensions_match_request"] = Finding(
        "dimensions_match_request", mismatch is None, mismatch or ""
    )
    blank = is_blank(small)
    found["not_blank"] = Finding("not_blank", not blank, "near-uniform image" if blank else "")
    return [found[name] for name in CHECK_NAMES[:4]]


def judge_partitions(
    store: ImageStore, asset: Sequence[str], successes: Sequence[ImageSuccess]
) -> dict[str, list[Finding]]:
    """``{partition key: findings}``: :func:`judge_partition` of each stored unit, a partition's
    candidates (``variants=N``) together: a check passes when it passes for every candidate,
    and a failure names the candidate (``#2: near-uniform image``)."""
    units: dict[str, list[tuple[int, list[Finding]]]] = {}
    for success in successes:
        units.setdefault(success.job.partition, []).append(
            (success.job.candidate, judge_partition(store, asset, success))
        )
    judged: dict[str, list[Finding]] = {}
    for key, found in units.items():
        if len(found) == 1:
            judged[key] = found[0][1]
            continue
        merged: list[Finding] = []
        for position, name in enumerate(CHECK_NAMES[:4]):
            failing = [(i, f[position]) for i, f in sorted(found) if not f[position].passed]
            problem = "; ".join(f"#{i + 1}: {f.problem}" for i, f in failing)
            merged.append(Finding(name, not failing, problem))
        judged[key] = merged
    return judged


def review_evaluation(
    asset_key: dg.AssetKey,
    partition_key: str,
    verdict: Verdict | None,
    target: Any = None,
) -> dg.AssetCheckEvaluation | None:
    """The ``review`` check's evaluation of one partition's verdict (``None``: unreviewed).

    Partitioned where Dagster allows (:data:`PARTITIONED_CHECKS`); ``target`` is the partition's
    latest materialization (``AssetCheckEvaluationTargetMaterializationData``), if known.

    >>> from zimage_dagster.engine.reviews import Verdict
    >>> found = review_evaluation(dg.AssetKey("hero"), "fox", Verdict("pick", 0, "ana", 1.0, "", "i", 1))
    >>> found.passed, found.metadata["review_state"].value
    (True, 'picked')
    >>> review_evaluation(dg.AssetKey("hero"), "fox", None) is None
    True
    """
    if verdict is None:
        return None
    state = review_state(verdict)
    metadata: dict[str, Any] = {
        "review_state": dg.MetadataValue.text(state),
        "reviewer": dg.MetadataValue.text(verdict.reviewer),
        "reviewed_at": dg.MetadataValue.timestamp(verdict.at),
        "review_records": dg.MetadataValue.int(verdict.records),
    }
    if verdict.candidate is not None:
        metadata["candidate"] = dg.MetadataValue.int(verdict.candidate)
    if verdict.note:
        metadata["note"] = dg.MetadataValue.text(verdict.note)
    return _evaluation(
        asset_key,
        REVIEW_CHECK,
        partition_key,
        passed=verdict.verdict == "pick",
        description=f"{state} by {verdict.reviewer}",
        metadata=metadata,
        severity=_severity(REVIEW_CHECK),
        target=target,
    )


def _severity(check_name: str) -> dg.AssetCheckSeverity:
    """A rejected review warns (a judgement); a failed image check is an error."""
    return dg.AssetCheckSeverity.WARN if check_name == REVIEW_CHECK else dg.AssetCheckSeverity.ERROR


def _evaluation(
    asset_key: dg.AssetKey,
    check_name: str,
    partition_key: str | None,
    *,
    passed: bool,
    description: str,
    metadata: Mapping[str, Any],
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    target: Any = None,
) -> dg.AssetCheckEvaluation:
    options: dict[str, Any] = {}
    if PARTITIONED_CHECKS:
        options["partition"] = partition_key
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        metadata=dict(metadata),
        severity=severity,
        description=description,
        target_materialization_data=target,
        **options,
    )


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Iterable[str]
) -> dict[str, Any]:
    """``{partition key: target materialization data}`` of each partition's latest
    materialization (what a check evaluation targets, so Dagster shows it as current)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    keys = list(partition_keys)
    if not keys:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys), limit=len(keys) * 4
    ).records
    found: dict[str, Any] = {}
    for record in records:  # newest first
        partition = record.partition_key
        if partition is not None and partition not in found:
            found[partition] = AssetCheckEvaluationTargetMaterializationData(
                run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp
            )
    return found


def check_evaluations(
    store: ImageStore,
    asset_key: dg.AssetKey,
    successes: Sequence[ImageSuccess],
    verdicts: Mapping[str, Verdict],
    instance: dg.DagsterInstance | None = None,
) -> Iterator[dg.AssetCheckEvaluation | dg.AssetCheckResult]:
    """What the asset yields for a run's stored partitions: with partitioned checks, one
    evaluation per partition and image check, each targeting the partition's latest
    materialization on ``instance`` (``review`` is evaluated by its own check); else one
    ``AssetCheckResult`` per check over them all, ``review`` from ``verdicts``."""
    judged = judge_partitions(store, asset_key.path, successes)
    if PARTITIONED_CHECKS:
        targets = {} if instance is None else latest_materializations(instance, asset_key, judged)
        for key, findings in judged.items():
            for finding in findings:
                yield _evaluation(
                    asset_key,
                    finding.check_name,
                    key,
                    passed=finding.passed,
                    description=finding.problem or _CHECK_DOCS[finding.check_name],
                    metadata={},
                    target=targets.get(key),
                )
        return
    yield from _per_asset(asset_key, judged, verdicts)


def check_outputs(context: dg.AssetExecutionContext) -> Iterator[dg.Output[None]]:
    """With partitioned checks, the empty output of each selected check (the step's check
    outputs are required; the evaluations themselves were yielded per partition)."""
    if not PARTITIONED_CHECKS:
        return  # the per-asset AssetCheckResults are the outputs
    selected = context.selected_asset_check_keys
    for output_name, spec in context.assets_def.check_specs_by_output_name.items():
        if spec.key in selected:
            yield dg.Output(None, output_name=output_name)


def _per_asset(
    asset_key: dg.AssetKey, judged: Mapping[str, list[Finding]], verdicts: Mapping[str, Verdict]
) -> Iterator[dg.AssetCheckResult]:
    """Older Dagster: one result per check over the run's partitions (the failing ones listed)."""
    problems: dict[str, list[str]] = {name: [] for name in CHECK_NAMES}
    for key, findings in judged.items():
        for finding in findings:
            if not finding.passed:
                problems[finding.check_name].append(f"{key}: {finding.problem}")
    states = {key: review_state(verdicts.get(key)) for key in judged}
    problems[REVIEW_CHECK] = [f"{key}: rejected" for key, s in states.items() if s == "rejected"]
    for name in CHECK_NAMES:
        failures = problems[name]
        metadata: dict[str, Any] = {
            "partitions_checked": len(judged),
            "partitions_failed": len(failures),
            "failures": dg.MetadataValue.json(failures[:100]),
        }
        if name == REVIEW_CHECK:
            metadata["partitions_unreviewed"] = sum(s == "unreviewed" for s in states.values())
        yield dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=name,
            passed=not failures,
            description=_CHECK_DOCS[name],
            metadata=metadata,
            severity=_severity(name),
        )
