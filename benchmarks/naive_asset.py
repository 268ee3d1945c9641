"""The baseline of the throughput benchmark: an image asset written by hand, the naive way.

One partition per prompt, and one Dagster run per partition (``dagster asset materialize
--partition ...``, a process per run, as Dagster's default run launcher does). Each run creates its
task synchronously with httpx, polls it every second, downloads the image and writes it to a file.
No plugin code is used. Configured by environment variables (the partitions must exist when the
definitions load):

- ``ZIMAGE_BENCH_URL``, ``ZIMAGE_BENCH_KEY``: the emulator;
- ``ZIMAGE_BENCH_OUT``: the output folder;
- ``ZIMAGE_BENCH_N``: number of prompts / partitions (default 20).
"""

import os
import time

import dagster as dg
import httpx

N = int(os.environ.get("ZIMAGE_BENCH_N", "20"))
KEYS = [f"n{i:04d}" for i in range(N)]


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(KEYS))
def naive_image(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    key = context.partition_key
    headers = {"Authorization": f"Bearer {os.environ['ZIMAGE_BENCH_KEY']}"}
    with httpx.Client(
        base_url=os.environ["ZIMAGE_BENCH_URL"], headers=headers, timeout=30.0
    ) as client:
        created = client.post(
            "/v1/images/generations",
            json={
                "model": "z-image-turbo",
                "prompt": f"benchmark {key}: a lighthouse on a cliff at dawn, oil painting",
                "seed": KEYS.index(key) + 1,
            },
        )
        created.raise_for_status()
        task = created.json()
        polls = 0
        while task["status"] not in ("completed", "failed"):
            time.sleep(1.0)
            answer = client.get(f"/v1/tasks/{task['id']}")
            answer.raise_for_status()
            task = answer.json()
            polls += 1
    if task["status"] == "failed":
        raise dg.Failure(f"task {task['id']} failed: {task.get('error')}")
    image = httpx.get(task["results"][0], timeout=30.0)
    image.raise_for_status()
    os.makedirs(os.environ["ZIMAGE_BENCH_OUT"], exist_ok=True)
    path = os.path.join(os.environ["ZIMAGE_BENCH_OUT"], f"{key}.png")
    with open(path, "wb") as fh:
        fh.write(image.content)
    return dg.MaterializeResult(
        metadata={"task_id": task["id"], "polls": polls, "bytes": len(image.content)}
    )


defs = dg.Definitions(assets=[naive_image])
