"""The definitions the executor benchmark (``benchmarks/executor.py``) runs with ``dagster job
execute``: the factory's image asset over ``ZIMAGE_BENCH_N`` prompts, and one job over it per
executor, so that the executor is the only difference between two runs. Configured by
environment variables (the partitions must exist when the definitions load):

- ``ZIMAGE_BENCH_URL``, ``ZIMAGE_BENCH_KEY``: the emulator;
- ``ZIMAGE_BENCH_OUT``: the image store (a fresh one per run: nothing is reused);
- ``ZIMAGE_BENCH_N``: number of prompts / partitions.
"""

import os

import dagster as dg

from benchmarks._common import prompt_rows
from benchmarks.executor import ASSET, EXECUTORS
from zimage_dagster.assets import build_image_assets
from zimage_dagster.resource import ZImageResource

N = int(os.environ.get("ZIMAGE_BENCH_N", "50"))

defs = dg.Definitions.merge(
    build_image_assets(ASSET, prompt_rows(N, prefix="x"), storage=os.environ["ZIMAGE_BENCH_OUT"]),
    dg.Definitions(
        jobs=[
            dg.define_asset_job(name, selection=ASSET, executor_def=executor)
            for name, executor in EXECUTORS.items()
        ],
        resources={
            "zimage": ZImageResource(
                api_key=os.environ["ZIMAGE_BENCH_KEY"],
                base_url=os.environ["ZIMAGE_BENCH_URL"],
                concurrency=32,
            )
        },
    ),
)
