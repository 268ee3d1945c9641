"""One racer of the race tests: a process that waits for the starting gun, then materializes the
image asset over the partition ranges it is given, one run per range, on ``$DAGSTER_HOME``.

Usage: ``python -m tests.reliability._race_child '<json spec>'`` with ``rows``, ``storage``,
``storage_options``, ``key``, ``url``, ``ranges`` (``[[start, end], ...]``), ``go`` (a file whose
appearance starts the race), ``out`` (where the run IDs and outcomes are written as JSON) and
``resource`` (extra resource fields).
"""

from __future__ import annotations

import json
import os
import sys
import time

import dagster as dg

from tests.dagster._support import run_range
from tests.reliability._child_run import asset_and_resource


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    asset, resource = asset_and_resource(spec)
    runs = []
    with dg.DagsterInstance.get() as instance:
        while not os.path.exists(spec["go"]):
            time.sleep(0.01)
        for start, end in spec["ranges"]:
            result = run_range(asset, instance, resource, start, end)
            runs.append({"run_id": result.run_id, "success": result.success, "range": [start, end]})
    with open(spec["out"], "w") as fh:
        json.dump(runs, fh)
    return 0 if all(r["success"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
