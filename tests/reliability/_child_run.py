"""Run the image asset over a partition range in this process, on ``DagsterInstance.get()``
(``$DAGSTER_HOME``): the process the crash tests SIGKILL.

Usage: ``python -m tests.reliability._child_run '<json spec>'`` with ``rows``, ``storage``,
``storage_options``, ``key``, ``url``, ``start``, ``end``, ``resource`` (extra resource fields) and ``options`` (extra options of
the asset, e.g. ``partitioning``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import dagster as dg

from tests.dagster._support import image_asset, run_range
from zimage_dagster.assets import build_image_assets
from zimage_dagster.resource import ZImageResource


def asset_and_resource(spec: dict[str, Any]) -> tuple[dg.AssetsDefinition, ZImageResource]:
    """The image asset and the resource a child run's ``spec`` describes."""
    defs = build_image_assets(
        spec.get("asset", "imgs"),
        spec["rows"],
        storage=spec["storage"],
        storage_options=spec.get("storage_options") or None,
        retry_policy=None,
        **spec.get("options", {}),
    )
    resource = ZImageResource(api_key=spec["key"], base_url=spec["url"], **spec.get("resource", {}))
    return image_asset(defs), resource


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    asset, resource = asset_and_resource(spec)
    result = run_range(asset, dg.DagsterInstance.get(), resource, spec["start"], spec["end"])
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
