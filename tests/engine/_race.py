"""Workers for the race tests: real processes (spawned, so nothing is shared but the storage)
acting on the same files at the same moment, lined up by a barrier."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from upath import UPath

from zimage_dagster.engine.atomic import PreconditionFailedError, conditional_files
from zimage_dagster.engine.claims import ClaimBook, Owner
from zimage_dagster.engine.settings import RunIdentity


def root_path(root: str, storage_options: Mapping[str, Any]) -> UPath:
    # Each process has its own filesystem object and no listing cache, like separate pods.
    return (
        UPath(root, **{**storage_options, "skip_instance_cache": True})
        if storage_options
        else UPath(root)
    )


def claim_race(
    root: str,
    storage_options: Mapping[str, Any],
    keys: list[str],
    trials: int,
    name: str,
    barrier: Any,
    out: Any,
) -> None:
    """Each trial: wait for everyone, then try to claim every key; report which ones we got."""
    base = root_path(root, storage_options)
    book = ClaimBook(conditional_files(base), lease_s=300)
    owner = Owner.here(run_id=name)
    for trial in range(trials):
        barrier.wait()
        won = [k for k in keys if book.acquire(base / f"t{trial}" / f"{k}.claim", owner).acquired]
        out.put((name, trial, won))


def counter_race(
    root: str,
    storage_options: Mapping[str, Any],
    increments: int,
    barrier: Any,
    out: Any,
) -> None:
    """Read-modify-write a shared counter ``increments`` times with compare-and-set."""
    base = root_path(root, storage_options)
    files = conditional_files(base)
    path = base / "counter.json"
    conflicts = 0
    barrier.wait()
    for _ in range(increments):
        while True:
            current = files.read(path)
            assert current is not None
            value = json.loads(current.data)["n"]
            try:
                files.replace(path, json.dumps({"n": value + 1}).encode(), current.version)
                break
            except PreconditionFailedError:
                conflicts += 1
    out.put(conflicts)


def hold_claim(root: str, storage_options: Mapping[str, Any], key: str, ready: Any) -> None:
    """Take a claim, say so, then keep working (renewing nothing) until killed."""
    base = root_path(root, storage_options)
    book = ClaimBook(conditional_files(base), lease_s=300)
    attempt = book.acquire(base / f"{key}.claim", Owner.here(run_id="holder-run"))
    ready.put(attempt.acquired)
    time.sleep(600)


def mark_race(
    root: str,
    storage_options: Mapping[str, Any],
    keys: list[str],
    status: str,
    barrier: Any,
    out: Any,
) -> None:
    """Set ``status`` on every key's entry, 5 times over; report ``(key, before, after)``."""
    from zimage_dagster.engine.ledger import TaskLedger
    from zimage_dagster.engine.store import ImageStore

    options = {**storage_options, "skip_instance_cache": True} if storage_options else None
    ledger = TaskLedger(ImageStore(root, options))
    seen = []
    barrier.wait()
    for _ in range(5):
        for key in keys:
            before = ledger.get("imgs", key)
            entry = before
            assert entry is not None
            after = ledger.update("imgs", key, entry.task_id, status)
            seen.append((key, before.status.value if before else None, after.status.value))
    out.put(seen)


def _jobs(keys: list[str]) -> list[Any]:
    from zimage_dagster.engine.jobs import ImageJob
    from zimage_dagster.prompts import PromptRow

    return [
        ImageJob.from_row(
            PromptRow(k, f"a small red fox, study {k}", "376x376", i + 1, None), seed=i + 1
        )
        for i, k in enumerate(keys)
    ]


def create_race(
    root: str, url: str, api_key: str, keys: list[str], mode: str, barrier: Any, out: Any
) -> None:
    run_id = f"{mode}-{os.getpid()}"  # each racer is a run of its own
    """One creator of the mixed create race: ``submit`` (deferred), ``blocking`` (the batch
    generator) or ``tick`` (the task-status sensor's watcher); reports what it did."""
    import asyncio

    from zimage_dagster.api import AsyncZImageClient
    from zimage_dagster.engine.batch import BatchGenerator
    from zimage_dagster.engine.collect import TaskWatcher
    from zimage_dagster.engine.ledger import TaskLedger
    from zimage_dagster.engine.settings import GenerationPolicy
    from zimage_dagster.engine.store import ImageStore
    from zimage_dagster.engine.submit import submit_jobs

    ledger = TaskLedger(ImageStore(root))

    async def main() -> str:
        async with AsyncZImageClient(api_key=api_key, base_url=url) as c:
            barrier.wait()
            if mode == "submit":
                report = await submit_jobs(
                    c, ledger, ("imgs",), _jobs(keys), identity=RunIdentity(run_id=run_id)
                )
            elif mode == "blocking":
                engine = BatchGenerator(
                    c,
                    ledger.store,
                    ledger,
                    ("imgs",),
                    identity=RunIdentity(run_id=run_id),
                    progress_interval=0,
                )
                report = await engine.run(_jobs(keys))
            else:
                return (
                    await TaskWatcher(ledger, ("imgs",), GenerationPolicy(max_resubmits=5)).tick(c)
                ).summary()
            return report.summary()

    out.put((mode, asyncio.run(main())))
