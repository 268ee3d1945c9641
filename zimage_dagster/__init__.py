"""zimage-dagster: Z-Image-Turbo text-to-image generation as first-class Dagster assets.

>>> import dagster as dg
>>> from zimage_dagster import ZImageResource, build_image_assets
>>> images = build_image_assets("hero_images", [{"prompt": "a lighthouse at dusk"}])
>>> defs = dg.Definitions.merge(images, dg.Definitions(resources={"zimage": ZImageResource()}))

The typed client lives in :mod:`zimage_dagster.api` (no Dagster import) and the local emulator of
the API in :mod:`zimage_dagster.emulator`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zimage_dagster._version import __version__

if TYPE_CHECKING:
    from zimage_dagster.assets import DEFAULT_RETRY_POLICY, ImageAssetSpec, build_image_assets
    from zimage_dagster.batch import (
        BatchGenerator,
        BatchReport,
        ImageFailure,
        ImageJob,
        ImageSuccess,
    )
    from zimage_dagster.component import ZImageComponent
    from zimage_dagster.deferred import submit_deferred
    from zimage_dagster.ledger import LedgerEntry, LedgerStatus, TaskLedger
    from zimage_dagster.metadata import ImageRecord, image_metadata, make_thumbnail
    from zimage_dagster.ops import build_generate_images_op, load_prompts_op
    from zimage_dagster.prompts import (
        PromptDataset,
        PromptDatasetError,
        PromptRow,
        RowProblem,
        derive_key,
        derive_seed,
        load_prompts,
    )
    from zimage_dagster.receiver import CallbackReceiver
    from zimage_dagster.resource import ZImageResource
    from zimage_dagster.sensors import (
        build_prompt_dataset_sensor,
        build_task_status_sensor,
        deferred_definitions,
    )
    from zimage_dagster.storage import ImageStore, ImageStoreIOManager, StoredImage

# The Dagster layer is imported on first use, so that `zimage_dagster.api` and the emulator
# (which know nothing of Dagster) start fast.
_EXPORTS: dict[str, str] = {
    "DEFAULT_RETRY_POLICY": "assets",
    "ImageAssetSpec": "assets",
    "build_image_assets": "assets",
    "BatchGenerator": "batch",
    "BatchReport": "batch",
    "ImageFailure": "batch",
    "ImageJob": "batch",
    "ImageSuccess": "batch",
    "ZImageComponent": "component",
    "submit_deferred": "deferred",
    "build_task_status_sensor": "sensors",
    "build_prompt_dataset_sensor": "sensors",
    "deferred_definitions": "sensors",
    "CallbackReceiver": "receiver",
    "build_generate_images_op": "ops",
    "load_prompts_op": "ops",
    "LedgerEntry": "ledger",
    "LedgerStatus": "ledger",
    "TaskLedger": "ledger",
    "ImageRecord": "metadata",
    "image_metadata": "metadata",
    "make_thumbnail": "metadata",
    "PromptDataset": "prompts",
    "PromptDatasetError": "prompts",
    "PromptRow": "prompts",
    "RowProblem": "prompts",
    "derive_key": "prompts",
    "derive_seed": "prompts",
    "load_prompts": "prompts",
    "ZImageResource": "resource",
    "ImageStore": "storage",
    "ImageStoreIOManager": "storage",
    "StoredImage": "storage",
}

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "BatchGenerator",
    "BatchReport",
    "CallbackReceiver",
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
    "ZImageComponent",
    "ZImageResource",
    "__version__",
    "build_generate_images_op",
    "build_image_assets",
    "build_prompt_dataset_sensor",
    "build_task_status_sensor",
    "deferred_definitions",
    "derive_key",
    "derive_seed",
    "image_metadata",
    "load_prompts",
    "load_prompts_op",
    "make_thumbnail",
    "submit_deferred",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zimage_dagster' has no attribute {name!r}")
    _register_library()
    value = getattr(importlib.import_module(f"zimage_dagster.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _register_library() -> None:
    """Tell Dagster (`dagster._core.libraries`) which version of this integration is in use."""
    from dagster_shared.libraries import DagsterLibraryRegistry

    DagsterLibraryRegistry.register("zimage-dagster", __version__, is_dagster_package=False)
