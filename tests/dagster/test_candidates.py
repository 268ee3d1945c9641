"""Candidates per prompt (``variants=N``): real runs against the emulator, counting its tasks.

N units of work per partition, each through the claims, ledger, decide() and the budgets;
stored under the partition (candidate 0 where a partition of one image is); one
materialization per partition with every candidate and the preview first.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pytest

from tests.dagster._support import (
    image_asset,
    make_fast,
    materializations,
    resource_for,
    rows,
    run_range,
    values,
)
from zimage_dagster import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.keys import candidate_key
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.store import ImageStore

KEYS = ["p0", "p1", "p2", "p3", "p4"]


def test_five_prompts_times_four_candidates_make_twenty_tasks_once(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    data = [{**row, "seed": 100 + 10 * i} for i, row in enumerate(rows(5))]
    data[1].pop("seed")  # a derived seed too
    asset = image_asset(build_image_assets("imgs", data, storage=str(tmp_path), variants=4))
    store = ImageStore(tmp_path)
    with dg.instance_for_test() as instance:
        first = run_range(asset, instance, resource_for(emulator), "p0", "p4")
        assert first.success
        assert emulator.stats()["tasks_created"] == 20
        # Stored under the partition: candidate 0 where variants=1 puts it, the others beside.
        files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
        assert sorted(f for f in files if f.endswith(".json")) == [
            f"{k}{suffix}.json" for k in KEYS for suffix in ("", "~1", "~2", "~3")
        ]
        assert sorted(f.rsplit(".", 1)[0] for f in files if not f.endswith(".json")) == [
            f"{k}{suffix}" for k in KEYS for suffix in ("", "~1", "~2", "~3")
        ]
        # The store and its readers see partitions, each with four candidates.
        assert store.partitions("imgs") == KEYS
        assert [r.partition_key for r in store.records("imgs")] == KEYS
        assert sorted(
            (r.partition_key, r.candidate) for r in store.records("imgs", candidates=True)
        ) == [(k, i) for k in KEYS for i in range(4)]
        seeds = {i: store.find("imgs", candidate_key("p0", i)).provenance["seed"] for i in range(4)}
        assert seeds == {0: 100, 1: 101, 2: 102, 3: 103}  # a row's seed s gives s, s+1, ...
        derived = [store.find("imgs", candidate_key("p1", i)).provenance["seed"] for i in range(4)]
        assert len(set(derived)) == 4
        # One ledger entry per candidate unit, each collected.
        entries = TaskLedger(store).entries(("imgs",))
        assert len(entries) == 20
        assert {e.status.value for e in entries} == {"collected"}
        # One materialization per partition: the preview first, every candidate, the current.
        found = materializations(instance, "imgs", first.run_id)
        assert sorted(found) == KEYS
        for key in KEYS:
            (metadata,) = found[key]
            assert next(iter(metadata)) == "preview"
            assert str(metadata["preview"].value).startswith("![4 candidates")
            plain = values(metadata)
            assert plain["candidate"] == 0
            listed = plain["candidates"]
            assert [c["candidate"] for c in listed] == [0, 1, 2, 3]
            stored = [store.find("imgs", candidate_key(key, i)) for i in range(4)]
            assert [c["task_id"] for c in listed] == [s.provenance["task_id"] for s in stored]
            assert [c["seed"] for c in listed] == [s.provenance["seed"] for s in stored]
            assert plain["seed"] == listed[0]["seed"]
            assert plain["task_id"] == listed[0]["task_id"]
            assert plain["zimage.credits_candidates"] == pytest.approx(4 * 0.026)
            for s in stored:
                assert hashlib.sha256(s.path.read_bytes()).hexdigest() == s.sha256

        again = run_range(asset, instance, resource_for(emulator), "p0", "p4")
        assert again.success
        assert emulator.stats()["tasks_created"] == 20  # the re-run creates none
        assert sorted(materializations(instance, "imgs", again.run_id)) == KEYS


def test_one_variant_changes_nothing(emulator: EmulatorServer, tmp_path: Path) -> None:
    """variants=1 is today's asset: same paths, same metadata keys, and a store made without
    the option is reused as it is."""
    make_fast(emulator)
    before = image_asset(build_image_assets("imgs", rows(2), storage=str(tmp_path)))
    after = image_asset(build_image_assets("imgs", rows(2), storage=str(tmp_path), variants=1))
    with dg.instance_for_test() as instance:
        made = run_range(before, instance, resource_for(emulator), "p0", "p1")
        assert made.success
        assert emulator.stats()["tasks_created"] == 2
        files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
        assert [f.rsplit(".", 1)[0] for f in files] == ["p0", "p0", "p1", "p1"]
        reused = run_range(after, instance, resource_for(emulator), "p0", "p1")
        assert reused.success
        assert emulator.stats()["tasks_created"] == 2
        assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == files
        old = materializations(instance, "imgs", made.run_id)
        new = materializations(instance, "imgs", reused.run_id)
        for key in ("p0", "p1"):
            assert list(new[key][0]) == list(old[key][0])
            assert "preview" not in new[key][0]
            assert "candidates" not in new[key][0]
