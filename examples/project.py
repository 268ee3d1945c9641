"""The example project's definitions, built from the library's public pieces.

* ``catalogue_images``: one static partition per row of ``examples/prompts.csv`` (a single-run
  backfill submits them all concurrently); its job ``catalogue_images_job``.
* ``contact_sheet``: every stored catalogue image on one PNG, in its own run: ``contact_sheet_job``,
  or the ``contact_sheet_automation`` sensor (running by default under ``make dev``), which
  redraws it after new catalogue images are materialized.
* ``daily_hero``: date x prompt over ``examples/daily_prompts.csv``, with a schedule (stopped by
  default) generating each day's images at 06:00 UTC: ``daily_hero_schedule``.
* ``dynamic_images``: dynamic partitions fed by ``examples/dynamic_prompts.csv``: its
  ``dynamic_images_prompt_dataset`` sensor (stopped by default: turning it on starts generation)
  adds a partition, and requests its run, for each row added to the file.
* ``deferred_images``: deferred mode over ``examples/deferred_prompts.csv``: a materialization only
  submits the tasks; the ``deferred_images_task_status`` sensor (running) launches a short collect
  run per finished task.
* ``zimage_ops_job``: the same thing with ops (load -> generate -> contact sheet), recording the
  ``ops_images`` asset.

Environment:

* ``ZIMAGE_API_KEY``: the EvoLink API key (read at run time through ``dagster.EnvVar``).
* ``ZIMAGE_BASE_URL``: the API base URL (default: the real API); ``make demo``/``make dev`` point it
  at the local emulator when no key is set.
* ``ZIMAGE_STORAGE_URL``: where images go (a folder or fsspec URL; default ``<repo>/zimage_output``).
* ``ZIMAGE_GALLERY_URL``: where the image gallery answers (default ``http://127.0.0.1:3001``, where
  ``make dev`` starts it); each materialization links to its image there.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from zimage_dagster import ImageStoreIOManager, ZImageResource, build_image_assets, load_prompts
from zimage_dagster.contact_sheet import (
    build_contact_sheet_asset,
    build_contact_sheet_op,
    redraw_after_new_images,
)
from zimage_dagster.ops import build_generate_images_op, load_prompts_op

__all__ = [
    "CATALOGUE",
    "CATALOGUE_PROMPTS",
    "DAILY_PROMPTS",
    "DEFAULT_BASE_URL",
    "DEFERRED_PROMPTS",
    "DYNAMIC_PROMPTS",
    "REPO_ROOT",
    "base_url",
    "build_defs",
    "gallery_url",
    "storage_root",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
CATALOGUE_PROMPTS = REPO_ROOT / "examples" / "prompts.csv"
DAILY_PROMPTS = REPO_ROOT / "examples" / "daily_prompts.csv"
DYNAMIC_PROMPTS = REPO_ROOT / "examples" / "dynamic_prompts.csv"
DEFERRED_PROMPTS = REPO_ROOT / "examples" / "deferred_prompts.csv"
DEFAULT_BASE_URL = "https://api.evolink.ai"
DEFAULT_GALLERY_URL = "http://127.0.0.1:3001"

CATALOGUE = "catalogue_images"
CONTACT_SHEET = "contact_sheet"
DAILY = "daily_hero"
DYNAMIC = "dynamic_images"
DEFERRED = "deferred_images"
OPS_IMAGES = "ops_images"


def storage_root() -> str:
    """``ZIMAGE_STORAGE_URL``, else ``<repo>/zimage_output``."""
    return os.environ.get("ZIMAGE_STORAGE_URL") or str(REPO_ROOT / "zimage_output")


def gallery_url() -> str:
    """``ZIMAGE_GALLERY_URL``, else where ``make dev`` starts the gallery."""
    return os.environ.get("ZIMAGE_GALLERY_URL") or DEFAULT_GALLERY_URL


def base_url() -> str:
    """``ZIMAGE_BASE_URL``, else the real API."""
    return os.environ.get("ZIMAGE_BASE_URL") or DEFAULT_BASE_URL


def build_defs(storage: str | None = None) -> dg.Definitions:
    """The whole example project (see the module docstring)."""
    root = storage or storage_root()
    catalogue = build_image_assets(
        CATALOGUE,
        CATALOGUE_PROMPTS,
        storage=root,
        group_name="catalogue",
        description="Catalogue images, one partition per row of examples/prompts.csv.",
        gallery_url=gallery_url(),
    )
    contact_sheet = build_contact_sheet_asset(
        CONTACT_SHEET,
        images=CATALOGUE,
        storage=root,
        group_name="catalogue",
        automation_condition=redraw_after_new_images(),
    )
    daily = build_image_assets(
        DAILY,
        DAILY_PROMPTS,
        storage=root,
        partitioning="daily",
        daily_start_date="2026-11-01",
        group_name="daily",
        schedule={"cron": "0 6 * * *"},
        description="A fresh hero image per prompt of examples/daily_prompts.csv, every day.",
        gallery_url=gallery_url(),
    )
    dynamic = build_image_assets(
        DYNAMIC,
        DYNAMIC_PROMPTS,
        storage=root,
        partitioning="dynamic",
        group_name="dynamic",
        description="One partition per row of examples/dynamic_prompts.csv, added by its sensor.",
        gallery_url=gallery_url(),
    )
    deferred = build_image_assets(
        DEFERRED,
        DEFERRED_PROMPTS,
        storage=root,
        mode="deferred",
        group_name="deferred",
        description="Submitted by the step, collected by the task-status sensor.",
        gallery_url=gallery_url(),
    )
    return dg.Definitions.merge(
        catalogue,
        daily,
        dynamic,
        deferred,
        dg.Definitions(
            assets=[contact_sheet, _ops_images_spec()],
            jobs=[
                dg.define_asset_job(
                    f"{CONTACT_SHEET}_job",
                    selection=[CONTACT_SHEET],
                    description="Redraws the contact sheet from the stored catalogue images.",
                ),
                build_ops_job(root),
            ],
            sensors=[
                dg.AutomationConditionSensorDefinition(
                    "contact_sheet_automation",
                    target=[CONTACT_SHEET],
                    default_status=dg.DefaultSensorStatus.RUNNING,
                    minimum_interval_seconds=30,
                    description="Redraws the contact sheet (its own run) after new images.",
                )
            ],
            resources={
                "zimage": ZImageResource(api_key=dg.EnvVar("ZIMAGE_API_KEY"), base_url=base_url()),
                "zimage_images": ImageStoreIOManager(root=root),
            },
        ),
    )


def _ops_images_spec() -> dg.AssetSpec:
    keys = load_prompts(CATALOGUE_PROMPTS).keys
    return dg.AssetSpec(
        OPS_IMAGES,
        group_name="ops",
        kinds={"zimage", "image"},
        partitions_def=dg.StaticPartitionsDefinition(keys),
        description="Images recorded by zimage_ops_job (op-based pipeline; not materializable here).",
    )


def build_ops_job(storage: str) -> dg.JobDefinition:
    """``zimage_ops_job``: load prompts -> generate images -> contact sheet, with ops."""
    generate_images = build_generate_images_op(
        "generate_images", asset_key=OPS_IMAGES, storage=storage, gallery_url=gallery_url()
    )
    contact_sheet = build_contact_sheet_op(
        "ops_contact_sheet", storage=storage, sheet_name="ops_contact_sheet"
    )

    @dg.job(
        name="zimage_ops_job",
        description="Op-based pipeline: the first 4 catalogue prompts (change `limit`/`keys`).",
        config={
            "ops": {
                "load_prompts": {"config": {"path": str(CATALOGUE_PROMPTS), "limit": 4}},
            }
        },
        tags={"zimage/example": "ops"},
    )
    def zimage_ops_job() -> None:
        contact_sheet(generate_images(load_prompts_op()))

    return zimage_ops_job
