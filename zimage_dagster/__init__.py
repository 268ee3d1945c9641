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
from typing import Any

from zimage_dagster._version import __version__

# The one table of the public surface: name -> module. ``__all__`` is made from it. The Dagster
# layer is imported on first use, so that `zimage_dagster.api` and the emulator (which know
# nothing of Dagster) start fast.
_EXPORTS: dict[str, str] = {
    "DEFAULT_RETRY_POLICY": "spec",
    "ImageAssetSpec": "spec",
    "build_image_assets": "assets",
    "ZImageComponent": "component",
    "build_generate_images_op": "ops",
    "load_prompts_op": "ops",
    "CallbackReceiver": "receiver",
    "ZImageResource": "resource",
    "MeteredClient": "resource",
    "balance_definitions": "balance",
    "build_prompt_dataset_sensor": "sensors",
    "build_task_status_sensor": "sensors",
    "automation_definitions": "sensors",
    "image_metadata": "metadata",
    "usage_metadata": "metadata",
    "ImageStoreIOManager": "io_manager",
    "submit_deferred": "step",
    "PromptDataset": "prompts",
    "PromptDatasetError": "prompts",
    "PromptRow": "prompts",
    "RowProblem": "prompts",
    "derive_key": "prompts",
    "load_prompts": "prompts",
    "BatchGenerator": "engine.batch",
    "ImageJob": "engine.jobs",
    "LedgerEntry": "engine.ledger",
    "LedgerStatus": "engine.ledger",
    "TaskLedger": "engine.ledger",
    "CreditBudget": "engine.credits",
    "Usage": "engine.credits",
    "CreateGate": "engine.create",
    "BatchReport": "engine.outcome",
    "BudgetError": "engine.outcome",
    "ImageFailure": "engine.outcome",
    "ImageSuccess": "engine.outcome",
    "ImageRecord": "engine.provenance",
    "derive_seed": "dataset.request",
    "ImageStore": "engine.store",
    "StoredImage": "engine.store",
    "submit_jobs": "engine.submit",
    "make_thumbnail": "engine.thumbnails",
    "TaskWatcher": "engine.collect",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


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
