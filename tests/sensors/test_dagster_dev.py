"""End to end: a real `dagster dev` (webserver + daemon) collects a deferred batch."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx

from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.engine.watcher import COLLECT_TAG
from zimage_dagster.prompts import load_prompts
from zimage_dagster.resource import ZImageResource
from zimage_dagster.step import submit_deferred

from ._support import wait_for

PROJECT = Path(__file__).with_name("dev_project.py")
DAGSTER_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""
PROMPTS = """\
key,prompt,size,seed
fox,a red fox in the snow,1:1,11
owl,an owl on a branch at night,4:3,22
elk,an elk by a frozen lake,3:4,33
yak,a yak on a mountain pass,16:9,44
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dagster_dev_collects_a_deferred_batch(tmp_path: Path, emulator: EmulatorServer) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(PROMPTS)
    storage = tmp_path / "images"
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ZIMAGE_API_KEY": emulator.api_key,
        "ZIMAGE_BASE_URL": emulator.url,
        "ZIMAGE_TEST_PROMPTS": str(prompts),
        "ZIMAGE_TEST_STORAGE": str(storage),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    dagster = Path(sys.executable).with_name("dagster")
    log = open(tmp_path / "dagster-dev.log", "w")  # noqa: SIM115 (closed in finally)
    started = time.monotonic()
    process = subprocess.Popen(
        [str(dagster), "dev", "-f", str(PROJECT), "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the webserver, daemon and code server
    )
    try:
        # Deferred submit: the tasks are created and recorded; nothing waits for them.
        store = ImageStore(storage)
        ledger = TaskLedger(store)
        rows = load_prompts(prompts)
        jobs = [ImageJob(partition_key=r.key, row=r, seed=r.seed or 0) for r in rows]
        resource = ZImageResource(api_key=emulator.api_key, base_url=emulator.url)
        report = submit_deferred(resource, ledger, ("cards",), jobs)
        assert len(report.submitted) == 4

        wait_for(
            lambda: _answers(f"http://127.0.0.1:{port}/server_info"),
            timeout=60,
            what="the webserver",
        )

        def all_collected() -> bool:
            entries = list(ledger.iter_entries("cards"))
            return len(entries) == 4 and all(e.status == LedgerStatus.COLLECTED for e in entries)

        wait_for(all_collected, timeout=90, what="the daemon's sensor to collect every image")
        elapsed = time.monotonic() - started

        with dg.DagsterInstance.from_config(str(home)) as instance:
            key = dg.AssetKey("cards")
            wait_for(
                lambda: instance.get_materialized_partitions(key) == {"fox", "owl", "elk", "yak"},
                timeout=30,
                what="materializations",
            )
            records = instance.fetch_materializations(key, limit=20).records
            by_partition = {r.partition_key: r.asset_materialization for r in records}

            def collect_runs_done() -> list[dg.DagsterRun] | None:
                runs = [r for r in instance.get_runs() if COLLECT_TAG in r.tags]
                return runs if len(runs) == 4 and all(r.is_finished for r in runs) else None

            collect_runs = wait_for(collect_runs_done, timeout=30, what="the collect runs to end")
        submitted = {s.job.partition_key: s.task_id for s in report.submitted}
        for partition, task_id in submitted.items():
            metadata = by_partition[partition].metadata  # type: ignore[union-attr]
            assert metadata["task_id"].value == task_id
            assert metadata["seed"].value in (11, 22, 33, 44)
            assert metadata["prompt"].value == rows.get(partition).prompt  # type: ignore[union-attr]
        assert sorted(r.tags[COLLECT_TAG] for r in collect_runs) == sorted(submitted.values())
        assert sorted(r.tags["dagster/run_key"] for r in collect_runs) == sorted(submitted.values())
        assert all(r.is_success for r in collect_runs)
        assert emulator.stats()["tasks_created"] == 4  # no task created twice
        print(f"\ndagster dev: 4 deferred images collected {elapsed:.1f} s after start-up began")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False
