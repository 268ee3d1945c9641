"""The task ledger: written before any wait, one file per partition, fast bulk scans."""

import doctest
import json
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

import zimage_dagster.engine.ledger as ledger_module
from zimage_dagster.engine.ledger import LedgerConflictError, LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore, UnsafePathError
from zimage_dagster.prompts import request_fingerprint

REQ = {"model": "z-image-turbo", "prompt": "a red fox", "size": "16:9", "seed": 42}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def ledger(tmp_path: Path) -> TaskLedger:
    return TaskLedger(ImageStore(tmp_path / "store"), clock=FakeClock())


def test_doctests() -> None:
    assert doctest.testmod(ledger_module).failed == 0


def test_record_and_layout(tmp_path: Path, ledger: TaskLedger) -> None:
    entry = ledger.record_submitted(
        dg.AssetKey(["catalog", "hero"]), "fox", task_id="task-unified-1-aaaaaaaa", request=REQ
    )
    path = tmp_path / "store" / "_ledger" / "catalog" / "hero" / "fox.json"
    assert path.is_file()
    on_disk = json.loads(path.read_text())
    assert on_disk["task_id"] == "task-unified-1-aaaaaaaa"
    assert on_disk["status"] == "submitted"
    assert entry.asset == ("catalog", "hero")
    assert entry.asset_name == "catalog/hero"
    assert entry.seed == 42
    assert entry.attempt == 1
    assert entry.fingerprint == request_fingerprint("a red fox", "16:9", 42, False)
    assert entry.request == REQ
    assert entry.is_open
    assert ledger.get(["catalog", "hero"], "fox") == entry
    assert ledger.get(["catalog", "hero"], "wolf") is None
    assert LedgerEntry.from_json(entry.to_json()) == entry


def test_request_secrets_and_unknown_fields_are_dropped(tmp_path: Path, ledger: TaskLedger) -> None:
    request = {
        **REQ,
        "nsfw_check": True,
        "callback_url": "https://hooks.example.com/cb?token=s3cret",
        "api_key": "sk-evo-should-never-be-stored",
        "headers": {"Authorization": "Bearer sk-evo-xyz"},
    }
    entry = ledger.record_submitted("hero", "fox", task_id="t1", request=request)
    assert set(entry.request) == {"model", "prompt", "size", "seed", "nsfw_check"}
    text = (tmp_path / "store" / "_ledger" / "hero" / "fox.json").read_text()
    assert "s3cret" not in text
    assert "sk-evo" not in text
    assert "Authorization" not in text


def test_record_needs_seed_and_prompt(ledger: TaskLedger) -> None:
    with pytest.raises(ValueError, match="seed"):
        ledger.record_submitted("hero", "fox", task_id="t", request={"prompt": "x"})
    with pytest.raises(ValueError, match="seed"):
        ledger.record_submitted("hero", "fox", task_id="t", request={"prompt": "x", "seed": True})
    with pytest.raises(ValueError, match="prompt"):
        ledger.record_submitted("hero", "fox", task_id="t", request={"seed": 1})


def test_lifecycle_and_resubmission(ledger: TaskLedger) -> None:
    ledger.record_submitted("hero", "fox", task_id="t1", request=REQ)
    ledger.mark_failed("hero", "fox", "t1", "service_error", "the service hiccuped")
    failed = ledger.get("hero", "fox")
    assert failed is not None
    assert failed.status is LedgerStatus.FAILED
    assert failed.error_code == "service_error"
    assert not failed.is_open
    second = ledger.record_submitted("hero", "fox", task_id="t2", request=REQ)
    assert second.attempt == 2
    assert second.status is LedgerStatus.SUBMITTED
    assert second.error_code is None
    (prev,) = second.previous
    assert (prev.task_id, prev.status, prev.error_code) == (
        "t1",
        LedgerStatus.FAILED,
        "service_error",
    )
    # a third submit while t2 is still open abandons t2
    third = ledger.record_submitted("hero", "fox", task_id="t3", request=REQ)
    assert [(p.task_id, p.status) for p in third.previous] == [
        ("t1", LedgerStatus.FAILED),
        ("t2", LedgerStatus.ABANDONED),
    ]
    assert third.attempt == 3
    ledger.mark_completed("hero", "fox", "t3")
    done = ledger.mark_collected("hero", "fox", "t3")
    assert done.status is LedgerStatus.COLLECTED
    assert done.updated_at > done.submitted_at


def test_same_task_recorded_twice_is_a_noop(ledger: TaskLedger) -> None:
    first = ledger.record_submitted("hero", "fox", task_id="t1", request=REQ)
    assert ledger.record_submitted("hero", "fox", task_id="t1", request=REQ) == first


def test_stale_writer_conflict(ledger: TaskLedger) -> None:
    ledger.record_submitted("hero", "fox", task_id="t1", request=REQ)
    ledger.mark_expired("hero", "fox", "t1")
    ledger.record_submitted("hero", "fox", task_id="t2", request=REQ)
    with pytest.raises(LedgerConflictError, match="t2"):
        ledger.mark_collected("hero", "fox", "t1")
    current = ledger.get("hero", "fox")
    assert current is not None
    assert current.status is LedgerStatus.SUBMITTED
    with pytest.raises(KeyError):
        ledger.mark_collected("hero", "wolf", "t1")


def test_abandon_and_long_messages(ledger: TaskLedger) -> None:
    ledger.record_submitted("hero", "fox", task_id="t1", request=REQ)
    entry = ledger.mark_abandoned("hero", "fox", "t1", "x" * 5000)
    assert entry.status is LedgerStatus.ABANDONED
    assert entry.error_message is not None
    assert len(entry.error_message) < 2100


def test_update_merges_extra(ledger: TaskLedger) -> None:
    ledger.record_submitted("hero", "fox", task_id="t1", request=REQ, extra={"a": 1}, run_id="r1")
    entry = ledger.update("hero", "fox", "t1", "completed", extra={"b": 2})
    assert entry.extra == {"a": 1, "b": 2}
    assert entry.run_id == "r1"


def test_iter_entries_filters_and_skips_garbage(tmp_path: Path, ledger: TaskLedger) -> None:
    for i in range(6):
        ledger.record_submitted("hero", f"k{i}", task_id=f"t{i}", request=REQ)
    ledger.record_submitted(["other", "asset"], "k0", task_id="o0", request=REQ)
    ledger.mark_collected("hero", "k1", "t1")
    ledger.mark_failed("hero", "k2", "t2", "content_policy_violation")
    (tmp_path / "store" / "_ledger" / "hero" / "broken.json").write_text("{not json")
    (tmp_path / "store" / "_ledger" / "hero" / ".k9.json.123.tmp").write_text("{partial")
    assert len(list(ledger.iter_entries())) == 7
    assert [e.partition_key for e in ledger.iter_entries("hero", statuses=["submitted"])] == [
        "k0",
        "k3",
        "k4",
        "k5",
    ]
    assert [e.task_id for e in ledger.iter_entries(["other", "asset"])] == ["o0"]
    open_ = list(ledger.iter_entries(statuses=ledger_module.OPEN_STATUSES))
    assert len(open_) == 5
    assert list(ledger.iter_entries("nothing")) == []


def test_remove(ledger: TaskLedger) -> None:
    ledger.record_submitted("hero", "fox", task_id="t1", request=REQ)
    assert ledger.remove("hero", "fox")
    assert not ledger.remove("hero", "fox")
    assert ledger.get("hero", "fox") is None


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "a\\b", "\x00", "C:"])
def test_refuses_traversal(tmp_path: Path, ledger: TaskLedger, bad: str) -> None:
    with pytest.raises(UnsafePathError):
        ledger.record_submitted("hero", bad, task_id="t", request=REQ)
    with pytest.raises(UnsafePathError):
        ledger.record_submitted(bad, "k", task_id="t", request=REQ)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_memory_store_ledger() -> None:
    ledger = TaskLedger(f"memory://ledger-{uuid.uuid4().hex[:8]}/root")
    for i in range(20):
        ledger.record_submitted("hero", f"k{i:02d}", task_id=f"t{i}", request=REQ)
    ledger.mark_collected("hero", "k03", "t3")
    assert len(list(ledger.iter_entries(statuses=["submitted"]))) == 19
    got = ledger.get("hero", "k03")
    assert got is not None
    assert got.status is LedgerStatus.COLLECTED


def test_concurrent_writers_on_different_partitions(ledger: TaskLedger) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(25):
                key = f"w{worker}-{i}"
                ledger.record_submitted("hero", key, task_id=f"t-{key}", request=REQ)
                ledger.mark_completed("hero", key, f"t-{key}")
                ledger.mark_collected("hero", key, f"t-{key}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = list(ledger.iter_entries("hero"))
    assert len(entries) == 200
    assert {e.status for e in entries} == {LedgerStatus.COLLECTED}


def test_scan_5000_local_entries_is_fast(tmp_path: Path) -> None:
    ledger = TaskLedger(ImageStore(tmp_path))
    for i in range(5000):
        ledger.record_submitted(
            "hero",
            f"k{i:05d}",
            task_id=f"task-unified-1700000000-{i:08d}",
            request={**REQ, "seed": i + 1},
        )
        if i % 3 == 0:
            ledger.mark_collected("hero", f"k{i:05d}", f"task-unified-1700000000-{i:08d}")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        pending = list(ledger.iter_entries(statuses=["submitted"]))
        best = min(best, time.perf_counter() - start)
    assert len(pending) == 3333
    print(f"\nledger scan of 5,000 local entries: {best * 1000:.0f} ms")
    assert best < 2.0
