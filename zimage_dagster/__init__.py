"""zimage-dagster: Z-Image-Turbo text-to-image generation as first-class Dagster assets.

>>> import dagster as dg
>>> from zimage_dagster import ZImageResource, build_image_assets
>>> images = build_image_assets("hero_images", [{"prompt": "a lighthouse at dusk"}])
>>> defs = dg.Definitions.merge(images, dg.Definitions(resources={"zimage": ZImageResource()}))

The typed client lives in :mod:`zimage_dagster.api` (no Dagster import) and the local emulator of
the API in :mod:`zimage_dagster.emulator`.
"""

from dagster_shared.libraries import DagsterLibraryRegistry

from zimage_dagster._version import __version__
from zimage_dagster.assets import DEFAULT_RETRY_POLICY, ImageAssetSpec, build_image_assets
from zimage_dagster.batch import BatchGenerator, BatchReport, ImageFailure, ImageJob, ImageSuccess
from zimage_dagster.ledger import LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.metadata import ImageRecord, image_metadata, make_thumbnail
from zimage_dagster.prompts import (
    PromptDataset,
    PromptDatasetError,
    PromptRow,
    RowProblem,
    derive_key,
    derive_seed,
    load_prompts,
)
from zimage_dagster.resource import ZImageResource
from zimage_dagster.storage import ImageStore, ImageStoreIOManager, StoredImage

DagsterLibraryRegistry.register("zimage-dagster", __version__, is_dagster_package=False)

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "BatchGenerator",
    "BatchReport",
    "ImageAssetSpec",
    "ImageFailure",
    "ImageJob",
    "ImageRecord",
    "ImageStore",
    "ImageStoreIOManager",
    "ImageSuccess",
    "LedgerEntry",
    "LedgerStatus",
    "PromptDataset",
    "PromptDatasetError",
    "PromptRow",
    "RowProblem",
    "StoredImage",
    "TaskLedger",
    "ZImageResource",
    "__version__",
    "build_image_assets",
    "derive_key",
    "derive_seed",
    "image_metadata",
    "load_prompts",
    "make_thumbnail",
]
