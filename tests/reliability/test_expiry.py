"""Expiry: a run is killed with tasks in flight, the provider's clock moves 25 hours ahead (result
links live 24 hours), and the next run regenerates every uncollected task with the same seed,
flagged ``regenerated``, while the images stored before the kill stay as they were (bytes and
mtime) and cost nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg

from tests.reliability._support import (
    ASSET,
    account_for_every_task,
    assert_delivered,
    build_defs_asset,
    dataset,
    failure_text,
    file_marks,
    kill_when,
    report,
    resource,
    run_range,
    snapshot,
    start_child,
    write_dagster_home,
)
from zimage_dagster.emulator.server import EmulatorProcess
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore


def test_uncollected_tasks_expire_and_are_regenerated_with_their_seed(
    emulator_proc: EmulatorProcess, tmp_path: Path
) -> None:
    n = 24
    rows = dataset(n)
    keys = [r["key"] for r in rows]
    keys_by_prompt = {r["prompt"]: r["key"] for r in rows}
    storage = str(tmp_path / "images")
    home = write_dagster_home(tmp_path / "home")
    store = ImageStore(storage)
    ledger = TaskLedger(store)
    emulator_proc.configure(latency_range_s=[0.5, 3.0], estimated_time=1, random_seed=5)
    spec = {
        "rows": rows,
        "storage": storage,
        "key": emulator_proc.api_key,
        "url": emulator_proc.url,
        "start": keys[0],
        "end": keys[-1],
        "resource": {"concurrency": 16, "max_poll_interval": 0.5},
    }
    started = time.monotonic()
    proc = start_child(spec, home)
    kill_when(
        proc,
        lambda: (
            sum(e.status == LedgerStatus.COLLECTED for e in ledger.iter_entries(ASSET)) >= 4
            and emulator_proc.stats()["tasks_created"] >= 20
        ),
        timeout=60,
        what="some images stored and most tasks created",
    )
    before = snapshot(emulator_proc, store, keys)
    # Open in the ledger and not stored. A partition whose image and record were written just
    # before the kill, but whose ledger entry was not yet marked collected, is stored: it is
    # reused, like a collected one (paying for it again would be paying twice).
    uncollected = {k: e for k, e in before.entries.items() if e.is_open and k not in before.files}
    assert uncollected, "nothing was in flight at the kill"
    # A day later every task has long finished, and its result link has died.
    emulator_proc.advance_clock(25 * 3600)

    asset = build_defs_asset(rows, storage)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = run_range(
            asset, instance, resource(emulator_proc, concurrency=16), keys[0], keys[-1]
        )
        assert result.success, failure_text(result)
        mats = assert_delivered(instance, store, keys)
    tasks = {t["id"]: t for t in emulator_proc.tasks()}
    assert file_marks(store, list(before.files)) == before.files  # stored images untouched
    regenerated = []
    for key in keys:
        md = mats[key]
        old = before.entries.get(key)
        if old is None:  # never submitted before the kill: a first task now
            assert (md["reused"], md["regenerated"]) == (False, False)
        elif old.status == LedgerStatus.COLLECTED or key in before.files:
            assert (md["reused"], md["regenerated"]) == (True, False)
            assert md["task_id"] == old.task_id
        else:
            regenerated.append(key)
            assert md["regenerated"] is True, key
            assert md["reused"] is False
            assert md["seed"] == old.seed
            assert md["previous_task_ids"] == [old.task_id]
            assert md["task_id"] != old.task_id
            assert md["attempts"] == 2
            new, was = tasks[md["task_id"]]["request"], tasks[old.task_id]["request"]
            assert (new["prompt"], new["size"], new["seed_sent"]) == (
                was["prompt"],
                was["size"],
                was["seed_sent"],
            )
            entry = ledger.get(ASSET, key)
            assert entry is not None
            assert entry.previous[-1].task_id == old.task_id
            assert entry.previous[-1].status == LedgerStatus.EXPIRED
    assert sorted(regenerated) == sorted(uncollected)
    acc = account_for_every_task(
        emulator_proc, store, keys_by_prompt, expected_orphans=before.window_orphans
    )
    assert acc.resubmissions == len(regenerated)
    assert acc.tasks_created == n + len(regenerated) + len(before.window_orphans)
    report(
        "expiry",
        {
            "prompts": n,
            "stored_before_kill": before.collected,
            "in_flight_at_kill": len(uncollected),
            "regenerated": len(regenerated),
            "tasks_created": acc.tasks_created,
            "elapsed_s": round(time.monotonic() - started, 1),
        },
    )
