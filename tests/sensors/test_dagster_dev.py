"""End to end: a real `dagster dev` (webserver + daemon) collects 200 deferred images in batched
collect runs: each partition materialized once, each task created once, and no more collect runs
than sensor ticks that found work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from benchmarks._common import stop_process_group
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.collect import COLLECT_TAG
from zimage_dagster.engine.jobs import ImageJob
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.prompts import load_prompts
from zimage_dagster.resource import ZImageResource
from zimage_dagster.step import submit_deferred

from ._support import wait_for

pytestmark = pytest.mark.heavy

PROJECT = Path(__file__).with_name("dev_project.py")
DAGSTER_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""
N_IMAGES = 200
SIZES = ("1:1", "4:3", "3:4", "16:9")
PROMPTS = "key,prompt,size,seed\n" + "".join(
    f"card-{i:03d},a paper lantern number {i},{SIZES[i % 4]},{i + 1}\n" for i in range(N_IMAGES)
)


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
        assert len(report.submitted) == N_IMAGES

        wait_for(
            lambda: _answers(f"http://127.0.0.1:{port}/server_info"),
            timeout=180,  # about 10 s on a quiet machine; minutes on a loaded one
            what="the webserver",
        )

        def all_collected() -> bool:
            entries = list(ledger.iter_entries("cards"))
            return len(entries) == N_IMAGES and all(
                e.status == LedgerStatus.COLLECTED for e in entries
            )

        wait_for(all_collected, timeout=150, what="the daemon's sensor to collect every image")
        elapsed = time.monotonic() - started

        with dg.DagsterInstance.from_config(str(home)) as instance:
            key = dg.AssetKey("cards")
            keys = {r.key for r in rows}
            wait_for(
                lambda: instance.get_materialized_partitions(key) == keys,
                timeout=30,
                what="materializations",
            )
            records = instance.fetch_materializations(key, limit=2 * N_IMAGES).records
            by_partition = {r.partition_key: r.asset_materialization for r in records}

            def collect_runs_done() -> list[dg.DagsterRun] | None:
                runs = [r for r in instance.get_runs() if COLLECT_TAG in r.tags]
                return runs if runs and all(r.is_finished for r in runs) else None

            # The collect run ends after its events: a materialization and the four partitioned
            # image checks per partition (1,000 events for 200), seconds on a quiet machine and
            # about a minute beside the rest of `make test`.
            collect_runs = wait_for(collect_runs_done, timeout=150, what="the collect runs to end")
            ticks = instance.get_ticks(
                _sensor_origin_id(instance, "cards_task_status"),
                _sensor_selector_id(instance, "cards_task_status"),
                limit=1000,
            )
        assert len(records) == N_IMAGES  # each partition materialized once
        submitted = {s.job.partition_key: s.task_id for s in report.submitted}
        for partition, task_id in submitted.items():
            metadata = by_partition[partition].metadata  # type: ignore[union-attr]
            assert metadata["task_id"].value == task_id
            assert metadata["prompt"].value == rows.get(partition).prompt  # type: ignore[union-attr]
        assert all(r.is_success for r in collect_runs)
        run_keys = [r.tags["dagster/run_key"] for r in collect_runs]
        assert len(run_keys) == len(set(run_keys))
        # Batched: a handful of runs, at most one per tick that found work.
        found_work = [t for t in ticks if t.run_keys]
        assert len(collect_runs) <= len(found_work), (len(collect_runs), len(found_work))
        assert len(collect_runs) <= N_IMAGES // 10, len(collect_runs)
        assert emulator.stats()["tasks_created"] == N_IMAGES  # no task created twice
        print(
            f"\ndagster dev: {N_IMAGES} deferred images collected in {len(collect_runs)} run(s) "
            f"({len(found_work)} tick(s) found work) {elapsed:.1f} s after start-up began"
        )
    finally:
        stop_process_group(process)  # dagster dev, its daemon, webserver and code server
        log.close()


def _sensor_origin_id(instance: dg.DagsterInstance, name: str) -> str:
    [state] = [s for s in instance.all_instigator_state() if s.instigator_name == name]
    return state.instigator_origin_id


def _sensor_selector_id(instance: dg.DagsterInstance, name: str) -> str:
    [state] = [s for s in instance.all_instigator_state() if s.instigator_name == name]
    return str(state.selector_id)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False
