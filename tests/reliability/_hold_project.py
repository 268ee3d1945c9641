"""A one-op job in the ``zimage`` pool that holds its slot until told to stop (for the dead-run
test): it writes its process ID to ``$ZIMAGE_TEST_HOLD_DIR/<run_id>.pid`` and waits for the file
``release`` there."""

import os
import time

import dagster as dg


@dg.op(pool="zimage")
def hold(context: dg.OpExecutionContext) -> None:
    folder = os.environ["ZIMAGE_TEST_HOLD_DIR"]
    path = os.path.join(folder, f"{context.run_id}.pid")
    with open(path + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    while not os.path.exists(os.path.join(folder, "release")):
        time.sleep(0.1)


@dg.job(executor_def=dg.in_process_executor)
def hold_job() -> None:
    hold()


defs = dg.Definitions(jobs=[hold_job])
