"""A small project for the `dagster dev` end-to-end test of deferred mode.

The image asset is built in deferred mode; the test submits through ``submit_deferred`` and the task-status sensor (RUNNING by default,
1 s interval) launches the collect runs. Configured by environment variables so that the same file
can later be swapped for the example project's ``definitions.py``.
"""

from __future__ import annotations

import os

import dagster as dg

from zimage_dagster.assets import build_image_definitions
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import ImageAssetSpec

spec = ImageAssetSpec(
    asset_name="cards",
    prompts=os.environ["ZIMAGE_TEST_PROMPTS"],
    storage=os.environ["ZIMAGE_TEST_STORAGE"],
    mode="deferred",
)

defs = dg.Definitions.merge(
    build_image_definitions(
        spec,
        task_status_options={
            "minimum_interval_seconds": 1,
            "tick_budget_s": 10.0,
            "default_status": dg.DefaultSensorStatus.RUNNING,
        },
    ),
    # The API key and base URL come from ZIMAGE_API_KEY / ZIMAGE_BASE_URL.
    dg.Definitions(resources={"zimage": ZImageResource(max_poll_interval=0.5)}),
)
