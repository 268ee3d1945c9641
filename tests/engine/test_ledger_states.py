"""The ledger under concurrency and damage: states only move forward (a compare-and-set, also
between real processes), unreadable entries and provenance records are moved aside and the
partition rebuilt, one asset's scan never sees another's entries, files honour the umask."""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from tests.engine import _race
from zimage_dagster.engine.collect import TaskWatcher
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore

Root = tuple[str, dict[str, Any]]
TASK = "task-unified-1796000000-abcdefgh"
REQUEST = {"prompt": "a fox", "size": "1:1", "seed": 7}
SPAWN = multiprocessing.get_context("spawn")


def _ledger(store_root: Root) -> TaskLedger:
    return TaskLedger(ImageStore(store_root[0], store_root[1] or None))


def test_states_only_move_forward(store_root: Root) -> None:
    ledger = _ledger(store_root)
    ledger.record_submitted("imgs", "p", task_id=TASK, request=REQUEST)
    assert ledger.mark_collected("imgs", "p", TASK).status == LedgerStatus.COLLECTED
    # The receiver (or a slow poll) arriving late changes nothing.
    assert ledger.mark_completed("imgs", "p", TASK).status == LedgerStatus.COLLECTED
    assert ledger.mark_failed("imgs", "p", TASK, "service_error").status == LedgerStatus.COLLECTED
    assert ledger.mark_expired("imgs", "p", TASK).status == LedgerStatus.COLLECTED
    entry = ledger.get("imgs", "p")
    assert entry is not None
    assert entry.status == LedgerStatus.COLLECTED
    # Expired, then stored by a run that downloaded in time: collected wins.
    ledger.record_submitted("imgs", "q", task_id=TASK, request=REQUEST)
    ledger.mark_expired("imgs", "q", TASK)
    assert ledger.mark_collected("imgs", "q", TASK).status == LedgerStatus.COLLECTED
    # Same status again may add detail (the sensor marks a failure handled).
    ledger.record_submitted("imgs", "r", task_id=TASK, request=REQUEST)
    ledger.mark_failed("imgs", "r", TASK, "content_policy_violation")
    handled = ledger.update("imgs", "r", TASK, LedgerStatus.FAILED, error_code="x", handled_at=1.0)
    assert handled.handled_at == 1.0


def test_racing_writers_never_roll_an_entry_back(store_root: Root) -> None:
    """Processes marking the same entry completed / collected / failed in a loop: once collected,
    it stays collected, and every write lands on the version it read."""
    ledger = _ledger(store_root)
    keys = [f"p{i}" for i in range(6)]
    for key in keys:
        ledger.record_submitted("imgs", key, task_id=TASK, request=REQUEST)
    statuses = ["completed", "collected", "completed", "failed"]
    barrier, out = SPAWN.Barrier(len(statuses)), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_race.mark_race, args=(*store_root, keys, status, barrier, out))
        for status in statuses
    ]
    for proc in procs:
        proc.start()
    seen = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    for key in keys:
        entry = ledger.get("imgs", key)
        assert entry is not None
        assert entry.status == LedgerStatus.COLLECTED, key
    # Every writer that saw the entry after "collected" landed saw "collected".
    for report in seen:
        for key, before, after in report:
            if before == "collected":
                assert after == "collected", (key, before, after)


DAMAGE: dict[str, bytes | None] = {
    "truncated": None,  # the real entry cut in half (filled in below)
    "garbage": b"not json at all {{{",
    "empty object": b"{}",
    "list": b"[]",
    "empty": b"",
    "binary": b"\x00\x9f\xff\x10\x80binary",
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_an_unreadable_entry_is_moved_aside_and_rebuilt(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = TaskLedger(ImageStore(tmp_path))
    ledger.record_submitted("imgs", "p", task_id=TASK, request=REQUEST)
    path = Path(ledger.path("imgs", "p").path)
    whole = path.read_bytes()
    cut = whole[: len(whole) // 2]
    damaged = cut if kind == "truncated" else DAMAGE[kind] or b""
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        entry = ledger.get("imgs", "p")
    aside = list(path.parent.glob("p.json.unreadable-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == damaged
    assert str(path) in caplog.text
    assert aside[0].name in caplog.text
    # The task ID survives in the index (written with the entry): the partition re-attaches.
    assert entry is not None
    assert entry.task_id == TASK
    assert entry.recovered_from == aside[0].name
    assert entry.status == LedgerStatus.SUBMITTED
    restored = ledger.restore_request("imgs", "p", TASK, request=REQUEST, fingerprint="f" * 16)
    assert restored.fingerprint == "f" * 16
    assert restored.seed == 7
    # Scans read the rebuilt entry and never the file kept aside.
    assert [e.task_id for e in ledger.iter_entries("imgs")] == [TASK]


def test_a_damaged_entry_of_a_never_generated_partition_does_not_block_it(
    tmp_path: Path,
) -> None:
    ledger = TaskLedger(ImageStore(tmp_path))
    path = Path(ledger.path("imgs", "new").path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{}")
    assert ledger.get("imgs", "new") is None  # before: KeyError 'asset' on every run
    assert not path.exists()
    entry = ledger.record_submitted("imgs", "new", task_id=TASK, request=REQUEST)
    assert entry.attempt == 1


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"{}", b"\x89PNG\x00\xff"])
def test_an_unreadable_provenance_record_is_moved_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = ImageStore(tmp_path)
    store.save("imgs", "p", b"image bytes", "png", {"sha256": "ab", "seed": 1})
    path = Path(store.provenance_path("imgs", "p").path)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert store.read_provenance("imgs", "p") is None
    (aside,) = path.parent.glob("p.json.unreadable-*")
    assert aside.read_bytes() == content
    assert aside.name in caplog.text
    assert not path.exists()
    assert store.partitions("imgs") == []  # the kept file is no provenance record


def test_one_assets_scan_never_sees_a_nested_assets_entries(tmp_path: Path) -> None:
    ledger = TaskLedger(ImageStore(tmp_path))
    ledger.record_submitted("a", "p1", task_id=TASK, request=REQUEST, deferred=True)
    ledger.record_submitted(
        ("a", "b"), "p2", task_id=TASK.replace("abc", "xyz"), request=REQUEST, deferred=True
    )
    assert [(e.asset, e.partition_key) for e in ledger.iter_entries("a")] == [(("a",), "p1")]
    assert [(e.asset, e.partition_key) for e in ledger.iter_entries(("a", "b"))] == [
        (("a", "b"), "p2")
    ]
    assert len(list(ledger.iter_entries())) == 2
    # ... and so asset a's task-status sensor watches a's tasks only.
    assert [e.partition_key for e in TaskWatcher(ledger, "a")._read()] == ["p1"]


def test_stored_files_honour_the_umask(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    old = os.umask(0o022)
    try:
        store.save("imgs", "p", b"img", "png", {"sha256": "ab"})
        TaskLedger(store).record_submitted("imgs", "p", task_id=TASK, request=REQUEST)
        os.umask(0o027)
        store.save("imgs", "q", b"img", "png", {"sha256": "ab"})
    finally:
        os.umask(old)
    modes = {
        p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
        for p in tmp_path.rglob("*")
        if p.is_file()
    }
    assert modes["imgs/p.png"] == 0o644  # before: 0600 whatever the umask
    assert modes["imgs/p.json"] == 0o644
    assert modes["_ledger/imgs/p.json"] == 0o644
    assert modes["imgs/q.png"] == 0o640


def test_a_ledger_written_in_the_old_shape_is_read_into_typed_fields(tmp_path: Path) -> None:
    """Stores written before the workflow state was typed (``ledger_version`` 2, everything in
    ``extra``) keep working: the fields are read from ``extra``, the sensor still watches the
    entry, and the resubmission count is taken as every earlier task (never fewer)."""
    import json

    ledger = TaskLedger(ImageStore(tmp_path))
    old = {
        "ledger_version": 2,
        "asset": ["imgs"],
        "partition_key": "2026-01-01|fox",
        "task_id": TASK,
        "seed": 7,
        "fingerprint": "f" * 16,
        "request": REQUEST,
        "status": "failed",
        "submitted_at": 1.0,
        "updated_at": 2.0,
        "attempt": 3,
        "previous": [],
        "error_code": "service_error",
        "error_message": "busy",
        "run_id": "r1",
        "extra": {
            "deferred": True,
            "collect_batch": "b1",
            "collect_requested_at": 5.0,
            "collect_runs": 1,
            "completed_at": 4.0,
            "via": "callback",
            "note": "kept",
        },
        "credits_reserved": 0.026,
    }
    path = ledger.path("imgs", "2026-01-01|fox")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    entry = ledger.get("imgs", "2026-01-01|fox")
    assert entry is not None
    assert (entry.deferred, entry.collect_batch, entry.collect_requested_at) == (True, "b1", 5.0)
    assert (entry.collect_runs, entry.completed_at, entry.via) == (1, 4.0, "callback")
    assert entry.resubmits == 2  # attempt 3: two earlier tasks, all counted
    assert entry.handled_at is None
    assert entry.recovered_from is None
    assert entry.extra == {"note": "kept"}
    assert [e.partition_key for e in TaskWatcher(ledger, "imgs")._read()] == ["2026-01-01|fox"]
    # Written again, it takes the new shape and reads back the same.
    marked = ledger.update("imgs", "2026-01-01|fox", TASK, LedgerStatus.FAILED, handled_at=9.0)
    assert json.loads(path.read_text())["deferred"] is True
    assert ledger.get("imgs", "2026-01-01|fox") == marked
    assert marked.handled_at == 9.0
    assert marked.resubmits == 2
