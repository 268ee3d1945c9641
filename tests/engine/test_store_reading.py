"""Reading a store: the gallery and the dataset sensor see the same partitions through the store's
and the ledger's own readers, on a store holding images, failures, odd keys and odd files.

The expectations are written out from what each test stores (not computed by the code under
test); they held before the readers moved into the store and the ledger, and hold after.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.scan import ScanCache
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery.index import GalleryIndex
from zimage_dagster.sensors import _read_provenance
from zimage_dagster.spec import ImageAssetSpec

HERO = ("hero",)
NESTED = ("hero", "nested")
DEEP = ("catalog", "hero")
# Partition keys the codec has to escape: a multi-partition key, '__', '~', a trailing '_'.
ODD_KEYS = ("2026-01-01|fox", "a__b", "x~y", "under_|score", "ünï-cödé")


def _task(n: int) -> str:
    return f"task-unified-{1700000000 + n}-{n:08d}"


def _save(store: ImageStore, asset: tuple[str, ...], key: str, n: int) -> None:
    record = ImageRecord(
        seed=n, task_id=_task(n), prompt=f"prompt {n}", partition_key=key, created_at=float(n)
    )
    store.save(asset, key, f"image {n}".encode(), "png", to_provenance(record))


def _submit(ledger: TaskLedger, asset: tuple[str, ...], key: str, n: int) -> None:
    ledger.record_submitted(
        asset, key, task_id=_task(n), request={"prompt": f"prompt {n}", "seed": n}
    )


def _fill(store: ImageStore) -> None:
    ledger = TaskLedger(store)
    for n, key in enumerate(("fox", *ODD_KEYS), start=1):
        _submit(ledger, HERO, key, n)
        _save(store, HERO, key, n)
        ledger.mark_collected(HERO, key, _task(n))
    _save(store, HERO, "no-entry", 50)  # stored with no ledger entry
    _submit(ledger, HERO, "rejected", 51)
    ledger.mark_failed(HERO, "rejected", _task(51), "content_policy_violation", "refused")
    _submit(ledger, HERO, "waiting", 52)
    _submit(ledger, HERO, "late", 53)
    ledger.mark_expired(HERO, "late", _task(53))
    _save(store, HERO, "again", 54)  # stored, then a newer task for it is under way
    _submit(ledger, HERO, "again", 55)
    _save(store, NESTED, "fox", 60)  # an asset nested under hero: not one of hero's partitions
    _save(store, DEEP, "2026-01-02|owl", 61)
    _submit(ledger, DEEP, "bat", 62)
    ledger.mark_failed(DEEP, "bat", _task(62), "generation_timeout", "timed out")
    # Files that are not records: garbage, a JSON list, {} and a record missing its fields, a
    # moved-aside file; and sensor state under the ledger.
    write = store.write_atomic
    write(store.join("hero", "garbage.json"), b"{not json")
    write(store.join("hero", "a-list.json"), b"[1, 2]")
    write(store.join("hero", "no-fields.json"), b'{"colour": "red"}')
    write(store.join("hero", "fox.json.unreadable-20260101T000000-abcdef"), b"{")
    write(store.join("_ledger", "hero", "broken.json"), b"\x00\x01 not an entry")
    write(store.join("_ledger", "_state", "hero", "dataset.json"), b'{"digest": "x"}')


GALLERY = {
    "hero": {
        "fox": "stored",
        **dict.fromkeys(ODD_KEYS, "stored"),
        "no-entry": "stored",
        "rejected": "failed",
        "waiting": "pending",
        "late": "expired",
        "again": "pending",
    },
    "hero/nested": {"fox": "stored"},
    "catalog/hero": {"2026-01-02|owl": "stored", "bat": "failed"},
}
# The dataset sensor's view of hero: every JSON object stored beside hero's images (even one that
# is not a whole provenance record), by partition key; nothing of hero/nested.
SENSOR_HERO = {
    "fox": _task(1),
    **{key: _task(i) for i, key in enumerate(ODD_KEYS, start=2)},
    "no-entry": _task(50),
    "again": _task(54),
    "no-fields": None,
}


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageStore]:
    if request.param == "local":
        yield ImageStore(tmp_path)
    else:
        root = f"memory://store-reading-{os.getpid()}-{tmp_path.name}"
        store = ImageStore(root)
        yield store
        store.root.fs.rm(store.root.path, recursive=True)


def _gallery(store: ImageStore) -> dict[str, dict[str, str]]:
    snapshot = GalleryIndex(store, refresh_s=0).snapshot()
    return {
        name: {item.partition_key: item.status for item in index.items}
        for name, index in snapshot.assets.items()
    }


def _all_files(store: ImageStore) -> dict[str, bytes]:
    return store.read_all(store.root)


def test_the_gallery_and_the_sensor_see_every_partition_and_nothing_else(
    store: ImageStore,
) -> None:
    _fill(store)
    files = _all_files(store)
    assert _gallery(store) == GALLERY
    spec = ImageAssetSpec(asset_name="hero", prompts=[{"prompt": "p"}], storage=str(store.root))
    found = _read_provenance(store, spec)
    assert {key: record.get("task_id") for key, record in found.items()} == SENSOR_HERO
    assert found["2026-01-01|fox"]["partition_key"] == "2026-01-01|fox"
    # Reading wrote nothing: no repair, no move aside (the gallery is read-only).
    assert _all_files(store) == files


def test_a_store_with_only_a_ledger_or_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "new")
    assert _gallery(store) == {}
    _submit(TaskLedger(store), HERO, "fox", 1)
    assert _gallery(store) == {"hero": {"fox": "pending"}}
    spec = ImageAssetSpec(asset_name="hero", prompts=[{"prompt": "p"}], storage=str(store.root))
    assert _read_provenance(store, spec) == {}
    assert json.loads(store.read_bytes_or_none(TaskLedger(store).path(HERO, "fox")) or b"{}")


def test_a_kept_cache_rereads_only_what_changed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    ledger = TaskLedger(store)
    for n, key in enumerate(("a", "b", "c"), start=1):
        _save(store, HERO, key, n)
        _submit(ledger, HERO, key, n)
    _submit(ledger, NESTED, "a", 9)  # a nested asset's entry: not one of hero's
    records, entries = ScanCache(), ScanCache()
    before = {r.partition_key: r for r in store.records(HERO, cache=records)}
    first = {e.partition_key: e for e in ledger.entries(HERO, cache=entries)}
    assert [e.seed for e in first.values()] == [1, 2, 3]
    assert ledger.entries(HERO, statuses=[]) == []
    _save(store, HERO, "b", 20)
    store.delete(HERO, "c")
    ledger.mark_failed(HERO, "a", _task(1), "content_policy_violation", "no")
    after = {r.partition_key: r for r in store.records(HERO, cache=records)}
    second = {e.partition_key: e for e in ledger.entries(HERO, cache=entries)}
    assert sorted(after) == ["a", "b"]
    assert after["a"] is before["a"]  # unchanged: neither read nor parsed again
    assert after["b"].provenance["task_id"] == _task(20)
    assert second["b"] is first["b"]
    assert second["a"].status.value == "failed"
    # The same answers without a cache; a cache holds one kind of file.
    assert store.records(HERO) == list(after.values())
    assert ledger.entries(HERO, statuses=["failed"]) == [second["a"]]
    with pytest.raises(ValueError, match="keep another one"):
        ledger.entries(cache=records)


def test_entries_skips_an_unreadable_file_that_iter_entries_repairs(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    ledger = TaskLedger(store)
    _submit(ledger, HERO, "fox", 1)
    broken = ledger.path(HERO, "owl")
    store.write_atomic(broken, b'{"task_id": "' + _task(2).encode() + b'", truncated')
    assert [e.partition_key for e in ledger.entries()] == ["fox"]
    assert store.read_bytes_or_none(broken) is not None  # left as it was
    repaired = {e.partition_key: e.task_id for e in ledger.iter_entries()}
    assert repaired == {"fox": _task(1), "owl": _task(2)}  # re-made for its task
