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

import os
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from zimage_dagster.dataset.request import SeedStrategy
from zimage_dagster.engine.credits import CreditBudget
from zimage_dagster.engine.jobs import plan_job
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import to_provenance
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery.links import gallery_base_url
from zimage_dagster.prompts import PromptDataset, PromptRow, load_prompts
from zimage_dagster.resource import ZImageResource
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
    storage: str | os.PathLike[str] = "zimage_output",
    storage_options: Mapping[str, Any] | None = None,
    resource_key: str = "zimage",
    seed_strategy: SeedStrategy = "derived",
    default_size: str | None = None,
    reuse_stored: bool = True,
    retry_rejected: bool = False,
    retry_policy: dg.RetryPolicy | None = None,
    pool: str | None = "zimage",
    description: str | None = None,
    gallery_url: str | None = None,
    max_credits_per_run: float | None = None,
    budget: CreditBudget | None = None,
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
        storage: root folder or fsspec URL of the image store (images, provenance, ledger).
        resource_key: the key of the :class:`~zimage_dagster.ZImageResource`.
        seed_strategy: ``"derived"`` (from asset key, row key and prompt, as the assets do: the
            same row gives the same request) or ``"random"``; a row's own ``seed`` always wins.
        default_size: size for rows without one (else the API default, ``1:1``).
        reuse_stored: reuse an image already stored for the identical request (no new task).
        retry_rejected: submit again a request the provider rejected with a fixable error.
        retry_policy: whole-step retries (a ``Failure`` with ``allow_retries=False`` is not
            retried: fixable errors such as a content-policy rejection).
        pool: Dagster concurrency pool of the op.
        gallery_url: base URL of ``zimage-gallery`` (default ``$ZIMAGE_GALLERY_URL``): each
            materialization links to its image's page there.
        max_credits_per_run: credits the run's tasks may reserve; when reached, the rows left
            fail with ``budget_reached`` (not retried). The balance is read first (preflight).
        budget: every budget knob at once (:class:`~zimage_dagster.engine.credits.CreditBudget`:
            daily budget, price, ``over_budget``, preflight), instead of ``max_credits_per_run``.

    >>> op_def = build_generate_images_op(asset_key=["catalog", "hero"], storage="/tmp/x")
    >>> op_def.name
    'generate_images'
    """
    key = asset_key if isinstance(asset_key, dg.AssetKey) else dg.AssetKey.from_coercible(asset_key)
    root = os.fspath(storage)
    store_options = dict(storage_options or {})
    if budget is not None and max_credits_per_run is not None:
        raise dg.DagsterInvalidDefinitionError(
            "pass max_credits_per_run or budget (which has its own max_credits_per_run), not both"
        )
    options = StepOptions(
        reuse_stored=reuse_stored,
        retry_rejected=retry_rejected,
        gallery_url=gallery_base_url(gallery_url),
        budget=budget or CreditBudget(max_credits_per_run=max_credits_per_run),
    )

    @dg.op(
        name=name,
        description=description
        or f"Generates a Z-Image-Turbo image per row and materializes {key.to_user_string()}.",
        ins={"rows": dg.In(list, description="Prompt rows (dicts with key, prompt, ...).")},
        out=dg.Out(list, description="One record per stored image (seed, task_id, path...)."),
        required_resource_keys={resource_key},
        retry_policy=retry_policy,
        pool=pool,
        tags={"kind": "zimage"},
    )
    def _generate_images(context: dg.OpExecutionContext, rows: list[Any]) -> list[Any]:
        resource: ZImageResource = getattr(context.resources, resource_key)
        dataset = rows_from_dicts(rows)
        for problem in dataset.problems:
            context.log.warning(f"input row left out: {problem}")
        ledger = TaskLedger(ImageStore(root, store_options))
        jobs = [
            plan_job(
                ledger, key.path, row.key, row, strategy=seed_strategy, default_size=default_size
            )
            for row in dataset
        ]

        report = run_in_step(context, resource, ledger, key, jobs, options)
        order = {job.partition_key: i for i, job in enumerate(jobs)}
        successes = sorted(report.successes, key=lambda s: order[s.job.partition_key])
        records = [to_provenance(s.record) for s in successes]
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
