"""The distributed shape: runs go through Dagster's queue and daemon, images and claims live on an
S3-compatible server (moto), runs and events in PostgreSQL.

A deployment (module fixture): a ``DAGSTER_HOME`` with PostgreSQL storage, a
``QueuedRunCoordinator`` running at most 4 runs at once and run monitoring on (as in
``examples/dagster.yaml``); a code server (``dagster api grpc``) serving
``_dist_project.py`` (image assets over a prompt file, each stored on its own bucket); and
``dagster-daemon run`` on a workspace pointing at that code server. Runs are submitted like
``dagster job launch`` does (the CLI's own function, against the code server), so each one goes
through the queue, the daemon and the default run launcher into a run worker process.

* Races: 4 runs submitted at once over the same 20 partitions (the whole range twice, two
  overlapping halves). Every run succeeds and materializes exactly its range, one task per
  partition, every partition stored once. ``make test``: one trial; ``make soak``: 10 (one
  daemon, a new asset and bucket per trial).
* Kill of the claim holder: run A over 20 partitions is SIGKILLed mid-batch (its run worker and
  the step process that holds the claims); Dagster marks it failed; run B over the same range
  takes A's claims over at once (A is dead per Dagster, long before the lease), re-attaches to the
  tasks A recorded and creates the rest.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._cli.job import execute_launch_command
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.server import wait_for_grpc_server
from dagster_shared.cli import WorkspaceOpts

from benchmarks._common import stop_process_group
from tests.reliability._support import dataset, report, run_messages
from tests.reliability.conftest import S3, Postgres, _free_port
from tests.reliability.test_races import shapes
from zimage_dagster.emulator.server import EmulatorProcess
from zimage_dagster.engine.claims import DEFAULT_LEASE_S
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
N = 20
SOAK_TRIALS = 10
KILL_ASSET = "dist_kill"

#: The deployment's instance settings on top of the PostgreSQL storage: the run queue (at most 4
#: runs at once: Dagster 1.13 takes the limit under ``concurrency: runs:``), and the run
#: monitoring and pool limit of ``examples/dagster.yaml``.
INSTANCE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
run_monitoring:
  enabled: true
  poll_interval_seconds: 5
  free_slots_after_run_end_seconds: 5
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 4
"""


def race_asset(trial: int) -> str:
    """The asset of a race trial (0: ``make test``'s; 1..10: the soak's)."""
    return f"dist_race_{trial}"


def _wait(what: str, predicate: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(0.2)


@dataclass
class Deployment:
    """The running deployment, seen from the test: its instance, code server and storage."""

    instance: dg.DagsterInstance
    workspace: Path  # the daemon's workspace file, naming the code server
    keys: list[str]
    storage: dict[str, str]  # asset name -> s3://bucket/prefix
    storage_options: dict[str, Any]
    log: Path  # the daemon's and the code server's output

    def launch(self, asset: str, start: str, end: str) -> str:
        """Submit a run of ``asset`` over ``start..end`` as ``dagster job launch`` does; its ID."""
        run = execute_launch_command(
            instance=self.instance,
            workspace_opts=WorkspaceOpts(workspace=[str(self.workspace)]),
            job_name=f"{asset}_job",
            tags=json.dumps(
                {
                    "dagster/asset_partition_range_start": start,
                    "dagster/asset_partition_range_end": end,
                }
            ),
        )
        return run.run_id

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None, run_id
        return run

    def wait_finished(self, run_ids: list[str], timeout: float = 240.0) -> None:
        _wait(
            f"runs {run_ids} to finish",
            lambda: all(self.run(r).is_finished for r in run_ids),
            timeout,
            self.log,
        )

    def store(self, asset: str) -> ImageStore:
        return ImageStore(self.storage[asset], self.storage_options)

    def materialized(self, run_id: str) -> set[str]:
        return {
            str(e.asset_materialization.partition)
            for e in self.instance.all_logs(
                run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            )
            if e.asset_materialization is not None
        }

    def claims(self, asset: str) -> list[str]:
        """The claim objects present on the asset's storage."""
        root = self.store(asset).root
        return sorted(str(p) for p in root.rglob("*.claim"))


@pytest.fixture(scope="module")
def deployment(
    emulator_proc_session: EmulatorProcess,
    s3_server: S3,
    postgres_server: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("dist")
    home = tmp / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        postgres_server.dagster_yaml(postgres_server.create_database()) + INSTANCE_YAML
    )
    rows = dataset(N)
    prompts = tmp / "prompts.csv"
    with prompts.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["key", "prompt", "size"])
        writer.writeheader()
        writer.writerows(rows)
    names = [race_asset(t) for t in range(SOAK_TRIALS + 1)] + [KILL_ASSET]
    storage = {name: f"s3://{s3_server.make_bucket()}/zimage" for name in names}
    config = tmp / "config.json"
    config.write_text(
        json.dumps(
            {
                "assets": [
                    {"name": n, "prompts": str(prompts), "storage": storage[n]} for n in names
                ],
                "storage_options": s3_server.storage_options,
            }
        )
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "ZIMAGE_DIST_CONFIG": str(config),
        "ZIMAGE_API_KEY": emulator_proc_session.api_key,
        "ZIMAGE_BASE_URL": emulator_proc_session.url,
    }
    port = _free_port()
    (tmp / "workspace.yaml").write_text(
        "load_from:\n"
        f"  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: dist\n"
    )
    log = tmp / "deployment.log"
    code_server_command = [
        str(BIN / "dagster"),
        "api",
        "grpc",
        "-f",
        str(REPO / "tests/reliability/_dist_project.py"),
        "-d",
        str(REPO),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--location-name",
        "dist",
    ]
    daemon_command = [str(BIN / "dagster-daemon"), "run", "-w", str(tmp / "workspace.yaml")]
    started: list[subprocess.Popen[bytes]] = []
    with log.open("wb") as out, dg.DagsterInstance.from_config(str(home)) as instance:

        def start(command: list[str]) -> subprocess.Popen[bytes]:
            # Its own process group: stopping it ends what it started (run workers, steps).
            process = subprocess.Popen(
                command,
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append(process)
            return process

        try:
            code_server = start(code_server_command)
            # It loads the code before it answers: once it answers a ping, runs can be submitted.
            client = DagsterGrpcClient(port=port, host="127.0.0.1")
            wait_for_grpc_server(code_server, client, code_server_command, 120)
            start(daemon_command)
            yield Deployment(
                instance=instance,
                workspace=tmp / "workspace.yaml",
                keys=[r["key"] for r in rows],
                storage=storage,
                storage_options=s3_server.storage_options,
                log=log,
            )
        finally:
            for process in reversed(started):
                stop_process_group(process)


def _peak_concurrency(deployment: Deployment, run_ids: list[str]) -> int:
    """Most runs that were started and not yet ended at the same moment."""
    records = deployment.instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
    moments: list[tuple[float, int]] = []
    for record in records:
        assert record.start_time is not None
        assert record.end_time is not None
        moments += [(record.start_time, 1), (record.end_time, -1)]
    peak = current = 0
    for _, step in sorted(moments, key=lambda m: (m[0], m[1])):
        current += step
        peak = max(peak, current)
    return peak


def race_trial(deployment: Deployment, emulator: EmulatorProcess, asset: str) -> dict[str, Any]:
    """Four runs over the same partitions through the queue: one task per partition."""
    keys = deployment.keys
    whole, again, _singles, halves = shapes(keys, 4, singles=1)
    ranges = [*whole, *again, *halves]
    # The tasks created before all four runs are running wait: none completes until then, so
    # the four runs meet on the same partitions however slowly the machine starts them.
    emulator.configure(latency_range_s=[3600.0, 3600.0], estimated_time=1, random_seed=7)
    before = emulator.stats()["tasks_created"]
    submitted = time.monotonic()
    run_ids = [deployment.launch(asset, start, end) for start, end in ranges]
    submit_s = time.monotonic() - submitted

    def statuses() -> list[dg.DagsterRunStatus]:
        return [deployment.run(r).status for r in run_ids]

    # No run can end before the gate opens but by failing: stop waiting then, and say why.
    _wait(
        "the queue to run all four runs at once",
        lambda: (
            set(statuses()) == {dg.DagsterRunStatus.STARTED}
            or any(deployment.run(r).is_finished for r in run_ids)
        ),
        180,
        deployment.log,
    )
    all_started_s = time.monotonic() - submitted
    ended = {
        r: run_messages(deployment.instance, r)[-3000:]
        for r in run_ids
        if deployment.run(r).is_finished
    }
    assert not ended, f"runs ended before their tasks could complete: {ended}"
    emulator.configure(latency_range_s=[0.3, 0.9])
    emulator.advance_clock(3600)  # the held tasks complete now; later ones take 0.3-0.9 s
    deployment.wait_finished(run_ids)
    elapsed = time.monotonic() - submitted

    failed = {r: run_messages(deployment.instance, r)[-3000:] for r in run_ids}
    failed = {r: text for r, text in failed.items() if not deployment.run(r).is_success}
    assert not failed, f"runs failed: {failed}"
    for run_id, (start, end) in zip(run_ids, ranges, strict=True):
        want = set(keys[keys.index(start) : keys.index(end) + 1])
        got = deployment.materialized(run_id)
        assert got == want, f"run over {start}..{end} materialized {sorted(got)}"
    store = deployment.store(asset)
    entries = {e.partition_key: e for e in TaskLedger(store).iter_entries(asset)}
    assert sorted(entries) == keys
    assert {e.status for e in entries.values()} == {LedgerStatus.COLLECTED}
    assert all(store.exists(asset, k) for k in keys)
    assert deployment.claims(asset) == []
    tasks_created = emulator.stats()["tasks_created"] - before
    assert tasks_created == N, f"{tasks_created} tasks created for {N} partitions"
    return {
        "partitions": N,
        "runs": len(run_ids),
        "tasks_created": tasks_created,
        "peak_concurrent_runs": _peak_concurrency(deployment, run_ids),
        "submit_s": round(submit_s, 2),
        "all_started_s": round(all_started_s, 1),
        "elapsed_s": round(elapsed, 1),
    }


@pytest.mark.slow
def test_four_queued_runs_on_s3_and_postgres_pay_once(
    deployment: Deployment, emulator_proc: EmulatorProcess
) -> None:
    figures = race_trial(deployment, emulator_proc, race_asset(0))
    assert figures["peak_concurrent_runs"] == 4, figures
    report("dist_races", figures)


@pytest.mark.soak
def test_soak_four_queued_runs_on_s3_and_postgres(
    deployment: Deployment, emulator_proc: EmulatorProcess
) -> None:
    trials = {}
    for trial in range(1, SOAK_TRIALS + 1):
        emulator_proc.reset()
        trials[f"t{trial}"] = race_trial(deployment, emulator_proc, race_asset(trial))
        assert trials[f"t{trial}"]["peak_concurrent_runs"] == 4, trials
    report("soak_dist_races", {"partitions": N, "trials": trials})


def _pids(deployment: Deployment, run_id: str) -> dict[str, int]:
    """The process IDs Dagster recorded for a run: ``"run"`` (its run worker, from "Started
    process for run") and ``"step"`` (the process running the step: "Executing step ... in
    subprocess" under the multiprocess executor, "Executing steps in process" under the
    in-process one), as far as they are known yet."""
    out: dict[str, int] = {}
    for entry in deployment.instance.all_logs(run_id):
        event = entry.dagster_event
        data = event.event_specific_data if event is not None else None
        pid = (getattr(data, "metadata", None) or {}).get("pid")
        if event is None or pid is None:
            continue
        message = event.message or entry.user_message
        if message.startswith("Started process for run"):
            out["run"] = int(pid.value)
        elif message.startswith("Executing step"):
            out["step"] = int(pid.value)
    return out


def _claim_owners(deployment: Deployment, asset: str) -> dict[str, dict[str, Any]]:
    """Claim path -> its owner record, for the claims present on the asset's storage."""
    root = deployment.store(asset).root
    owners = {}
    for path in root.rglob("*.claim"):
        with contextlib.suppress(FileNotFoundError):  # released meanwhile
            owners[str(path)] = json.loads(path.read_bytes())["owner"]
    return owners


@pytest.mark.slow
def test_sigkill_of_the_claim_holder_mid_batch(
    deployment: Deployment, emulator_proc: EmulatorProcess
) -> None:
    keys, asset = deployment.keys, KILL_ASSET
    store = deployment.store(asset)
    ledger = TaskLedger(store)
    emulator_proc.configure(latency_range_s=[2.0, 5.0], estimated_time=1, random_seed=9)
    run_a = deployment.launch(asset, keys[0], keys[-1])

    # Mid-batch: some partitions stored, some tasks in flight (recorded, claimed), some not begun.
    def mid_batch() -> bool:
        if deployment.run(run_a).is_finished:
            return True
        statuses = [e.status for e in ledger.iter_entries(asset)]
        return (
            statuses.count(LedgerStatus.COLLECTED) >= 1
            and statuses.count(LedgerStatus.SUBMITTED) >= 2
        )

    _wait("run A to be mid-batch", mid_batch, 240, deployment.log)
    assert not deployment.run(run_a).is_finished, run_messages(deployment.instance, run_a)[-3000:]
    pids = _pids(deployment, run_a)
    owners = _claim_owners(deployment, asset)
    # The claim holder, as the claims name it, is the step process Dagster recorded for run A.
    assert owners
    assert {(o["run_id"], o["pid"]) for o in owners.values()} == {(run_a, pids["step"])}, pids
    # A lost node: the run worker and its step process die at once, no clean-up of any kind
    # (one process when the step runs in the run worker, as the asset's job does by default).
    killed_at = time.time()
    for pid in {pids["run"], pids["step"]}:
        os.kill(pid, signal.SIGKILL)
    tasks_at_kill = emulator_proc.stats()["tasks_created"]
    at_kill = list(ledger.iter_entries(asset))
    recorded = {e.partition_key: e.task_id for e in at_kill}
    stale = _claim_owners(deployment, asset)
    assert tasks_at_kill > 0
    assert stale, "no claim held at the kill"
    in_flight = [e for e in at_kill if e.status != LedgerStatus.COLLECTED]
    assert in_flight, "run A had stored every partition it recorded: not mid-batch"

    _wait(
        "Dagster to mark the killed run failed",
        lambda: deployment.run(run_a).status == dg.DagsterRunStatus.FAILURE,
        120,
        deployment.log,
    )
    marked_failed_s = time.time() - killed_at
    run_b = deployment.launch(asset, keys[0], keys[-1])
    deployment.wait_finished([run_b])
    assert deployment.run(run_b).is_success, run_messages(deployment.instance, run_b)[-3000:]
    assert deployment.materialized(run_b) == set(keys)

    # B took every stale claim over because Dagster reports A dead, not because a lease ran out.
    takeovers = [
        e for e in deployment.instance.all_logs(run_b) if "took over the claim of" in e.user_message
    ]
    assert len(takeovers) == len(stale), [e.user_message for e in takeovers]
    assert all(
        f"run {run_a[:8]}" in e.user_message and "is no longer running" in e.user_message
        for e in takeovers
    ), [e.user_message for e in takeovers]
    takeover_s = max(e.timestamp for e in takeovers) - killed_at
    [b_step_start] = [
        e.timestamp
        for e in deployment.instance.all_logs(run_b, of_type=dg.DagsterEventType.STEP_START)
    ]
    assert takeover_s < DEFAULT_LEASE_S

    # B re-attached to the tasks A recorded; only a task created in the window between a
    # create's answer and its ledger write can be an orphan.
    entries = {e.partition_key: e for e in ledger.iter_entries(asset)}
    assert sorted(entries) == keys
    assert {e.status for e in entries.values()} == {LedgerStatus.COLLECTED}
    for key, task_id in recorded.items():
        found = store.find(asset, key)
        assert found is not None, key
        assert found.provenance["task_id"] == task_id, key
    known = {e.task_id for e in entries.values()} | {
        p.task_id for e in entries.values() for p in e.previous
    }
    tasks = emulator_proc.tasks()
    orphans = [t["id"] for t in tasks if t["id"] not in known]
    assert N <= len(tasks) <= N + 1, len(tasks)
    assert len(orphans) == len(tasks) - N
    assert deployment.claims(asset) == []
    report(
        "dist_kill",
        {
            "partitions": N,
            "tasks_created_before_kill": tasks_at_kill,
            "tasks_recorded_by_a": len(recorded),
            "stored_by_a": len(at_kill) - len(in_flight),
            "stale_claims": len(stale),
            "tasks_created": len(tasks),
            "orphans": len(orphans),
            "marked_failed_s": round(marked_failed_s, 1),
            "takeover_s": round(takeover_s, 1),
            "takeover_after_b_step_start_s": round(
                max(e.timestamp for e in takeovers) - b_step_start, 2
            ),
            "lease_s": DEFAULT_LEASE_S,
        },
    )
