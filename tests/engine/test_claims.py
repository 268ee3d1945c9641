"""Claims and compare-and-set under real concurrency: spawned processes racing on the same files,
on a local folder and on S3 (moto's server on loopback, through s3fs)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from upath import UPath

from tests.engine import _race
from zimage_dagster.engine.atomic import (
    AtomicWritesUnsupportedError,
    PreconditionFailedError,
    conditional_files,
    remove_stale_temp_files,
)
from zimage_dagster.engine.claims import (
    ClaimBook,
    ClaimKeeper,
    ClaimLostError,
    Owner,
    PartitionClaim,
)

Root = tuple[str, dict[str, Any]]
SPAWN = multiprocessing.get_context("spawn")
KEYS = [f"p{i:02d}" for i in range(10)]


def _base(store_root: Root) -> UPath:
    return _race.root_path(*store_root)


def _collect(out: Any, n: int, timeout: float = 120) -> list[Any]:
    return [out.get(timeout=timeout) for _ in range(n)]


def _join(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0, f"{proc.name} exited with {proc.exitcode}"


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_exactly_one_process_wins_each_claim(store_root: Root, processes: int) -> None:
    trials = 3
    barrier, out = SPAWN.Barrier(processes), SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=_race.claim_race,
            args=(*store_root, KEYS, trials, f"run-{i}", barrier, out),
            name=f"racer-{i}",
        )
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    reports = _collect(out, processes * trials)
    _join(procs)
    for trial in range(trials):
        winners: dict[str, list[str]] = {k: [] for k in KEYS}
        for name, t, won in reports:
            if t == trial:
                for key in won:
                    winners[key].append(name)
        assert {k: len(v) for k, v in winners.items()} == dict.fromkeys(KEYS, 1), winners
    # The claim files name the winners.
    book = ClaimBook(conditional_files(_base(store_root)))
    holder = book.holder(_base(store_root) / "t0" / "p00.claim")
    assert holder is not None
    assert holder.owner.run_id in {f"run-{i}" for i in range(processes)}


def test_compare_and_set_loses_no_update(store_root: Root) -> None:
    base = _base(store_root)
    conditional_files(base).create(base / "counter.json", b'{"n": 0}')
    processes, increments = 4, 15
    barrier, out = SPAWN.Barrier(processes), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_race.counter_race, args=(*store_root, increments, barrier, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    conflicts = _collect(out, processes)
    _join(procs)
    final = conditional_files(base).read(base / "counter.json")
    assert final is not None
    assert json.loads(final.data)["n"] == processes * increments
    assert sum(conflicts) > 0  # the writers did collide, and the losers re-read


def test_create_replace_delete_follow_the_version(store_root: Root) -> None:
    base = _base(store_root)
    files = conditional_files(base)
    path = base / "a" / "entry.json"
    assert files.read(path) is None
    v1 = files.create(path, b"one")
    with pytest.raises(FileExistsError):
        files.create(path, b"other")
    v2 = files.replace(path, b"two", v1)
    with pytest.raises(PreconditionFailedError):
        files.replace(path, b"stale", v1)
    with pytest.raises(PreconditionFailedError):
        files.delete(path, v1)
    read = files.read(path)
    assert read is not None
    assert (read.data, read.version) == (b"two", v2)
    assert files.delete(path, v2) is True
    assert files.delete(path, v2) is False
    with pytest.raises(PreconditionFailedError):
        files.replace(path, b"gone", v2)


def test_a_sigkilled_holder_is_taken_over_on_this_machine(store_root: Root) -> None:
    """The holder's process is gone: its claim is taken over at once, lease or not."""
    ready = SPAWN.Queue()
    proc = SPAWN.Process(target=_race.hold_claim, args=(*store_root, "p0", ready))
    proc.start()
    try:
        assert ready.get(timeout=60) is True
        base = _base(store_root)
        book = ClaimBook(conditional_files(base), lease_s=300)
        busy = book.acquire(base / "p0.claim", Owner.here(run_id="rescuer"))
        assert not busy.acquired
        assert busy.claim.owner.run_id == "holder-run"
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        taken = book.acquire(base / "p0.claim", Owner.here(run_id="rescuer"))
        assert taken.acquired
        assert taken.took_over is not None
        assert taken.took_over.owner.run_id == "holder-run"
        assert "is gone" in (taken.reason or "")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()


def _foreign(book: ClaimBook, path: UPath, run_id: str, expires_in: float) -> PartitionClaim:
    """A claim written as another machine's process would (its PID means nothing here)."""
    now = time.time()
    owner = Owner(run_id=run_id, step="imgs", host="other-pod", pid=1, machine="elsewhere")
    claim = PartitionClaim(path, owner, "foreign-token", now, now + expires_in)
    version = book.files.create(path, claim.to_bytes())
    return PartitionClaim(path, owner, claim.token, now, now + expires_in, version)


def test_a_live_claim_of_another_machine_waits_for_its_lease(tmp_path: Path) -> None:
    base = UPath(str(tmp_path))
    book = ClaimBook(conditional_files(base), lease_s=60)
    _foreign(book, base / "p.claim", "run-x", expires_in=0.6)
    first = book.acquire(base / "p.claim", Owner.here(run_id="run-y"))
    assert not first.acquired
    assert first.claim.owner.describe().startswith("run run-x")
    time.sleep(0.7)
    second = book.acquire(base / "p.claim", Owner.here(run_id="run-y"))
    assert second.acquired
    assert "expired" in (second.reason or "")


def test_a_dead_run_loses_its_claim_before_the_lease_ends(tmp_path: Path) -> None:
    base = UPath(str(tmp_path))
    asked: list[str] = []

    def is_run_alive(run_id: str) -> bool | None:
        asked.append(run_id)
        return run_id != "dead-run"

    book = ClaimBook(conditional_files(base), lease_s=600, is_run_alive=is_run_alive)
    _foreign(book, base / "live.claim", "live-run", expires_in=600)
    _foreign(book, base / "dead.claim", "dead-run", expires_in=600)
    me = Owner.here(run_id="run-z")
    assert not book.acquire(base / "live.claim", me).acquired
    dead = book.acquire(base / "dead.claim", me)
    assert dead.acquired
    assert "no longer running" in (dead.reason or "")
    assert asked == ["live-run", "dead-run"]


def test_the_same_run_takes_its_own_claim_back(tmp_path: Path) -> None:
    """A retried step of the same run (a new process) does not wait for its own old claim."""
    base = UPath(str(tmp_path))
    book = ClaimBook(conditional_files(base), lease_s=600)
    _foreign(book, base / "p.claim", "run-r", expires_in=600)
    again = book.acquire(base / "p.claim", Owner.here(run_id="run-r"))
    assert again.acquired
    assert "this run" in (again.reason or "")


@pytest.mark.parametrize("content", [b"", b"{", b"{}", b"[]", b"\x00\xff\x10garbage"])
def test_an_unreadable_claim_file_is_taken_over(tmp_path: Path, content: bytes) -> None:
    base = UPath(str(tmp_path))
    (tmp_path / "p.claim").write_bytes(content)
    book = ClaimBook(conditional_files(base))
    got = book.acquire(base / "p.claim", Owner.here(run_id="r"))
    assert got.acquired
    assert got.reason == "unreadable claim file"
    holder = book.holder(base / "p.claim")
    assert holder is not None
    assert holder.owner.run_id == "r"


def test_the_keeper_renews_while_working_and_detects_a_takeover(tmp_path: Path) -> None:
    base = UPath(str(tmp_path))
    book = ClaimBook(conditional_files(base), lease_s=0.6)
    with ClaimKeeper(book, interval_s=0.1) as keeper:
        claim = keeper.add(book.acquire(base / "p.claim", Owner.here(run_id="worker")).claim)
        time.sleep(1.5)  # well past the first lease: renewals kept it alive
        other = book.acquire(base / "p.claim", Owner.here(run_id="other"))
        assert not other.acquired
        current = keeper.check(base / "p.claim")
        assert current.expires_at > claim.expires_at
        # Someone decides we are dead (e.g. a frozen pod) and takes the claim over.
        thief = ClaimBook(conditional_files(base), lease_s=60, is_run_alive=lambda r: False)
        assert thief.acquire(base / "p.claim", Owner.here(run_id="thief")).acquired
        deadline = time.monotonic() + 10
        while not keeper.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ClaimLostError):
            keeper.check(base / "p.claim")
    holder = book.holder(base / "p.claim")  # our exit did not release the thief's claim
    assert holder is not None
    assert holder.owner.run_id == "thief"


def test_release_never_removes_someone_elses_claim(tmp_path: Path) -> None:
    base = UPath(str(tmp_path))
    book = ClaimBook(conditional_files(base), lease_s=600)
    mine = book.acquire(base / "p.claim", Owner.here(run_id="a")).claim
    thief = ClaimBook(conditional_files(base), is_run_alive=lambda r: r != "a")
    assert thief.acquire(base / "p.claim", Owner.here(run_id="b")).acquired
    assert book.release(mine) is False
    with pytest.raises(ClaimLostError):
        book.renew(mine)
    holder = book.holder(base / "p.claim")
    assert holder is not None
    assert holder.owner.run_id == "b"


def test_new_files_honour_the_umask(tmp_path: Path) -> None:
    base = UPath(str(tmp_path))
    files = conditional_files(base)
    old = os.umask(0o022)
    try:
        v = files.create(base / "a.json", b"1")
        files.replace(base / "a.json", b"2", v)
        os.umask(0o077)
        files.create(base / "b.json", b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_stale_temp_files_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    old = tmp_path / "a" / ".p.json.1234.tmp"
    fresh = tmp_path / "a" / ".q.json.5678.tmp"
    keep = tmp_path / "a" / "p.json"
    for f in (old, fresh, keep):
        f.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temp_files(str(tmp_path)) == [str(old)]
    assert not old.exists()
    assert fresh.exists()
    assert keep.exists()


def test_a_backend_without_atomic_create_is_refused() -> None:
    with pytest.raises(AtomicWritesUnsupportedError, match=r"ftp:// storage .* Supported"):
        conditional_files(UPath("ftp://127.0.0.1/x"))


def test_memory_backend_is_atomic_between_threads() -> None:
    import threading

    base = UPath("memory://claims-threads")
    book = ClaimBook(conditional_files(base))
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        if book.acquire(base / "p.claim", Owner.here(run_id=f"r{i}")).acquired:
            wins.append(f"r{i}")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
