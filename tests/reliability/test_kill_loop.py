"""The kill loop: a run over all partitions is SIGKILLed at a random point while its tasks are in
flight, re-run, killed again..., then left to finish. In the end every partition is stored once
and whole, the ledger knows every task but those created in the documented window between a
create's answer and its ledger write (tasks created <= partitions + kills x creates in flight),
claims of the killed runs were taken over (none is left), and no stored file is torn.

``make test`` kills 3 times over 12 partitions; ``make soak`` 20 times over 40.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.reliability._support import ASSET, dataset, report, write_dagster_home
from zimage_dagster.emulator.server import EmulatorProcess
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = 4  # creates in flight per run


def _start(spec: dict[str, Any], home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "yes"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._race_child", json.dumps(spec)],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def kill_loop(
    emulator: EmulatorProcess, tmp_path: Path, *, n: int, kills: int, seed: int
) -> dict[str, Any]:
    rnd = random.Random(seed)
    rows = dataset(n)
    keys = [r["key"] for r in rows]
    emulator.configure(latency_range_s=[0.4, 1.4], estimated_time=1, random_seed=seed)
    home = write_dagster_home(tmp_path / "home")
    storage = str(tmp_path / "store")
    (tmp_path / "go").touch()
    spec = {
        "rows": rows,
        "storage": storage,
        "key": emulator.api_key,
        "url": emulator.url,
        "ranges": [[keys[0], keys[-1]]],
        "go": str(tmp_path / "go"),
        "out": str(tmp_path / "out.json"),
        "resource": {"concurrency": CONCURRENCY, "max_poll_interval": 0.3},
    }
    killed = 0
    attempts = 0
    # Each run is killed at a random point of its own work: after a random number (1-8) of its
    # requests to the provider (creates, polls, downloads), then up to 0.3 s more (mid-store,
    # mid-ledger-write...). Counting requests rather than waiting for a create of its own keeps
    # the kills landing once every partition has a task: a re-run that only re-attaches and
    # collects is killed too. A run that finds nothing left to do ends on its own (not a kill).
    while killed < kills and attempts < 3 * kills:
        before = emulator.stats()["requests_total"]
        after = before + rnd.randint(1, 8)
        proc = _start(spec, home, tmp_path / f"run{attempts}.log")
        attempts += 1
        deadline = time.monotonic() + 120
        while emulator.stats()["requests_total"] < after and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never talked to the provider"
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(30)
        if proc.returncode == 0:
            break  # it finished every partition: nothing left to kill
    final = _start(spec, home, tmp_path / "final.log")
    assert final.wait(300) == 0, (tmp_path / "final.log").read_text()[-3000:]
    logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    # The re-runs took the killed runs' claims over at once (their processes are gone), not
    # after the lease.
    assert killed == 0 or "took over the claim of" in logs

    store = ImageStore(storage)
    ledger = TaskLedger(store)
    entries = {e.partition_key: e for e in ledger.iter_entries(ASSET)}
    assert sorted(entries) == keys
    assert {e.status for e in entries.values()} == {LedgerStatus.COLLECTED}
    known = {e.task_id for e in entries.values()} | {
        p.task_id for e in entries.values() for p in e.previous
    }
    tasks = emulator.tasks()
    orphans = [t["id"] for t in tasks if t["id"] not in known]
    for key in keys:
        found = store.find(ASSET, key)
        assert found is not None, key
        data = found.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == found.sha256, key
        Image.open(io.BytesIO(data)).load()  # whole, decodes
        assert found.provenance["task_id"] == entries[key].task_id
    # No torn file anywhere: every visible JSON file parses; no claim is left behind.
    for path in Path(storage).rglob("*"):
        if path.is_file() and path.suffix == ".json" and not path.name.startswith("."):
            json.loads(path.read_bytes())
    assert list(Path(storage).rglob("*.claim")) == []
    figures = {
        "partitions": n,
        "kills": killed,
        "runs_started": attempts + 1,
        "tasks_created": len(tasks),
        "orphans_from_kill_windows": len(orphans),
    }
    # Each kill can cost at most the tasks whose creates answered just before it, before their
    # ledger writes (a window of a few milliseconds per create; with CONCURRENCY creates in
    # flight, under load several can be inside it at the kill).
    assert n <= len(tasks) <= n + killed * CONCURRENCY, figures
    assert len(orphans) == len(tasks) - n, figures
    assert killed == kills, f"only {killed} of {kills} kills landed: {figures}"
    return figures


def test_kill_loop(emulator_proc: EmulatorProcess, tmp_path: Path) -> None:
    report("kill_loop", kill_loop(emulator_proc, tmp_path, n=12, kills=3, seed=11))


@pytest.mark.soak
def test_soak_kill_loop(emulator_proc: EmulatorProcess, tmp_path: Path) -> None:
    report("soak_kill_loop", kill_loop(emulator_proc, tmp_path, n=40, kills=20, seed=12))
