"""The code location of the distributed-shape tests: image assets over prompt files, each stored on
its own S3 bucket (moto), served by a code server to a ``dagster-daemon``.

Everything comes from the file named by ``$ZIMAGE_DIST_CONFIG`` (JSON): ``assets`` (a list of
``{"name", "prompts", "storage"}``; one asset per trial, so trials share nothing) and
``storage_options`` (the fsspec options of the S3 server). The resource reads the emulator's URL
and key from ``$ZIMAGE_BASE_URL`` and ``$ZIMAGE_API_KEY``, as a deployment would.
"""

import json
import os

import dagster as dg

from zimage_dagster.assets import build_image_definitions
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import ImageAssetSpec

with open(os.environ["ZIMAGE_DIST_CONFIG"]) as fh:
    _config = json.load(fh)

defs = dg.Definitions.merge(
    *(
        build_image_definitions(
            ImageAssetSpec(
                asset_name=asset["name"],
                prompts=asset["prompts"],
                storage=asset["storage"],
                storage_options=_config["storage_options"],
                # A failure must show as one: no whole-step retry hides a run that lost a race.
                retry_policy=None,
                credits_preflight=False,
            )
        )
        for asset in _config["assets"]
    ),
    dg.Definitions(resources={"zimage": ZImageResource(concurrency=8, max_poll_interval=0.3)}),
)
