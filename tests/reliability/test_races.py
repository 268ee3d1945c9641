"""Overlapping runs on the same partitions pay once: 2, 3 and 4 processes started at the same
moment, each materializing the same partitions (the same backfill twice, one-partition runs,
overlapping halves), against the emulator over HTTP, with the tasks it created counted.

``make test`` runs one trial of 2 and of 4 processes over 8 partitions on a local folder, and one
of 3 processes on S3 (moto) with PostgreSQL run storage; ``make soak`` runs 20 trials of each count
over 20 partitions on both (every partition also as its own run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.reliability._support import ASSET, dataset, report, write_dagster_home
from tests.reliability.conftest import S3, Postgres
from zimage_dagster.emulator.server import EmulatorProcess
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[2]


def shapes(keys: list[str], processes: int, singles: int) -> list[list[list[str]]]:
    """The runs of each racer: the whole range (twice: a double click), one-partition runs of
    the last ``singles`` partitions (in reverse order, to meet the others head on), and two
    overlapping halves."""
    whole = [[keys[0], keys[-1]]]
    singles_runs = [[k, k] for k in reversed(keys[-singles:])]
    mid = len(keys) // 2
    halves = [[keys[mid - 2], keys[-1]], [keys[0], keys[mid + 1]]]
    return [whole, whole, singles_runs, halves][:processes]


def race(
    emulator: EmulatorProcess,
    home: Path,
    work: Path,
    *,
    n: int,
    processes: int,
    singles: int,
    storage: str,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One trial: start the racers, fire the starting gun, check the outcome; its figures."""
    rows = dataset(n)
    keys = [r["key"] for r in rows]
    before = emulator.stats()["tasks_created"]
    work.mkdir(parents=True)
    go = work / "go"
    procs = []
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "yes",
    }
    for i, ranges in enumerate(shapes(keys, processes, singles)):
        spec = {
            "rows": rows,
            "storage": storage,
            "storage_options": storage_options or {},
            "key": emulator.api_key,
            "url": emulator.url,
            "ranges": ranges,
            "go": str(go),
            "out": str(work / f"racer{i}.json"),
            "resource": {"concurrency": 8, "max_poll_interval": 0.3},
        }
        log = (work / f"racer{i}.log").open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.reliability._race_child", json.dumps(spec)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    time.sleep(0.5)
    go.touch()
    started = time.monotonic()
    codes = [p.wait(timeout=300) for p in procs]
    elapsed = time.monotonic() - started
    logs = {i: (work / f"racer{i}.log").read_text()[-3000:] for i in range(processes) if codes[i]}
    assert codes == [0] * processes, f"a run failed: {logs}"

    store = ImageStore(storage, storage_options)
    entries = {e.partition_key: e for e in TaskLedger(store).iter_entries(ASSET)}
    assert sorted(entries) == keys
    assert {e.status for e in entries.values()} == {LedgerStatus.COLLECTED}
    assert all(store.exists(ASSET, k) for k in keys)
    tasks_created = emulator.stats()["tasks_created"] - before

    runs = [r for i in range(processes) for r in json.loads((work / f"racer{i}.json").read_text())]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in runs:
            want = keys[keys.index(run["range"][0]) : keys.index(run["range"][1]) + 1]
            got = {
                str(e.asset_materialization.partition)
                for e in instance.all_logs(
                    run["run_id"], of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
                )
                if e.asset_materialization is not None
            }
            assert got == set(want), f"run over {run['range']} materialized {sorted(got)}"
    assert tasks_created == n, f"{tasks_created} tasks created for {n} partitions"
    return {"tasks_created": tasks_created, "runs": len(runs), "elapsed_s": round(elapsed, 1)}


def trials(
    emulator: EmulatorProcess,
    tmp_path: Path,
    *,
    n: int,
    counts: tuple[int, ...],
    repeat: int,
    name: str,
    singles: int = 4,
    home: Path | None = None,
    s3: S3 | None = None,
) -> dict[str, Any]:
    emulator.configure(latency_range_s=[0.3, 0.9], estimated_time=1, random_seed=5)
    figures: dict[str, Any] = {"partitions": n, "trials": {}}
    for processes in counts:
        for trial in range(repeat):
            label = f"p{processes}t{trial}"
            trial_home = home or write_dagster_home(tmp_path / label / "home")
            with dg.DagsterInstance.from_config(str(trial_home)):
                pass  # create its storage once: racers migrating a fresh sqlite one collide
            if s3 is not None:
                storage = f"s3://{s3.make_bucket()}/zimage"
                options: dict[str, Any] | None = s3.storage_options
            else:
                storage, options = str(tmp_path / label / "store"), None
            figures["trials"][label] = race(
                emulator,
                trial_home,
                tmp_path / label / "work",
                n=n,
                processes=processes,
                singles=singles,
                storage=storage,
                storage_options=options,
            )
    report(name, figures)
    return figures


def _postgres_home(tmp_path: Path, postgres: Postgres) -> Path:
    return write_dagster_home(
        tmp_path / "home", yaml=postgres.dagster_yaml(postgres.create_database())
    )


@pytest.mark.slow
def test_racing_runs_pay_once_local(emulator_proc: EmulatorProcess, tmp_path: Path) -> None:
    trials(emulator_proc, tmp_path, n=8, counts=(2, 4), repeat=1, name="races_local")


@pytest.mark.slow
def test_racing_runs_pay_once_on_s3_and_postgres(
    emulator_proc: EmulatorProcess, s3: S3, postgres: Postgres, tmp_path: Path
) -> None:
    home = _postgres_home(tmp_path, postgres)
    trials(
        emulator_proc, tmp_path, n=8, counts=(3,), repeat=1, name="races_s3_pg", home=home, s3=s3
    )


@pytest.mark.soak
@pytest.mark.parametrize("backend", ["local", "s3_postgres"])
def test_soak_racing_runs_pay_once(
    emulator_proc: EmulatorProcess, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    remote = backend == "s3_postgres"
    trials(
        emulator_proc,
        tmp_path,
        n=20,
        counts=(2, 3, 4),
        repeat=20,
        name=f"soak_races_{backend}",
        singles=20,
        home=_postgres_home(tmp_path, request.getfixturevalue("postgres")) if remote else None,
        s3=request.getfixturevalue("s3") if remote else None,
    )
