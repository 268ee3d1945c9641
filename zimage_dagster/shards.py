"""Sharded mode (``partitioning="shards"``): one Dagster partition per shard of the dataset.

The asset's partitions are the shards (``shard-00000``...; which rows a shard holds is the rule of
:mod:`zimage_dagster.engine.shards`). Materializing shards runs all their rows through the same
engine as the per-prompt mode (:func:`~zimage_dagster.step.run_in_step`, the
:class:`~zimage_dagster.engine.batch.BatchGenerator`): per row, the claims, the ledger, the one
decision, the budgets and the 402 rule, and the regeneration of expired results hold exactly as
they do per partition; a row's image, provenance record, ledger entry and claim are keyed by the
row's key, as in the per-prompt mode.

What changes is what Dagster sees: no event per image. As soon as every row of a shard has an
outcome, the shard's manifest is written (:mod:`zimage_dagster.engine.manifest`, Parquet, through
the store) and the shard is materialized once, with its counts (stored, reused, failed, pending),
the credits its new images reserved, a table of its failed keys with their errors, and a contact
sheet of a few of its images. A failed image does not fail its shard: it is a row of the manifest
(``status`` ``failed``, ``error_code``, ``error_message``) and of the failed-keys table, and
materializing the shard again retries only those rows (stored ones are reused). The step fails
only when the run stored nothing and something failed (a wrong key, a refused budget...).

Example:
    >>> import dagster as dg
    >>> from zimage_dagster import ZImageResource, build_image_assets
    >>> defs = dg.Definitions.merge(
    ...     build_image_assets("bulk", [f"a fox, study {i}" for i in range(30)],
    ...                        partitioning="shards", shard_size=10, storage="memory://shd"),
    ...     dg.Definitions(resources={"zimage": ZImageResource()}))
    >>> defs.resolve_asset_graph().get(dg.AssetKey("bulk")).partitions_def.get_partition_keys()
    ['shard-00000', 'shard-00001', 'shard-00002']
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from zimage_dagster.contact_sheet import Tile, caption_for, write_contact_sheets
from zimage_dagster.engine.jobs import ImageJob, plan_job
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.manifest import ManifestRow, write_manifest
from zimage_dagster.engine.outcome import BatchReport, ImageFailure, ImageSuccess
from zimage_dagster.engine.settings import GenerationPolicy
from zimage_dagster.engine.shards import group_by_shard
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery.links import gallery_base_url
from zimage_dagster.prompts import PromptDataset
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import ImageAssetSpec
from zimage_dagster.step import StepOptions, refused_in_step, run_in_step

__all__ = ["ShardWriter", "materialize_shards", "shard_metadata", "shard_windows"]

#: Images drawn on a shard's contact sheet.
SHEET_IMAGES = 8
#: Rows one engine call works on (whole shards, at least this many): a run's memory follows a
#: window, not the run.
WINDOW_ROWS = 4000
#: Failed keys listed in a shard's table (the manifest holds them all).
MAX_FAILED_ROWS = 100


def shard_metadata(
    store: ImageStore, asset: Sequence[str], shard: str, rows: Sequence[ManifestRow], path: str
) -> dict[str, Any]:
    """A shard's materialization metadata: counts, credits, failed keys, a contact sheet.

    >>> import tempfile
    >>> rows = [ManifestRow("shard-00000", "fox", "a fox", status="failed", error_code="x",
    ...                     error_message="no")]
    >>> meta = shard_metadata(ImageStore(tempfile.mkdtemp()), ("hero",), "shard-00000", rows, "m")
    >>> meta["failed"].value, meta["stored"].value, len(meta["failed_keys"].records)
    (1, 0, 1)
    """
    counts = {status: 0 for status in ("stored", "reused", "failed", "pending")}
    for row in rows:
        counts[row.status] += 1
    credits = sum(r.credits or 0.0 for r in rows if r.status == "stored")
    failed = [r for r in rows if r.status == "failed"]
    metadata: dict[str, Any] = {
        "rows": dg.MetadataValue.int(len(rows)),
        **{name: dg.MetadataValue.int(n) for name, n in counts.items()},
        "credits": dg.MetadataValue.float(float(round(credits, 6))),
        "manifest": dg.MetadataValue.path(path),
        "failed_keys": dg.MetadataValue.table(
            records=[
                dg.TableRecord(
                    {"key": r.key, "code": r.error_code or "", "message": r.error_message or ""}
                )
                for r in failed[:MAX_FAILED_ROWS]
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("key", "string"),
                    dg.TableColumn("code", "string"),
                    dg.TableColumn("message", "string"),
                ]
            ),
        ),
    }
    shown = [r for r in rows if r.status in ("stored", "reused") and r.path][:SHEET_IMAGES]
    if shown:
        tiles = [
            Tile(
                _reader(store, asset, r.key),
                caption_for(
                    r.key,
                    {"seed": r.seed, "width": r.width, "height": r.height, "prompt": r.prompt},
                ),
            )
            for r in shown
        ]
        _, sheet = write_contact_sheets(
            store, f"{'_'.join(asset)}_{shard}", tiles, per_sheet=SHEET_IMAGES, tile_size=160
        )
        metadata["contact_sheet"] = sheet["path"]
        metadata["preview"] = sheet["preview"]
    return metadata


def _reader(store: ImageStore, asset: Sequence[str], key: str) -> Any:
    def read() -> bytes | None:
        found = store.find(asset, key)
        return None if found is None else store.read_bytes_or_none(found.path)

    return read


class ShardWriter:
    """Collects the outcomes of a run's rows by shard; when a shard's rows all have one, writes
    its manifest and materializes it (called on the step's event thread, in order)."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        store: ImageStore,
        asset_key: dg.AssetKey,
        shards: dict[str, list[str]],
    ) -> None:
        self.context = context
        self.store = store
        self.asset_key = asset_key
        self.expected = {shard: set(keys) for shard, keys in shards.items()}
        self.shard_of = {key: shard for shard, keys in shards.items() for key in keys}
        self.rows: dict[str, dict[str, ManifestRow]] = {shard: {} for shard in shards}
        self.prompts: dict[str, str] = {}
        self.written: set[str] = set()
        self._lock = threading.Lock()

    def add(self, outcome: ImageSuccess | ImageFailure) -> None:
        """One row's outcome; writes its shard when complete."""
        shard = self.shard_of.get(outcome.job.partition_key)
        if shard is None or shard in self.written:
            return
        if isinstance(outcome, ImageSuccess):
            row = ManifestRow.of_success(shard, outcome)
        else:
            row = ManifestRow.of_failure(shard, outcome)
        with self._lock:
            self.rows[shard][row.key] = row
            complete = len(self.rows[shard]) == len(self.expected[shard])
        if complete:
            self.write(shard)

    def finish(self, report: BatchReport, jobs: Sequence[ImageJob]) -> None:
        """Write every shard of ``jobs`` not written yet: outcomes the callbacks did not see (a
        run refused before it started) from the report, rows with none as ``pending``."""
        outcomes: list[ImageSuccess | ImageFailure] = [*report.successes, *report.failures]
        for outcome in outcomes:
            shard = self.shard_of.get(outcome.job.partition_key)
            if shard is not None and outcome.job.partition_key not in self.rows[shard]:
                self.add(outcome)
        by_key = {job.partition_key: job for job in jobs}
        for shard in sorted({self.shard_of[key] for key in by_key}):
            if shard in self.written:
                continue
            for key in self.expected[shard] - set(self.rows[shard]):
                job = by_key[key]
                self.rows[shard][key] = ManifestRow(shard, key, job.row.prompt, job.seed)
            self.write(shard)

    def write(self, shard: str) -> None:
        """Write the shard's manifest and log its materialization."""
        rows = sorted(self.rows[shard].values(), key=lambda r: r.key)
        asset = tuple(self.asset_key.path)
        path = write_manifest(self.store, asset, shard, rows)
        self.context.log_event(
            dg.AssetMaterialization(
                asset_key=self.asset_key,
                partition=shard,
                metadata=shard_metadata(self.store, asset, shard, rows, str(path)),
            )
        )
        self.written.add(shard)
        self.rows[shard] = {r.key: r for r in rows if r.status == "failed"}  # memory: counts only
        self.context.log.info(
            f"{shard}: manifest written ({len(rows)} row(s), "
            f"{sum(1 for r in rows if r.status == 'failed')} failed)"
        )


def materialize_shards(
    context: dg.AssetExecutionContext,
    spec: ImageAssetSpec,
    resource: ZImageResource,
    dataset: PromptDataset,
    count: int,
) -> Iterator[Any]:
    """The step of a sharded image asset over ``context.partition_keys`` (see the module doc)."""
    store = ImageStore(spec.storage_root, spec.storage_options)
    ledger = TaskLedger(store)
    asset = tuple(spec.asset_key.path)
    wanted = {str(k) for k in context.partition_keys}
    groups = group_by_shard(dataset.keys, count)
    shards = {shard: groups.get(shard, []) for shard in sorted(wanted)}
    jobs = [
        plan_job(
            ledger,
            asset,
            key,
            row,
            strategy=spec.seed_strategy,
            default_size=spec.default_size,
        )
        for shard in sorted(shards)
        for key in shards[shard]
        if (row := dataset.get(key)) is not None
    ]
    windows = shard_windows(shards, WINDOW_ROWS)
    context.log.info(
        f"{len(shards)} shard(s), {len(jobs)} row(s), in {len(windows)} window(s) of about "
        f"{WINDOW_ROWS} row(s): each shard is materialized (manifest, counts, failed keys) once "
        "all its rows are done"
    )
    writer = ShardWriter(context, store, spec.asset_key, shards)
    for shard, keys in shards.items():
        if not keys:
            writer.write(shard)  # an empty shard: an empty manifest
    # No thumbnail per image, downloads checked by their structure (GenerationPolicy.for_shards).
    options = StepOptions(
        GenerationPolicy.of(spec, resource).for_shards(),
        gallery_url=gallery_base_url(spec.gallery_url),
    )
    # over_budget="refuse" judges the whole run before its first window (each window's own
    # check then sees the run's spend so far: the run's counter is shared by its windows).
    refused = refused_in_step(context, resource, ledger, spec.asset_key, jobs, options)
    if refused is not None:
        writer.finish(refused, jobs)
        _fail_if_nothing_stored(context, refused.failures, 0)
    by_shard: dict[str, list[ImageJob]] = {}
    for job in jobs:
        by_shard.setdefault(writer.shard_of[job.partition_key], []).append(job)
    del jobs  # each window keeps its own jobs, outcomes and report only while it runs
    failures: list[ImageFailure] = []
    stored = 0
    for window in windows:
        window_jobs = [job for shard in window for job in by_shard.pop(shard, [])]
        if not window_jobs:
            continue
        report = run_in_step(
            context, resource, ledger, spec.asset_key, window_jobs, options, on_outcome=writer.add
        )
        writer.finish(report, window_jobs)
        stored += len(report.successes)
        failures.extend(report.failures)
        del report, window_jobs
    _fail_if_nothing_stored(context, failures, stored)
    yield from ()


def shard_windows(shards: dict[str, list[str]], rows: int) -> list[list[str]]:
    """The shards in order, cut into windows of whole shards of at least ``rows`` rows each
    (the last may hold fewer): what one engine call works on, so that a run's memory grows
    with a window, not with the run.

    >>> shard_windows({"s0": ["a", "b"], "s1": ["c"], "s2": ["d", "e"], "s3": []}, 3)
    [['s0', 's1'], ['s2', 's3']]
    """
    windows: list[list[str]] = [[]]
    size = 0
    for shard in sorted(shards):
        if size >= rows:
            windows.append([])
            size = 0
        windows[-1].append(shard)
        size += len(shards[shard])
    return [w for w in windows if w]


def _fail_if_nothing_stored(
    context: dg.AssetExecutionContext, failures: Sequence[ImageFailure], stored: int
) -> None:
    if failures:
        context.log.warning(
            f"{len(failures)} row(s) failed (see each shard's failed_keys and manifest; "
            "materializing a shard again retries its failed rows only):\n"
            + "\n".join(f"- {f.describe()}" for f in failures[:MAX_FAILED_ROWS])
        )
    if failures and not stored:
        raise dg.Failure(
            description=(
                f"every one of the {len(failures)} row(s) failed, e.g. {failures[0].describe()}"
            ),
            allow_retries=BatchReport(failures=list(failures)).all_retryable,
        )
