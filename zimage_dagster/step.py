"""Running the batch engine inside a Dagster step (an asset or an op): one way, used by both.

:func:`generate_in_step` builds the :class:`~zimage_dagster.batch.BatchGenerator` from the
resource's settings, runs it on a fresh event loop, and records an ``AssetMaterialization`` (with
the image's metadata and thumbnail) the moment each image is stored.

Example::

    @dg.op(required_resource_keys={"zimage"})
    def make(context: dg.OpExecutionContext) -> None:
        report = generate_in_step(
            context, context.resources.zimage, store, TaskLedger(store), dg.AssetKey("images"), jobs
        )
        context.log.info(report.summary())
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import dagster as dg

from zimage_dagster.batch import BatchGenerator, BatchReport, ImageJob, ImageSuccess
from zimage_dagster.ledger import TaskLedger
from zimage_dagster.metadata import image_metadata
from zimage_dagster.resource import ZImageResource
from zimage_dagster.storage import ImageStore

__all__ = ["generate_in_step"]


def generate_in_step(
    context: dg.AssetExecutionContext | dg.OpExecutionContext,
    resource: ZImageResource,
    store: ImageStore,
    ledger: TaskLedger,
    asset_key: dg.AssetKey,
    jobs: Sequence[ImageJob],
    *,
    reuse_stored: bool = True,
    retry_rejected: bool = False,
) -> BatchReport:
    """Generate ``jobs`` with the resource's client and settings; materialize each stored image
    of ``asset_key`` (partition = the job's partition key) as it is stored."""

    def on_success(success: ImageSuccess) -> None:
        context.log_event(
            dg.AssetMaterialization(
                asset_key=asset_key,
                partition=success.job.partition_key,
                metadata=image_metadata(success.record, success.thumbnail),
            )
        )

    async def run() -> BatchReport:
        async with resource.async_client() as client:
            engine = BatchGenerator(
                client,
                store,
                ledger,
                asset_key.path,
                concurrency=resource.concurrency,
                max_resubmits=resource.max_resubmits,
                reuse_stored=reuse_stored,
                retry_rejected=retry_rejected,
                wait_deadline=resource.wait_deadline,
                on_success=on_success,
                run_id=context.run.run_id,
                logger=context.log,
            )
            return await engine.run(jobs)

    context.log.info(
        f"generating {len(jobs)} image(s) of {asset_key.to_user_string()} with up to "
        f"{resource.concurrency} task(s) in flight"
    )
    return asyncio.run(run())
