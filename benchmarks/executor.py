"""Benchmark 12, the executor: Dagster's default multiprocess executor against the in-process one,
for a run of the factory's asset job (one step: the image asset over a range of partitions).

Each run is a ``dagster job execute`` command (a process, as a user or a run launcher starts it)
over ``N`` partitions of the asset in ``benchmarks/executor_defs.py``, whose two jobs differ only
by their executor; a fresh image store per run (nothing is reused), one sqlite ``DAGSTER_HOME``.
The emulator (its own process, load mode, 0.5 s tasks announced as 1 s) counts the tasks. For
``N`` = 50 and 300, the two executors alternate, two runs each, and the figures are the means:

- **to the first task**: the command's start to the emulator's first task creation, split at
  ``RUN_START`` (before it: the CLI's imports, loading the definitions, planning and the planned
  events, the same for both executors; after it: the executor, which for the multiprocess one
  starts a child process that imports and loads the definitions again before its step begins);
- **whole run**: the command's start to its exit.

    python -m benchmarks.run executor
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import dagster as dg

from benchmarks._common import ROOT, BenchResult, emulator
from zimage_dagster.emulator import EmulatorProcess

NAME = "executor"
TITLE = "12. Executor (multiprocess, Dagster's default, vs in-process) for the asset's job"
LATENCY_S = 0.5
ASSET = "executor_images"
#: Job name -> the executor it runs its step with (the jobs of ``benchmarks/executor_defs.py``).
EXECUTORS = {
    "with_multiprocess_executor": dg.multiprocess_executor,
    "with_in_process_executor": dg.in_process_executor,
}
MULTI, IN_PROCESS = EXECUTORS


def _run_once(emu: EmulatorProcess, n: int, job: str, home: str, out: str) -> dict[str, float]:
    emu.reset()
    env = {
        **os.environ,
        "DAGSTER_HOME": home,
        "ZIMAGE_BENCH_URL": emu.url,
        "ZIMAGE_BENCH_KEY": emu.api_key,
        "ZIMAGE_BENCH_OUT": out,
        "ZIMAGE_BENCH_N": str(n),
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    tags = {
        "dagster/asset_partition_range_start": "x0000",
        "dagster/asset_partition_range_end": f"x{n - 1:04d}",
    }
    command = [os.path.join(os.path.dirname(sys.executable), "dagster"), "job", "execute"]
    command += ["-m", "benchmarks.executor_defs", "-j", job, "--tags", json.dumps(tags)]
    start = time.time()
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{job} over {n} partitions failed:\n{proc.stderr[-3000:]}")
    tasks = emu.tasks()
    first_task = min(t["end_at"] - t["latency_s"] for t in tasks)
    instance = dg.DagsterInstance.from_config(home)
    try:
        (run,) = instance.get_runs(limit=1)
        run_start = min(
            r.timestamp
            for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
        )
        images = len(
            instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        )
    finally:
        instance.dispose()
    return {
        "to_run_start_s": run_start - start,
        "run_start_to_first_task_s": first_task - run_start,
        "to_first_task_s": first_task - start,
        "whole_run_s": end - start,
        "images": images,
        "tasks": len(tasks),
    }


def run(quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    sizes = (20, 100) if quick else (50, 300)
    rounds = 2
    res = BenchResult(NAME, TITLE)
    details: dict[str, Any] = {}
    with (
        emulator(latency_s=LATENCY_S, estimated_time=1, load_mode=True) as emu,
        tempfile.TemporaryDirectory(prefix="zimage-bench-executor-") as tmp,
    ):
        home = os.path.join(tmp, "dagster_home")
        os.makedirs(home)
        dg.DagsterInstance.from_config(home).dispose()  # create the databases once
        for n in sizes:
            load = os.getloadavg()[0]
            runs: dict[str, list[dict[str, float]]] = {MULTI: [], IN_PROCESS: []}
            for r in range(rounds):
                for job in (MULTI, IN_PROCESS):
                    out = os.path.join(tmp, f"store-{n}-{r}-{job}")
                    runs[job].append(_run_once(emu, n, job, home, out))
            mean = {
                job: {k: statistics.fmean(x[k] for x in items) for k in items[0]}
                for job, items in runs.items()
            }
            for job, items in runs.items():
                if any(x["images"] != n or x["tasks"] != n for x in items):
                    res.notes.append(f"{job}, {n} partitions: {items} (images or tasks != {n})")
            for figure, label in (
                ("to_first_task_s", "command start to first task created"),
                ("run_start_to_first_task_s", "RUN_START to first task created"),
                ("whole_run_s", "whole run (command start to exit)"),
            ):
                res.add(
                    f"{n} partitions: {label}, in-process executor",
                    mean[IN_PROCESS][figure],
                    "s",
                    mean[MULTI][figure],
                    "multiprocess executor (Dagster's default), alternating runs",
                )
            res.notes.append(
                f"{n} partitions (load average {load:.2f} at the start), means of {rounds} runs "
                "each, alternating: "
                + "; ".join(
                    f"{job}: to RUN_START {m['to_run_start_s']:.1f} s, RUN_START to first task "
                    f"{m['run_start_to_first_task_s']:.1f} s, whole run {m['whole_run_s']:.1f} s"
                    for job, m in mean.items()
                )
                + "."
            )
            details[str(n)] = {"runs": runs, "mean": mean, "load_average_at_start": load}
    res.notes.append(
        f"`dagster job execute` of the asset `{ASSET}` over every partition (one step), "
        f"emulator in load mode with {LATENCY_S} s tasks, resource concurrency 32."
    )
    res.details = details
    return res
