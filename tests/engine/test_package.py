"""The engine package: no Dagster import (by source and at run time), and the codec between
partition keys and storage keys. (Its docstring examples run in `make doctest`.)"""

from __future__ import annotations

import pkgutil
import random
from pathlib import Path

import pytest

import zimage_dagster.engine as engine_pkg
from zimage_dagster.engine.keys import (
    InvalidPartitionKeyError,
    partition_key,
    partition_key_problem,
    storage_key,
)
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.provenance import ImageRecord, to_provenance
from zimage_dagster.engine.store import ImageStore

PACKAGE_DIR = Path(engine_pkg.__file__).parent
MODULES = [
    name for _, name, _ in pkgutil.iter_modules(engine_pkg.__path__, "zimage_dagster.engine.")
]


def test_the_codec_is_reversible_for_any_key() -> None:
    rng = random.Random(11)
    alphabet = "_|~a-:."
    for _ in range(20_000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        if partition_key_problem(key) is not None:  # empty, or a leading '.': never stored
            with pytest.raises(InvalidPartitionKeyError):
                storage_key(key)
            continue
        assert partition_key(storage_key(key)) == key, key
    # Dataset keys and dates are stored as they are; a date x prompt key keeps its readable form.
    assert storage_key("hero_01") == "hero_01"
    assert storage_key("2026-01-01|hero_01") == "2026-01-01__hero_01"
    # Two different keys never share a file.
    assert storage_key("a__b") != storage_key("a|b")


def test_ledger_and_provenance_hold_the_partition_key_itself(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    ledger = TaskLedger(store)
    key = "2026-01-01|a__b"
    ledger.record_submitted(
        "hero", key, task_id="task-unified-1-aaaaaaaa", request={"prompt": "p", "seed": 3}
    )
    record = ImageRecord(seed=3, task_id="task-unified-1-aaaaaaaa", prompt="p", partition_key=key)
    store.save("hero", key, b"img", "png", to_provenance(record))

    (entry,) = ledger.iter_entries("hero")
    assert entry.partition_key == key
    assert ledger.find_task("task-unified-1-aaaaaaaa") == entry
    assert store.partitions("hero") == [key]
    found = store.find("hero", key)
    assert found is not None
    assert found.provenance["partition_key"] == key
    assert found.path.name == f"{storage_key(key)}.png"
    assert sorted(p.name for p in (tmp_path / "hero").iterdir()) == [
        "2026-01-01__a~__b.json",
        "2026-01-01__a~__b.png",
    ]


def test_a_version_1_ledger_entry_reads_back_its_partition_key(tmp_path: Path) -> None:
    ledger = TaskLedger(ImageStore(tmp_path))
    entry = ledger.record_submitted(
        "hero",
        "2026-01-01|fox",
        task_id="task-unified-1-bbbbbbbb",
        request={"prompt": "p", "seed": 1},
    )
    old = {**entry.to_json(), "ledger_version": 1, "partition_key": "2026-01-01__fox"}
    assert type(entry).from_json(old).partition_key == "2026-01-01|fox"
