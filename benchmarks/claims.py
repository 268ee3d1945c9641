"""Benchmark 7, claims: what taking a partition's claim costs, on a local folder and on S3.

Before it creates a task, a run takes the partition's claim (an atomic create-if-absent) and
releases it when the partition is done (a conditional delete). Per partition, that is measured
here against the write the engine already does per partition: one atomic ledger-entry write
(local: temp file, fsync, rename; S3: one PUT). S3 is moto's server on loopback (in this
process), so its figures are request round trips on this machine, not AWS latencies; the ratio
is what carries over.

Also measured: an uncontended takeover of a stale claim (read + compare-and-set), the path a
re-run takes after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from upath import UPath

from benchmarks._common import BenchResult
from zimage_dagster.engine.atomic import conditional_files, replace_file
from zimage_dagster.engine.claims import ClaimBook, Owner

NAME = "claims"
TITLE = "7. Claims (cost of claiming a partition before creating its task)"

_ENTRY = json.dumps({"asset": ["imgs"], "task_id": "task-unified-1-aaaaaaaa", "x": "y" * 400})


def _per_op_ms(n: int, op: Callable[[int], Any]) -> float:
    started = time.perf_counter()
    for i in range(n):
        op(i)
    return (time.perf_counter() - started) / n * 1000


def _measure(root: UPath, n: int) -> dict[str, float]:
    files = conditional_files(root)
    book = ClaimBook(files, lease_s=300)
    owner = Owner.here(run_id="bench-run", step="imgs")
    data = _ENTRY.encode()

    def ledger_write(i: int) -> None:
        path = root / "ledger" / f"p{i}.json"
        if _is_local(root):
            replace_file(path.path, data)  # what ImageStore.write_atomic does locally
        else:
            path.fs.pipe_file(path.path, data)

    def claim_and_release(i: int) -> None:
        attempt = book.acquire(root / "claims" / f"p{i}.claim", owner)
        assert attempt.acquired
        book.release(attempt.claim)

    stale = ClaimBook(files, lease_s=300, is_run_alive=lambda run_id: False)
    for i in range(n):  # claims of a dead run, to be taken over
        book.acquire(root / "stale" / f"p{i}.claim", Owner.here(run_id="dead-run"))

    def takeover(i: int) -> None:
        attempt = stale.acquire(root / "stale" / f"p{i}.claim", owner)
        assert attempt.acquired
        assert attempt.took_over is not None

    ledger_write(-1)  # warm up (folders, connections)
    claim_and_release(-1)
    return {
        "ledger_write_ms": _per_op_ms(n, ledger_write),
        "claim_release_ms": _per_op_ms(n, claim_and_release),
        "takeover_ms": _per_op_ms(n, takeover),
    }


def _is_local(root: UPath) -> bool:
    from upath.implementations.local import LocalPath

    return isinstance(root, LocalPath)


def _moto_root() -> tuple[UPath, Any]:
    import boto3  # type: ignore[import-untyped]
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    options: dict[str, Any] = {
        "key": "k",
        "secret": "s",
        "client_kwargs": {"region_name": "us-east-1"},
        "endpoint_url": url,
        "use_listings_cache": False,
    }
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    root = UPath(f"s3://{bucket}/zimage", **options)
    return root, server


def run(*, quick: bool = False, context: dict[str, Any] | None = None) -> BenchResult:
    result = BenchResult(NAME, TITLE)
    n = 50 if quick else 300
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        local = _measure(UPath(folder), n)
    s3_root, server = _moto_root()
    try:
        s3 = _measure(s3_root, n // 2)
    finally:
        server.stop()
    for label, figures in (("local folder", local), ("S3 (moto, loopback)", s3)):
        result.add(
            f"claim + release per partition, {label}",
            figures["claim_release_ms"],
            "ms",
            figures["ledger_write_ms"],
            "one atomic ledger write",
            target="< 3 ledger writes",
            met=figures["claim_release_ms"] < 3 * figures["ledger_write_ms"],
        )
        result.add(
            f"takeover of a dead run's claim, {label}",
            figures["takeover_ms"],
            "ms",
            figures["ledger_write_ms"],
            "one atomic ledger write",
        )
    result.notes.append(
        f"{n} partitions locally, {n // 2} on S3; per partition: create-if-absent of the claim, "
        "then its conditional delete. The first S3 create also probes (once per bucket) that the "
        "server honours If-None-Match."
    )
    result.notes.append(
        "Against a provider task of 6-10 s per image, even the S3 figure is well under 0.1% of a "
        "partition's time."
    )
    result.details = {"local": local, "s3": s3, "n": n}
    result.elapsed_s = time.monotonic() - started
    return result
