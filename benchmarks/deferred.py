"""Benchmark 9, deferred mode at scale, under a real daemon, against blocking mode in the same run.

Setup: the emulator in its own process (2 s latency, at most 32 tasks in flight: a 33rd create is
answered 429 with a Retry-After), a project with two image assets over the same prompts (one
blocking, one deferred; the resource keeps 32 tasks in flight; at the cap the deferred submit's
creates wait in line for its own tasks to finish, see ``engine/capacity.py``), a
``DAGSTER_HOME`` whose run queue runs at most 4 runs at once, and ``dagster-daemon run`` serving
it for the whole benchmark.

Timed, one after the other:

1. blocking: ``dagster job execute`` of the blocking asset's job over the whole range (one run,
   single-run backfill): start to the run's end, every image stored;
2. deferred: ``dagster job execute`` of the deferred asset's job over the same range (the submit
   run creates every task and ends), then the daemon's task-status sensor (a tick every 2 s)
   launches collect runs over batches of finished tasks: start to the last image collected.

Counted afterwards from the instance and the emulator: collect runs launched, sensor ticks that
found work (they must be at least as many), tasks created beyond one per image (must be 0),
partitions materialized more than once (must be 0). The load average is reported: the machine is
shared, and only the ratio between the two modes, measured in the same invocation, means much.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg

from benchmarks._common import BenchResult, emulator, prompt_rows, stop_process_group
from zimage_dagster.engine.collect import COLLECT_TAG
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore

NAME = "deferred"
TITLE = "9. Deferred mode at scale (1,000 images, 2 s latency, cap 32, real daemon)"
TARGET_RATIO = 1.3
SENSOR_INTERVAL_S = 2

PROJECT = """\
import os
import signal

import dagster as dg

from zimage_dagster.assets import build_image_definitions
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import ImageAssetSpec

prompts, storage = os.environ["ZIMAGE_BENCH_PROMPTS"], os.environ["ZIMAGE_BENCH_STORAGE"]
defs = dg.Definitions.merge(
    build_image_definitions(
        ImageAssetSpec(asset_name="bench_blocking", prompts=prompts, storage=storage)
    ),
    build_image_definitions(
        ImageAssetSpec(
            asset_name="bench_deferred", prompts=prompts, storage=storage, mode="deferred"
        ),
        task_status_options={"minimum_interval_seconds": %(interval)d, "tick_budget_s": 20.0},
    ),
    # 32 in flight, like the provider's cap. At the cap a deferred create waits in line for one
    # of the submit's own tasks to finish (not a retry); the big retry budget is only a margin
    # for the head of the line, which asks again after each Retry-After.
    dg.Definitions(
        resources={
            "zimage": ZImageResource(
                concurrency=32, max_retries=1000, call_deadline=600.0, max_poll_interval=1.0
            )
        }
    ),
)
"""

DAGSTER_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""


def _execute(bin_dir: Path, project: Path, job: str, keys: list[str], env: dict[str, str]) -> None:
    """``dagster job execute`` of ``job`` over the range ``keys[0]..keys[-1]`` (one run)."""
    tags = {
        "dagster/asset_partition_range_start": keys[0],
        "dagster/asset_partition_range_end": keys[-1],
    }
    command = [str(bin_dir / "dagster"), "job", "execute", "-f", str(project), "-j", job]
    done = subprocess.run(
        [*command, "--tags", json.dumps(tags)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        failures = [line for line in done.stdout.splitlines() if "STEP_FAILURE" in line]
        raise RuntimeError(f"{job} failed: {failures[-1:]}\n{done.stderr[-6000:]}")


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    n = 100 if quick else 1000
    res = BenchResult(NAME, TITLE)
    load_start = os.getloadavg()
    rows = prompt_rows(n, prefix="d", size="376x376")
    keys = [str(r["key"]) for r in rows]
    bin_dir = Path(sys.executable).parent
    with (
        tempfile.TemporaryDirectory(
            prefix="zimage-bench-deferred-", ignore_cleanup_errors=True
        ) as tmp,
        emulator(latency_s=2.0, concurrency_cap=32, estimated_time=2) as emu,
    ):
        home = Path(tmp, "dagster_home")
        home.mkdir()
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
        prompts = Path(tmp, "prompts.csv")
        with prompts.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["key", "prompt", "size"])
            writer.writeheader()
            writer.writerows(rows)
        storage = Path(tmp, "images")
        project = Path(tmp, "project.py")
        project.write_text(PROJECT % {"interval": SENSOR_INTERVAL_S})
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "ZIMAGE_API_KEY": emu.api_key,
            "ZIMAGE_BASE_URL": emu.url,
            "ZIMAGE_BENCH_PROMPTS": str(prompts),
            "ZIMAGE_BENCH_STORAGE": str(storage),
            "DAGSTER_DISABLE_TELEMETRY": "1",
        }
        with dg.DagsterInstance.from_config(str(home)):
            pass  # its storage is created here, not by the daemon and a run at the same time
        daemon_log = open(Path(tmp, "daemon.log"), "w")  # noqa: SIM115 (closed below)
        daemon = subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", "-f", str(project)],
            env=env,
            cwd=tmp,
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ledger = TaskLedger(ImageStore(str(storage)))
        try:
            started = time.perf_counter()
            _execute(bin_dir, project, "bench_blocking_job", keys, env)
            blocking_s = time.perf_counter() - started
            stored = [
                e
                for e in ledger.iter_entries("bench_blocking")
                if e.status == LedgerStatus.COLLECTED
            ]
            assert len(stored) == n, f"blocking run stored {len(stored)} of {n}"

            started = time.perf_counter()
            _execute(bin_dir, project, "bench_deferred_job", keys, env)
            submit_s = time.perf_counter() - started

            def collected() -> bool:
                entries = list(ledger.iter_entries("bench_deferred"))
                done = sum(e.status == LedgerStatus.COLLECTED for e in entries)
                return len(entries) == n and done == n

            _wait(collected, 900, "the deferred images to be collected")
            deferred_s = time.perf_counter() - started
            load_end = os.getloadavg()
            with dg.DagsterInstance.from_config(str(home)) as instance:

                def runs_done() -> list[dg.DagsterRun] | None:
                    runs = [r for r in instance.get_runs() if COLLECT_TAG in r.tags]
                    return runs if all(r.is_finished for r in runs) else None

                _wait(runs_done, 300, "the collect runs to end")
                collect_runs = runs_done() or []
                [state] = [
                    s
                    for s in instance.all_instigator_state()
                    if s.instigator_name == "bench_deferred_task_status"
                ]
                ticks = instance.get_ticks(
                    state.instigator_origin_id, str(state.selector_id), limit=100_000
                )
                records = instance.fetch_materializations(
                    dg.AssetKey("bench_deferred"), limit=4 * n
                ).records
        finally:
            stop_process_group(daemon)
            daemon_log.close()
        tasks_created = int(emu.stats()["tasks_created"])
    with_work = sum(1 for t in ticks if t.run_keys)
    per_partition = Counter(r.partition_key for r in records)
    twice = sum(1 for count in per_partition.values() if count > 1)
    extra_tasks = tasks_created - 2 * n
    failed_runs = sum(1 for r in collect_runs if not r.is_success)
    res.add(
        f"Deferred, submit to last image collected ({n} images)",
        deferred_s,
        "s",
        blocking_s,
        f"blocking run of the same {n} prompts",
        f"ratio <= {TARGET_RATIO:g}",
        deferred_s <= TARGET_RATIO * blocking_s,
    )
    res.add(
        f"Collect runs launched ({len(ticks)} ticks, {with_work} found work)",
        float(len(collect_runs)),
        "runs",
        float(with_work),
        "sensor ticks that found work",
        "runs <= ticks with work",
        len(collect_runs) <= with_work,
        target_on="value",
    )
    res.add(
        "Tasks created twice, partitions materialized twice",
        float(extra_tasks + twice),
        "",
        None,
        f"{extra_tasks} extra task(s), {twice} partition(s) twice",
        "0",
        extra_tasks == 0 and twice == 0 and len(per_partition) == n,
        target_on="value",
    )
    res.notes.append(
        f"Blocking: {blocking_s:.1f} s for {n} images in one run. Deferred: the submit run took "
        f"{submit_s:.1f} s (at the cap, creates wait in line for its own tasks to finish), the last image was collected "
        f"{deferred_s:.1f} s after it started, by {len(collect_runs)} collect run(s) "
        f"({failed_runs} not successful). Load average at start {load_start[0]:.1f}, at the end "
        f"{load_end[0]:.1f} (2 cores)."
    )
    res.details = {
        "n": n,
        "blocking_s": blocking_s,
        "deferred_submit_s": submit_s,
        "deferred_s": deferred_s,
        "collect_runs": len(collect_runs),
        "collect_runs_not_successful": failed_runs,
        "ticks": len(ticks),
        "ticks_with_work": with_work,
        "tasks_created": tasks_created,
        "extra_tasks": extra_tasks,
        "partitions_materialized_twice": twice,
        "load_average_start": load_start,
        "load_average_end": load_end,
    }
    return res
