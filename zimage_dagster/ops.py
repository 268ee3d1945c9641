"""Op building blocks: generate images for prompt rows inside an op-based job.

For pipelines written with ops rather than assets. The ops reuse the batch engine
(:class:`~zimage_dagster.engine.batch.BatchGenerator`), the image store, the task ledger and the per-image
metadata of the asset factory, so an image made by an op is stored, traced and shown exactly like
one made by :func:`~zimage_dagster.build_image_assets`:

* :data:`load_prompts_op` reads a prompt dataset (CSV, JSON Lines, JSON, Parquet; a path or an
  fsspec URL) and returns its valid rows as plain dicts; bad rows are logged with their row number.
* :func:`build_generate_images_op` makes an op that takes those rows, submits them concurrently
  through :meth:`ZImageResource.async_client() <zimage_dagster.ZImageResource.async_client>`,
  logs an ``AssetMaterialization(asset_key, partition=row key, metadata=...)`` for each stored
  image the moment it is stored, and returns the records (plain dicts, the provenance layout of
  :func:`~zimage_dagster.engine.provenance.to_provenance`). Rows that produced no image are listed in a
  ``dagster.Failure`` at the end (``allow_retries`` only when every failure is retryable): the
  stored images stay materialized, and a re-run reuses them at no cost.

Example (runnable; ``base_url`` must point at an API, e.g. the local emulator)::

    import dagster as dg
    from zimage_dagster import ZImageResource
    from zimage_dagster.ops import build_generate_images_op, load_prompts_op

    generate_images = build_generate_images_op(
        "generate_images", asset_key="ops_images", storage="zimage_output"
    )

    @dg.job(resource_defs={"zimage": ZImageResource(api_key=dg.EnvVar("ZIMAGE_API_KEY"))})
    def images_job():
        generate_images(load_prompts_op())

    images_job.execute_in_process(
        run_config={"ops": {"load_prompts": {"config": {"path": "examples/prompts.csv"}}}}
    )

>>> op_def = build_generate_images_op("generate_images", asset_key="ops_images", storage="/tmp/x")
>>> op_def.name, sorted(op_def.required_resource_keys)
('generate_images', ['zimage'])
"""

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import dagster as dg
from pydantic import Field

from zimage_dagster.engine.credits import CreditBudget
from zimage_dagster.engine.jobs import plan_candidates
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import to_provenance
from zimage_dagster.engine.reviews import current_verdicts
from zimage_dagster.engine.settings import GenerationPolicy
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery.links import gallery_base_url
from zimage_dagster.prompts import PromptDataset, PromptRow, load_prompts
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import GenerationOptions
from zimage_dagster.step import StepOptions, run_in_step

__all__ = [
    "LoadPromptsConfig",
    "build_generate_images_op",
    "load_prompts_op",
    "row_to_dict",
    "rows_from_dicts",
]

RowsLike = PromptDataset | Sequence[PromptRow] | Sequence[Mapping[str, Any]]


# -- rows as plain data -------------------------------------------------------------------------


def row_to_dict(row: PromptRow) -> dict[str, Any]:
    """A row as a flat, JSON-ready dict that :func:`~zimage_dagster.load_prompts` reads back.

    Absent fields are left out; the dataset's extra columns are kept at the top level.

    >>> row_to_dict(PromptRow("fox", "a red fox", "16:9", None, None, {"category": "animals"}))
    {'category': 'animals', 'key': 'fox', 'prompt': 'a red fox', 'size': '16:9'}
    """
    out: dict[str, Any] = {name: value for name, value in row.extra.items() if value is not None}
    out["key"] = row.key
    out["prompt"] = row.prompt
    for name in ("size", "seed", "nsfw_check"):
        value = getattr(row, name)
        if value is not None:
            out[name] = value
    return out


def rows_from_dicts(rows: RowsLike) -> PromptDataset:
    """Rows as a validated dataset (dicts are checked again: an op input may come from anywhere).

    >>> ds = rows_from_dicts([{"key": "fox", "prompt": "a red fox"}, {"prompt": ""}])
    >>> ds.keys, len(ds.problems)
    (['fox'], 1)
    """
    if isinstance(rows, PromptDataset):
        return rows
    items: list[object] = list(rows)
    records: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, PromptRow):
            records.append(row_to_dict(item))
        elif isinstance(item, Mapping):
            records.append(dict(item))
        else:
            raise TypeError(
                f"a prompt row must be a dict or a PromptRow, not {type(item).__name__}"
            )
    return load_prompts(records)


# -- load ---------------------------------------------------------------------------------------


class LoadPromptsConfig(dg.Config):
    """Which prompt dataset to load, and optionally which of its rows."""

    path: str = Field(
        description="Prompt dataset: a .csv/.tsv/.jsonl/.json/.parquet path or fsspec URL."
    )
    keys: list[str] | None = Field(
        default=None, description="Only these row keys (in this order); unset: every valid row."
    )
    limit: int | None = Field(default=None, ge=1, description="At most this many rows.")


@dg.op(
    name="load_prompts",
    out=dg.Out(list, description="The valid rows, as dicts (key, prompt, size, seed, ...)."),
    tags={"kind": "zimage"},
)
def load_prompts_op(context: dg.OpExecutionContext, config: LoadPromptsConfig) -> list[Any]:
    """Load and validate a prompt dataset; bad rows are logged (row number, reason) and left out.

    Fails only when the dataset as a whole is unusable, or when a requested key is missing.
    """
    dataset = load_prompts(config.path)
    for problem in dataset.problems:
        context.log.warning(f"dataset {dataset.source}: {problem} (row left out)")
    rows = list(dataset.rows)
    if config.keys is not None:
        missing = [key for key in config.keys if key not in dataset]
        if missing:
            raise dg.Failure(
                description=f"{dataset.source} has no valid row with key(s) {', '.join(missing)}",
                allow_retries=False,
            )
        rows = [row for key in config.keys if (row := dataset.get(key)) is not None]
    if config.limit is not None:
        rows = rows[: config.limit]
    context.add_output_metadata(
        {
            "dataset": dg.MetadataValue.text(dataset.source),
            "rows": dg.MetadataValue.int(len(rows)),
            "problems": dg.MetadataValue.int(len(dataset.problems)),
        }
    )
    context.log.info(f"{len(rows)} prompt row(s) from {dataset.source}")
    return [row_to_dict(row) for row in rows]


# -- generate -----------------------------------------------------------------------------------


def build_generate_images_op(
    name: str = "generate_images",
    *,
    asset_key: str | Sequence[str] | dg.AssetKey,
    description: str | None = None,
    budget: CreditBudget | None = None,
    **options: Any,
) -> dg.OpDefinition:
    """An op that generates one image per input row and records it as an asset partition.

    The op takes ``rows`` (dicts as returned by :data:`load_prompts_op`, ``PromptRow`` objects or
    a ``PromptDataset``) and returns a list of records (dicts: seed, task_id, path, sha256,
    width, height, reused... as in the provenance file stored beside each image). Per stored image
    it logs ``AssetMaterialization(asset_key, partition=<row key>, metadata=image_metadata(...))``,
    the same metadata the image assets record (seed, task ID, timings, thumbnail...).

    Args:
        name: the op's name.
        asset_key: the asset the images belong to (also their folder under ``storage``). Declare
            it in your ``Definitions`` (e.g. ``dg.AssetSpec(asset_key, partitions_def=...)``) to
            see it in the asset catalogue.
        description: the op's description.
        budget: every budget knob at once (:class:`~zimage_dagster.engine.credits.CreditBudget`),
            instead of ``max_credits_per_run`` and the other budget options.
        options: the generation options an image asset takes, described once in
            :class:`~zimage_dagster.spec.GenerationOptions`: ``storage`` (default
            ``$ZIMAGE_STORAGE_URL``, else ``zimage_output``, as for the assets),
            ``storage_options``, ``resource_key``, ``seed_strategy``, ``default_size``,
            ``reuse_stored``, ``retry_rejected``, ``retry_policy`` (default here: none; a
            ``Failure`` with ``allow_retries=False`` is never retried), ``pool``,
            ``gallery_url``, ``max_credits_per_run``, ``daily_credits``, ``credits_per_task``,
            ``over_budget``, ``credits_preflight``.

    >>> op_def = build_generate_images_op(asset_key=["catalog", "hero"], storage="/tmp/x")
    >>> op_def.name
    'generate_images'
    """
    key = asset_key if isinstance(asset_key, dg.AssetKey) else dg.AssetKey.from_coercible(asset_key)
    settings = GenerationOptions.model_validate({"retry_policy": None, **options})
    budget_fields = ("max_credits_per_run", "daily_credits", "credits_per_task")
    if budget is not None and any(options.get(field) is not None for field in budget_fields):
        raise dg.DagsterInvalidDefinitionError(
            "pass max_credits_per_run (and the other budget options) or budget, not both"
        )
    root, store_options = settings.storage_root, dict(settings.storage_options)
    resource_key = settings.resource_key
    gallery = gallery_base_url(settings.gallery_url)
    credit_budget = budget or settings.credit_budget

    @dg.op(
        name=name,
        description=description
        or f"Generates a Z-Image-Turbo image per row and materializes {key.to_user_string()}.",
        ins={"rows": dg.In(list, description="Prompt rows (dicts with key, prompt, ...).")},
        out=dg.Out(list, description="One record per stored image (seed, task_id, path...)."),
        required_resource_keys={resource_key},
        retry_policy=settings.retry_policy,
        pool=settings.pool,
        tags={"kind": "zimage"},
    )
    def _generate_images(context: dg.OpExecutionContext, rows: list[Any]) -> list[Any]:
        resource: ZImageResource = getattr(context.resources, resource_key)
        dataset = rows_from_dicts(rows)
        for problem in dataset.problems:
            context.log.warning(f"input row left out: {problem}")
        ledger = TaskLedger(ImageStore(root, store_options))
        rejects = {}  # rows to regenerate: their winning verdict is a reject
        if settings.regenerate_rejected:
            verdicts = current_verdicts(ledger.store, key.path)
            rejects = {k: v.record_id for k, v in verdicts.items() if v.verdict == "reject"}
        jobs = [
            job
            for row in dataset
            for job in plan_candidates(
                ledger,
                key.path,
                row.key,
                row,
                settings.variants,
                strategy=settings.seed_strategy,
                default_size=settings.default_size,
                regeneration=rejects.get(row.key),
                regenerations=settings.regenerate_rejected,
            )
        ]
        policy = replace(GenerationPolicy.of(settings, resource), budget=credit_budget)
        step = StepOptions(policy, gallery_url=gallery)
        report = run_in_step(context, resource, ledger, key, jobs, step)
        order = {job.partition_key: i for i, job in enumerate(jobs)}
        successes = sorted(report.successes, key=lambda s: order[s.job.partition_key])
        records = [to_provenance(s.record) for s in successes]
        if settings.variants > 1:  # which candidate of its row each image is
            records = [
                {**r, "candidate": s.job.candidate} for r, s in zip(records, successes, strict=True)
            ]
        reused = sum(1 for s in successes if s.record.reused)
        context.log.info(f"{report.summary()} ({reused} reused)")
        if report.failures:
            raise dg.Failure(
                description=(
                    f"{len(report.failures)} of {len(jobs)} image(s) failed "
                    f"({len(successes)} stored and materialized):\n{report.failure_report()}"
                ),
                metadata={
                    "failed_rows": dg.MetadataValue.json(
                        {f.job.partition_key: f"{f.code}: {f.message}" for f in report.failures}
                    ),
                    "stored": dg.MetadataValue.int(len(successes)),
                    "failed": dg.MetadataValue.int(len(report.failures)),
                },
                allow_retries=report.all_retryable,
            )
        context.add_output_metadata(
            {
                "asset": dg.MetadataValue.text(key.to_user_string()),
                "stored": dg.MetadataValue.int(len(successes)),
                "reused": dg.MetadataValue.int(reused),
                "elapsed_s": dg.MetadataValue.float(round(report.elapsed_s, 3)),
            }
        )
        return records

    return _generate_images
