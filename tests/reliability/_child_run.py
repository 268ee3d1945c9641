"""Run the image asset over a partition range in this process, on ``DagsterInstance.get()``
(``$DAGSTER_HOME``): the process the crash tests SIGKILL.

Usage: ``python -m tests.reliability._child_run '<json spec>'`` with ``rows``, ``storage``,
``storage_options``, ``key``, ``url``, ``start``, ``end`` and ``resource`` (extra resource fields).
"""

from __future__ import annotations

import json
import sys

import dagster as dg

from zimage_dagster.assets import build_image_assets
from zimage_dagster.resource import ZImageResource


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    defs = build_image_assets(
        spec.get("asset", "imgs"),
        spec["rows"],
        storage=spec["storage"],
        storage_options=spec.get("storage_options") or None,
        retry_policy=None,
    )
    (asset,) = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    resource = ZImageResource(api_key=spec["key"], base_url=spec["url"], **spec.get("resource", {}))
    result = dg.materialize(
        [asset],
        instance=dg.DagsterInstance.get(),
        resources={"zimage": resource},
        tags={
            "dagster/asset_partition_range_start": spec["start"],
            "dagster/asset_partition_range_end": spec["end"],
        },
        raise_on_error=False,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
