"""Review records in the store: append-only, every backend, two writers at once, the winner rule."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import S3, s3_server  # noqa: F401  (the session's S3 server)
from zimage_dagster.engine import reviews
from zimage_dagster.engine.reviews import (
    NothingToUndoError,
    ReviewError,
    ReviewRecord,
    current_verdicts,
    read_records,
    record_verdict,
)
from zimage_dagster.engine.store import ImageStore, UnsafePathError

ASSET = ("catalog", "hero")


def _exercise(store: ImageStore) -> None:
    """Pick, reject, undo on one store; every record kept, the documented winner each time."""
    ana = record_verdict(store, ASSET, "2026-01-01|fox", "pick", reviewer="ana", candidate=0)
    assert current_verdicts(store, ASSET)["2026-01-01|fox"].verdict == "pick"
    bo = record_verdict(store, ASSET, "2026-01-01|fox", "reject", reviewer="bo", note="blurry")
    won = current_verdicts(store, ASSET)["2026-01-01|fox"]
    assert (won.verdict, won.reviewer, won.note, won.record_id) == ("reject", "bo", "blurry", bo.id)
    # ana's undo cancels ana's own pick, not bo's later reject.
    undo = record_verdict(store, ASSET, "2026-01-01|fox", "undo", reviewer="ana")
    assert undo.undoes == ana.id
    assert current_verdicts(store, ASSET)["2026-01-01|fox"].record_id == bo.id
    record_verdict(store, ASSET, "2026-01-01|fox", "undo", reviewer="bo")
    assert "2026-01-01|fox" not in current_verdicts(store, ASSET)  # unreviewed again
    with pytest.raises(NothingToUndoError, match="'ana' has no verdict to undo"):
        record_verdict(store, ASSET, "2026-01-01|fox", "undo", reviewer="ana")
    # Every record kept, in (at, id) order, stored where the module doc says.
    kept = read_records(store, ASSET, "2026-01-01|fox")
    assert [r.verdict for r in kept] == ["pick", "reject", "undo", "undo"]
    folder = store.root / "_reviews" / "catalog" / "hero" / "2026-01-01__fox"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{r.id}.json" for r in kept)
    stored = json.loads((folder / f"{bo.id}.json").read_bytes())
    assert ReviewRecord.from_json(stored) == bo
    # The store's own listing of provenance records (the gallery's, the sensors') skips them.
    assert all(r.asset[0] != "_reviews" for r in store.records())
    # A nested asset's records are not the outer asset's.
    record_verdict(store, ["catalog"], "fox", "pick", reviewer="ana", candidate=0)
    assert set(current_verdicts(store, ["catalog"])) == {"fox"}
    assert read_records(store, ASSET, "fox") == []


def test_records_on_a_local_store(tmp_path: Path) -> None:
    _exercise(ImageStore(tmp_path))


def test_records_on_a_memory_store() -> None:
    _exercise(ImageStore("memory://review-records/root"))


@pytest.mark.slow
def test_records_on_an_s3_store(s3_server: S3) -> None:  # noqa: F811
    bucket = s3_server.make_bucket()
    _exercise(ImageStore(f"s3://{bucket}/images", s3_server.storage_options))


def test_bad_verdicts_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    cases: list[tuple[dict[str, object], str]] = [
        ({"verdict": "pick", "candidate": 8}, "candidate 8: must be 0 to 7"),
        ({"verdict": "pick", "candidate": -1}, "candidate -1"),
        ({"verdict": "pick", "candidate": True}, "a pick needs a candidate index"),
        ({"verdict": "pick"}, "a pick needs a candidate index"),
        ({"verdict": "reject", "candidate": 0}, "only a pick names a candidate"),
        ({"verdict": "approve"}, "verdict 'approve': must be one of pick, reject, undo"),
        ({"verdict": "reject", "note": "x" * 2001}, "note: must be text of at most 2000"),
        ({"verdict": "reject", "note": "a\x00b"}, "note: holds a control character"),
        ({"verdict": "reject", "reviewer": "a\nb"}, "reviewer 'a\\\\nb': holds a control"),
    ]
    for change, message in cases:
        args: dict[str, object] = {"reviewer": "ana", **change}
        with pytest.raises(ReviewError, match=message):
            record_verdict(store, "hero", "fox", **args)  # type: ignore[arg-type]
    for asset, key in [("hero", "../etc"), ("hero", ".."), ("_reviews", "fox"), ("_ledger", "x")]:
        with pytest.raises(UnsafePathError):
            record_verdict(store, asset, key, "reject", reviewer="ana")
    assert not (tmp_path / "_reviews").exists()


def test_an_unreadable_record_is_skipped_and_left_alone(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    good = record_verdict(store, "hero", "fox", "pick", reviewer="ana", candidate=0)
    bad = tmp_path / "_reviews" / "hero" / "fox" / "0000000000000000001-deadbeef.json"
    bad.write_text('{"verdict": "pick", "asset": ["hero"]')
    assert current_verdicts(store, "hero")["fox"].record_id == good.id
    assert bad.read_text().startswith('{"verdict"')


def _writer(root: str, reviewer: str, keys: list[str], rounds: int, start_at: float) -> None:
    """One process: ``rounds`` verdicts on every key, as fast as it can, from ``start_at``."""
    store = ImageStore(root)
    while time.time() < start_at:
        time.sleep(0.001)
    for n in range(rounds):
        for key in keys:
            if reviewer == "ana":
                record_verdict(store, "hero", key, "pick", reviewer=reviewer, candidate=n % 8)
            else:
                record_verdict(store, "hero", key, "reject", reviewer=reviewer, note=f"round {n}")


def test_two_processes_writing_verdicts_at_once_lose_nothing(tmp_path: Path) -> None:
    keys = [f"p{i}" for i in range(8)]
    rounds = 25
    spawn = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # both processes are up by then (spawn imports take ~1-2 s)
    procs = [
        spawn.Process(target=_writer, args=(str(tmp_path), who, keys, rounds, start_at))
        for who in ("ana", "bo")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = ImageStore(tmp_path)
    records = read_records(store, "hero")
    assert len(records) == 2 * rounds * len(keys)
    assert len({r.id for r in records}) == len(records)
    by_key = {k: [r for r in records if r.partition_key == k] for k in keys}
    assert all(
        {r.reviewer for r in rs} == {"ana", "bo"} and len(rs) == 2 * rounds
        for rs in by_key.values()
    )
    # The writes overlapped in time (else this would not test a race).
    ana_times = [r.at for r in records if r.reviewer == "ana"]
    bo_times = [r.at for r in records if r.reviewer == "bo"]
    assert max(min(ana_times), min(bo_times)) < min(max(ana_times), max(bo_times))
    # The documented winner: the latest by (at, id), no undo having been written.
    verdicts = current_verdicts(store, "hero")
    for key, rs in by_key.items():
        latest = max(rs, key=lambda r: (r.at, r.id))
        assert verdicts[key].record_id == latest.id
    # Each reviewer undoes their own last verdict: the latest of what remains wins.
    for key in keys:
        for who in ("ana", "bo"):
            record_verdict(store, "hero", key, "undo", reviewer=who)
    verdicts = current_verdicts(store, "hero")
    for key, rs in by_key.items():
        last_of = {
            who: max((r for r in rs if r.reviewer == who), key=lambda r: r.order)
            for who in ("ana", "bo")
        }
        remaining = [r for r in rs if r not in last_of.values()]
        assert verdicts[key].record_id == max(remaining, key=lambda r: r.order).id
    assert len(read_records(store, "hero")) == 2 * rounds * len(keys) + 2 * len(keys)


def test_a_verdict_is_written_in_under_20_ms_on_a_local_store(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    times = []
    for n in range(60):
        started = time.perf_counter()
        record_verdict(store, "hero", f"p{n % 10}", "pick", reviewer="ana", candidate=0)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(f"verdict write on a local store: median {median * 1000:.2f} ms over {len(times)}")
    assert median < 0.020


def test_the_module_doctests() -> None:
    import doctest

    assert doctest.testmod(reviews).failed == 0
