"""Shared machinery of the reliability tests: datasets, real runs, and the task accounting that
proves nothing was lost and nothing was paid twice.

The accounting ties three independent records together:

* the emulator's own list of every task it created (``/_emulator/tasks``) and its counters;
* the task ledger (every task ID the pipeline knew about, the current one and ``previous``);
* the image store (files and provenance records) and the Dagster instance (materializations).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from tests.dagster._support import image_asset, run_range
from zimage_dagster.api import RETRYABLE_TASK_ERROR_CODES
from zimage_dagster.emulator.server import EmulatorHandle
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.resource import ZImageResource

SMALL = "376x376"
ASSET = "imgs"
#: The marker that makes the emulator refuse a prompt (a ``failure_rules`` pattern).
REJECT_MARKER = "wax effigy"
#: Retryable provider failures, 5% of tasks in all.
RETRYABLE_RATES = {"service_error": 0.02, "generation_timeout": 0.015, "resource_exhausted": 0.015}
#: Seconds one HTTP attempt may take; the "slow" faults answer later than this.
CLIENT_TIMEOUT = 2.0
SLOW_S = 3.0


def fault(route: str, action: str, p: float, **kw: Any) -> dict[str, Any]:
    return {"route": route, "action": action, "probability": p, **kw}


#: About 20% of the requests of each route fail, in every way the wire allows. Rules are tried
#: in order, each with its own draw. ``kind`` (ours, not the emulator's) says what the rule does
#: to a create: ``retried`` (the client retries it: no task can exist), ``no_task`` (raised, the
#: server made no task), ``lost_answer`` (raised, the task exists but its answer was lost).
HTTP_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("retried", fault("create", "status", 0.06, status=429, retry_after=0.2)),
    ("retried", fault("create", "status", 0.04, status=503)),
    ("no_task", fault("create", "status", 0.02, status=500)),
    ("lost_answer", fault("create", "status", 0.02, status=502, after_create=True)),
    ("no_task", fault("create", "drop", 0.02)),
    ("lost_answer", fault("create", "truncate", 0.02, after_create=True)),
    ("lost_answer", fault("create", "slow", 0.02, delay_s=SLOW_S, after_create=True)),
    ("get", fault("task", "status", 0.05, status=429, retry_after=0.2)),
    ("get", fault("task", "status", 0.04, status=500)),
    ("get", fault("task", "status", 0.04, status=502)),
    ("get", fault("task", "status", 0.04, status=503)),
    ("get", fault("task", "drop", 0.03)),
    ("get", fault("task", "slow", 0.02, delay_s=SLOW_S)),
    ("get", fault("files", "status", 0.05, status=500)),
    ("get", fault("files", "status", 0.05, status=503)),
    ("get", fault("files", "drop", 0.04)),
    ("get", fault("files", "truncate", 0.03)),
    ("get", fault("files", "slow", 0.03, delay_s=SLOW_S)),
]


def describe_rule(rule: Mapping[str, Any]) -> str:
    what = str(rule["status"]) if rule["action"] == "status" else rule["action"]
    return f"{rule['route']} {what}{' after create' if rule.get('after_create') else ''}"


def dataset(n: int, *, rejected: int = 0, prefix: str = "k") -> list[dict[str, Any]]:
    """``n`` rows ``k000``...; the rows at evenly spread positions carry the reject marker."""
    width = max(3, len(str(n - 1)))
    bad = (
        {round(i * n / rejected) + n // (2 * rejected) for i in range(rejected)}
        if rejected
        else set()
    )
    out = []
    for i in range(n):
        words = f"a {REJECT_MARKER} of a fox" if i in bad else "a small red fox"
        out.append(
            {"key": f"{prefix}{i:0{width}d}", "prompt": f"{words}, study {i}", "size": SMALL}
        )
    return out


def resource(emulator: EmulatorHandle, **fields: Any) -> ZImageResource:
    options: dict[str, Any] = {
        "request_timeout": CLIENT_TIMEOUT,
        "call_deadline": 90.0,
        "max_retries": 6,
        "wait_deadline": 120.0,
        "max_poll_interval": 0.5,
        "concurrency": 32,
        "max_resubmits": 3,
        **fields,
    }
    return ZImageResource(api_key=emulator.api_key, base_url=emulator.url, **options)


def _step_failures(result: dg.ExecuteInProcessResult) -> list[Any]:
    return [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]


def failed_partitions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """``partition -> "code: message"`` over the run's step failures (a retried step reports the
    partitions it could not do again: the first reason given for a partition is kept)."""
    out: dict[str, str] = {}
    for event in _step_failures(result):
        data = event.step_failure_data
        user = data.user_failure_data
        assert user is not None, f"the step failed without a Failure: {data.error}"
        value = user.metadata["failed_partitions"].value
        assert isinstance(value, dict)
        for key, reason in value.items():
            out.setdefault(str(key), str(reason))
    return out


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """The messages of every step failure of the run."""
    errors = [e.step_failure_data.error for e in _step_failures(result)]
    return "\n".join(error.message for error in errors if error is not None)


def run_messages(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every message of the run's event log (step failures with their errors included)."""
    texts = []
    for entry in instance.all_logs(run_id):
        texts.append(entry.user_message)
        event = entry.dagster_event
        data = event.event_specific_data if event is not None else None
        error = getattr(data, "error", None)
        if error is not None:
            texts.append(error.to_string())
    return "\n".join(texts)


def latest_materializations(
    instance: dg.DagsterInstance, key: str = ASSET
) -> dict[str, dict[str, Any]]:
    """``partition -> metadata values`` of each partition's latest materialization."""
    records: list[Any] = []
    cursor: str | None = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetKey(key), limit=1000, cursor=cursor, ascending=True
        )
        records.extend(page.records)
        if not page.has_more:
            break
        cursor = page.cursor
    out: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        mat = record.asset_materialization
        assert mat is not None
        out[str(mat.partition)] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return out


def step_retries(result: dg.ExecuteInProcessResult) -> int:
    return sum(e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


@dataclass
class UserFlow:
    """What the user did: run everything, then re-run the failed (not rejected) partitions."""

    runs: list[tuple[str, str, bool, float]] = field(default_factory=list)  # start, end, ok, s
    rounds: int = 0
    step_retries: int = 0
    failures_by_code: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # partition -> "code: message"
    rejected_failure_texts: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def rerun_ranges(
    failed: Sequence[str], rejected: set[str], order: Sequence[str]
) -> list[tuple[str, str]]:
    """The ranges a user back-fills to re-run ``failed``: split the partition order at the
    rejected partitions (re-running those would only fail them again), and in each piece run from
    its first failed partition to its last (stored partitions in between are reused, no task)."""
    want = set(failed)
    out: list[tuple[str, str]] = []
    piece: list[str] = []
    for key in [*order, None]:
        if key is None or key in rejected:
            hits = [k for k in piece if k in want]
            if hits:
                out.append((hits[0], hits[-1]))
            piece = []
        else:
            piece.append(key)
    return out


def run_until_done(
    asset: dg.AssetsDefinition,
    instance: dg.DagsterInstance,
    res: ZImageResource,
    keys: Sequence[str],
    *,
    max_rounds: int = 5,
) -> UserFlow:
    """Round 1: one run over every partition. Then, while partitions failed for reasons a re-run
    may fix, run them again (see :func:`rerun_ranges`), at most ``max_rounds`` rounds in all.
    Partitions rejected for a fixable reason (content policy) are left alone after round 1."""
    flow = UserFlow()
    started = time.monotonic()
    ranges = [(keys[0], keys[-1])]
    while ranges and flow.rounds < max_rounds:
        flow.rounds += 1
        failed_now: list[str] = []
        for start, end in ranges:
            began = time.monotonic()
            result = run_range(asset, instance, res, start, end)
            flow.runs.append((start, end, result.success, round(time.monotonic() - began, 1)))
            flow.step_retries += step_retries(result)
            for key, reason in failed_partitions(result).items():
                code = reason.split(":", 1)[0]
                flow.failures_by_code[code] = flow.failures_by_code.get(code, 0) + 1
                if code == "content_policy_violation":
                    assert key not in flow.rejected, f"{key} was run again after its rejection"
                    flow.rejected[key] = reason
                    flow.rejected_failure_texts.append(run_messages(instance, result.run_id))
                else:
                    failed_now.append(key)
        flow.remaining = [k for k in keys if k in set(failed_now)]
        ranges = rerun_ranges(flow.remaining, set(flow.rejected), keys)
    flow.elapsed_s = time.monotonic() - started
    return flow


@dataclass
class Accounting:
    tasks_created: int
    partitions_with_tasks: int
    resubmissions: int
    lost_answers: int
    lost_answer_faults: int
    orphans_by_partition: dict[str, int]


def account_for_every_task(
    emulator: EmulatorHandle,
    store: ImageStore,
    keys_by_prompt: Mapping[str, str],
    *,
    asset: str = ASSET,
    lost_answer_rules: Sequence[int] = (),
    expected_orphans: Sequence[str] | None = None,
) -> Accounting:
    """Every task the emulator created is a partition's current task, one of its ``previous``
    (resubmitted after a retryable failure, or expired), or a create whose answer was lost (the
    emulator made it but no one ever learned its ID): nothing else.

    ``lost_answer_rules``: indices of the ``http_faults`` rules that make a task and lose its
    answer; their firings must match the orphan tasks one for one. ``expected_orphans``: instead,
    the exact IDs of the tasks nobody can know of (created, then the process died before the
    ledger write).
    """
    stats = emulator.stats()
    tasks = emulator.tasks()
    by_id = {t["id"]: t for t in tasks}
    assert len(by_id) == len(tasks) == stats["tasks_created"]
    ledger = TaskLedger(store)
    known: dict[str, str] = {}
    resubmissions = 0
    partitions = 0
    for entry in ledger.iter_entries(asset):
        partitions += 1
        ids = [p.task_id for p in entry.previous] + [entry.task_id]
        for task_id in ids:
            assert task_id not in known, f"task {task_id} is in two ledger entries"
            assert task_id in by_id, f"ledger task {task_id} unknown to the provider"
            known[task_id] = entry.partition_key
            task = by_id[task_id]
            # Every task of a partition is the same request: same prompt, size and seed.
            assert keys_by_prompt[task["request"]["prompt"]] == entry.partition_key
            assert task["request"]["seed_sent"] == entry.seed
        for previous in entry.previous:
            resubmissions += 1
            assert previous.status in (LedgerStatus.FAILED, LedgerStatus.EXPIRED), previous
            if previous.status == LedgerStatus.FAILED:
                assert previous.error_code in RETRYABLE_TASK_ERROR_CODES, previous
                assert by_id[previous.task_id]["failure"]["code"] == previous.error_code
    # Every known task that failed for a retryable reason was resubmitted (it is a `previous`).
    failed_known = [
        tid
        for tid in known
        if by_id[tid]["failure"] and by_id[tid]["failure"]["code"] in RETRYABLE_TASK_ERROR_CODES
    ]
    failed_previous = [
        p.task_id
        for entry in ledger.iter_entries(asset)
        for p in entry.previous
        if p.status == LedgerStatus.FAILED
    ]
    assert sorted(failed_known) == sorted(failed_previous)
    orphans = [t for t in tasks if t["id"] not in known]
    orphans_by_partition: dict[str, int] = {}
    for task in orphans:
        key = keys_by_prompt[task["request"]["prompt"]]
        orphans_by_partition[key] = orphans_by_partition.get(key, 0) + 1
    fired = stats["fault_rules_fired"]
    lost_faults = sum(fired[i] for i in lost_answer_rules)
    if expected_orphans is not None:
        assert sorted(t["id"] for t in orphans) == sorted(expected_orphans)
    else:
        assert len(orphans) == lost_faults, (
            f"{len(orphans)} tasks nobody knows of, but {lost_faults} creates lost their answer"
        )
    assert stats["tasks_created"] == partitions + resubmissions + len(orphans)
    return Accounting(
        tasks_created=stats["tasks_created"],
        partitions_with_tasks=partitions,
        resubmissions=resubmissions,
        lost_answers=len(orphans),
        lost_answer_faults=lost_faults,
        orphans_by_partition=orphans_by_partition,
    )


def assert_delivered(
    instance: dg.DagsterInstance,
    store: ImageStore,
    keys: Sequence[str],
    *,
    asset: str = ASSET,
) -> dict[str, dict[str, Any]]:
    """Every partition in ``keys`` is stored (image + provenance, sha256 intact), collected in the
    ledger, and materialized with the same task and seed."""
    mats = latest_materializations(instance, asset)
    ledger = TaskLedger(store)
    for key in keys:
        found = store.find(asset, key)
        assert found is not None, f"{key}: no stored image"
        data = store.read_bytes_or_none(found.path)
        assert data is not None, key
        assert hashlib.sha256(data).hexdigest() == found.sha256, key
        entry = ledger.get(asset, key)
        assert entry is not None, key
        assert entry.status == LedgerStatus.COLLECTED, (key, entry)
        assert found.provenance["task_id"] == entry.task_id
        md = mats.get(key)
        assert md is not None, f"{key}: stored but not materialized"
        assert md["sha256"] == found.sha256
        assert md["seed"] == entry.seed
    return mats


def fault_summary(stats: Mapping[str, Any], rules: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    fired = stats["fault_rules_fired"]
    by_rule = {describe_rule(rule): n for rule, n in zip(rules, fired, strict=True)}
    total = stats["requests_total"]
    return {
        "requests": total,
        "faults": stats["faults_fired"],
        "fault_rate": round(stats["faults_fired"] / total, 3) if total else 0.0,
        "by_rule": by_rule,
        "by_route_status": stats["requests"],
    }


def write_dagster_home(home: Path, *, yaml: str | None = None) -> Path:
    """A DAGSTER_HOME folder: sqlite storage under it (the default) or the given dagster.yaml."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml or "telemetry:\n  enabled: false\n")
    return home


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def report(name: str, figures: Mapping[str, Any]) -> None:
    """Print the figures of a test (``pytest -s`` shows them) and keep them under
    ``$ZIMAGE_RELIABILITY_REPORT`` (a folder) when set."""
    text = json.dumps(figures, indent=1, sort_keys=True, default=str)
    print(f"\n[{name}] {text}")
    folder = os.environ.get("ZIMAGE_RELIABILITY_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(text)


def configure_fault_matrix(
    emulator: EmulatorHandle, *, random_seed: int = 8
) -> list[dict[str, Any]]:
    """Small fast tasks, 5% retryable task failures, the reject marker refused, ~20% HTTP faults."""
    rules = [rule for _, rule in HTTP_FAULTS]
    emulator.configure(
        latency_s=0.3,
        estimated_time=1,
        random_seed=random_seed,
        failure_rates=RETRYABLE_RATES,
        failure_rules=[{"pattern": REJECT_MARKER, "code": "content_policy_violation"}],
        http_faults=rules,
    )
    return rules


LOST_ANSWER_RULES = [i for i, (kind, _) in enumerate(HTTP_FAULTS) if kind == "lost_answer"]


def run_fault_matrix(
    emulator: EmulatorHandle,
    instance: dg.DagsterInstance,
    *,
    n: int,
    storage: str,
    storage_options: Mapping[str, Any] | None = None,
    name: str,
) -> dict[str, Any]:
    """The whole fault-matrix scenario (see ``test_fault_matrix``); returns its figures."""
    from zimage_dagster.assets import build_image_assets

    rows = dataset(n, rejected=max(1, round(0.02 * n)))
    keys = [r["key"] for r in rows]
    keys_by_prompt = {r["prompt"]: r["key"] for r in rows}
    rejected_keys = sorted(r["key"] for r in rows if REJECT_MARKER in r["prompt"])
    rules = configure_fault_matrix(emulator)
    defs = build_image_assets(
        ASSET,
        rows,
        storage=storage,
        storage_options=storage_options,
        retry_policy=dg.RetryPolicy(max_retries=1, delay=0.2),
    )
    asset = image_asset(defs)
    res = resource(emulator)

    flow = run_until_done(asset, instance, res, keys)

    # Nothing lost: every partition is delivered or rejected, and no run was needed beyond a few.
    assert flow.remaining == [], f"still failing after {flow.rounds} rounds: {flow.remaining}"
    assert sorted(flow.rejected) == rejected_keys
    tasks = emulator.tasks()
    provider_messages = {
        t["failure"]["message"] for t in tasks if REJECT_MARKER in t["request"]["prompt"]
    }
    assert len(provider_messages) == 1
    (provider_message,) = provider_messages
    for key, reason in flow.rejected.items():
        assert reason.startswith(f"content_policy_violation: {provider_message}"), (key, reason)
    texts = flow.rejected_failure_texts
    assert any(provider_message in text for text in texts), texts
    store = ImageStore(storage, storage_options)
    delivered = [k for k in keys if k not in set(rejected_keys)]
    assert_delivered(instance, store, delivered)
    ledger = TaskLedger(store)
    for key in rejected_keys:
        assert store.find(ASSET, key) is None
        entry = ledger.get(ASSET, key)
        assert entry is not None
        assert entry.status == LedgerStatus.FAILED
        assert entry.error_code == "content_policy_violation"
        assert entry.previous == ()

    # Never paid twice: every task is accounted for.
    acc = account_for_every_task(
        emulator, store, keys_by_prompt, lost_answer_rules=LOST_ANSWER_RULES
    )
    # A "slow" fault answers (and is counted) SLOW_S after the client gave up on it: let the
    # last such answers land before counting.
    time.sleep(SLOW_S + 0.5)
    stats = emulator.stats()

    # A last run over a stretch with stored and rejected partitions pays nothing, asks nothing.
    before = stats["requests_total"]
    last = max(keys.index(rejected_keys[0]), min(n, 40) - 1)
    again = run_range(asset, instance, res, keys[0], keys[last])
    after = emulator.stats()
    assert after["tasks_created"] == stats["tasks_created"]
    assert after["requests_total"] == before, (stats["requests"], after["requests"])
    assert sorted(failed_partitions(again)) == [k for k in rejected_keys if k <= keys[last]]
    assert all("rejected before" in r for r in failed_partitions(again).values())

    figures = {
        "prompts": n,
        "rejected": len(rejected_keys),
        "delivered": len(delivered),
        "rounds": flow.rounds,
        "run_seconds": [r[3] for r in flow.runs],
        "runs": len(flow.runs),
        "step_retries": flow.step_retries,
        "partition_failures_by_code": flow.failures_by_code,
        "tasks_created": acc.tasks_created,
        "partitions_with_tasks": acc.partitions_with_tasks,
        "resubmissions": acc.resubmissions,
        "lost_answer_creates": acc.lost_answers,
        "retryable_task_failures_seen": sum(
            1 for t in tasks if t["failure"] and t["failure"]["code"] in RETRYABLE_TASK_ERROR_CODES
        ),
        "peak_concurrent_tasks": stats["peak_concurrent_tasks"],
        "file_requests_with_authorization": stats["file_requests_with_authorization"],
        "elapsed_s": round(flow.elapsed_s, 1),
        **fault_summary(stats, rules),
    }
    assert stats["file_requests_with_authorization"] == 0
    report(name, figures)
    return figures


# -- crash and resume ----------------------------------------------------------------------------


def file_marks(store: ImageStore, keys: Sequence[str], asset: str = ASSET) -> dict[str, Any]:
    """``key -> (sha256, modification mark)`` of each stored image (image and provenance record
    written): mtime in ns locally, the object's ETag and LastModified on an object store. Equal
    marks: the file was not rewritten."""
    out: dict[str, Any] = {}
    for key in keys:
        found = store.find(asset, key)
        if found is None or found.sha256 is None:
            # No provenance record yet: the process died between writing the image and its
            # record, so the partition is not stored (a resumed run re-collects its task).
            continue
        data = store.read_bytes_or_none(found.path)
        assert data is not None
        if store.is_local:
            mark: Any = os.stat(found.path.path).st_mtime_ns
        else:
            info = found.path.fs.info(found.path.path)
            mark = (str(info.get("ETag")), str(info.get("LastModified")))
        out[key] = (hashlib.sha256(data).hexdigest(), mark)
    return out


@dataclass
class KillSnapshot:
    """What was true the moment the run's process died."""

    entries: dict[str, Any]  # partition -> LedgerEntry
    task_ids: set[str]
    window_orphans: list[str]  # tasks created, then the process died before the ledger write
    files: dict[str, Any]
    collected: int
    open: int


def snapshot(emulator: EmulatorHandle, store: ImageStore, keys: Sequence[str]) -> KillSnapshot:
    entries = {e.partition_key: e for e in TaskLedger(store).iter_entries(ASSET)}
    ids = {t["id"] for t in emulator.tasks()}
    known = {p.task_id for e in entries.values() for p in e.previous} | {
        e.task_id for e in entries.values()
    }
    return KillSnapshot(
        entries=entries,
        task_ids=ids,
        window_orphans=sorted(ids - known),
        files=file_marks(store, keys),
        collected=sum(e.status == LedgerStatus.COLLECTED for e in entries.values()),
        open=sum(e.is_open for e in entries.values()),
    )


def start_child(spec: Mapping[str, Any], home: Path) -> Any:
    import subprocess
    import sys

    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "yes"}
    repo = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._child_run", json.dumps(spec)],
        env=env,
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_when(proc: Any, condition: Callable[[], bool], timeout: float, what: str) -> None:
    import signal

    try:
        wait_for(lambda: condition() or proc.poll() is not None, timeout, what)
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def check_resumed(
    before: KillSnapshot,
    after_ids: set[str],
    after_entries: Mapping[str, Any],
    after_files: Mapping[str, Any],
    keys_by_prompt: Mapping[str, str],
    tasks_by_id: Mapping[str, Mapping[str, Any]],
) -> int:
    """What a resumed run may have done to the state ``before`` its start; returns its new tasks.

    * a partition stored before is untouched (same bytes, not rewritten) and got no task;
    * a partition with a live task before kept that task (no new one);
    * only partitions with no ledger entry before got a task, one each.
    """
    for key, mark in before.files.items():
        assert after_files.get(key) == mark, f"{key}: the stored image was rewritten"
    new = sorted(after_ids - before.task_ids)
    per_partition: dict[str, int] = {}
    for task_id in new:
        key = keys_by_prompt[tasks_by_id[task_id]["request"]["prompt"]]
        assert key not in before.entries, (
            f"{key} had task {before.entries[key].task_id} ({before.entries[key].status}) before "
            f"the resume, yet got a new task {task_id}"
        )
        per_partition[key] = per_partition.get(key, 0) + 1
    assert all(n == 1 for n in per_partition.values()), per_partition
    for key, entry in before.entries.items():
        now = after_entries.get(key)
        if now is not None:
            assert now.task_id == entry.task_id, (
                f"{key}: moved from {entry.task_id} to {now.task_id}"
            )
    return len(new)


def run_crash_scenario(
    emulator: EmulatorHandle,
    home: Path,
    *,
    n: int,
    storage: str,
    storage_options: Mapping[str, Any] | None = None,
    name: str,
    latency_range_s: tuple[float, float] = (0.4, 1.2),
) -> dict[str, Any]:
    """Kill the run's process (SIGKILL) twice, at about a third and two thirds of the way, then
    resume; see ``test_crash_resume``. Returns the figures.

    ``latency_range_s``: the tasks' latencies. The kill must find tasks in flight, so they must
    outlast the time the test takes to see the run far enough (a scan of the whole ledger, which
    on an object store is one request per entry)."""
    from zimage_dagster.assets import build_image_assets

    rows = dataset(n)
    keys = [r["key"] for r in rows]
    keys_by_prompt = {r["prompt"]: r["key"] for r in rows}
    emulator.configure(latency_range_s=list(latency_range_s), estimated_time=1, random_seed=3)
    store = ImageStore(storage, storage_options)
    ledger = TaskLedger(store)
    spec = {
        "rows": rows,
        "storage": storage,
        "storage_options": dict(storage_options or {}),
        "key": emulator.api_key,
        "url": emulator.url,
        "start": keys[0],
        "end": keys[-1],
        "resource": {"concurrency": 6, "max_poll_interval": 0.5},
    }
    started = time.monotonic()

    def collected() -> int:
        return sum(e.status == LedgerStatus.COLLECTED for e in ledger.iter_entries(ASSET))

    snaps: list[KillSnapshot] = []
    new_tasks: list[int] = []
    for share in (0.3, 0.65):
        proc = start_child(spec, home)
        floor = snaps[-1].collected if snaps else 0
        made = len(snaps[-1].task_ids) if snaps else 0

        def far_enough(share: float = share, floor: int = floor, made: int = made) -> bool:
            # Some images stored by this process, and tasks of its own in flight.
            return (
                collected() >= max(floor + 3, int(share * n))
                and emulator.stats()["tasks_created"] > made + 6
            )

        kill_when(
            proc,
            far_enough,
            timeout=120,
            what=f"{int(share * 100)}% of the images to be stored",
        )
        snap = snapshot(emulator, store, keys)
        assert snap.open > 0, "the kill found no task in flight: nothing to resume"
        if snaps:
            tasks_by_id = {t["id"]: t for t in emulator.tasks()}
            new_tasks.append(
                check_resumed(
                    snaps[-1], snap.task_ids, snap.entries, snap.files, keys_by_prompt, tasks_by_id
                )
            )
        snaps.append(snap)

    asset = image_asset(
        build_image_assets(
            ASSET, rows, storage=storage, storage_options=storage_options, retry_policy=None
        )
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        res = resource(emulator, concurrency=6)
        result = run_range(asset, instance, res, keys[0], keys[-1])
        assert result.success, failure_text(result)
        last = snaps[-1]
        entries = {e.partition_key: e for e in ledger.iter_entries(ASSET)}
        tasks = emulator.tasks()
        tasks_by_id = {t["id"]: t for t in tasks}
        new_tasks.append(
            check_resumed(
                last,
                {t["id"] for t in tasks},
                entries,
                file_marks(store, keys),
                keys_by_prompt,
                tasks_by_id,
            )
        )
        mats = assert_delivered(instance, store, keys)
        for key in keys:
            before = last.entries.get(key)
            md = mats[key]
            if before is None:
                assert md["reused"] is False
            else:
                assert md["reused"] is True, key  # stored before, or re-attached to its live task
                assert md["task_id"] == before.task_id
                assert md["attempts"] == 1
        # Each kill's snapshot sees the orphans of the kills before it too: count each once.
        orphans = sorted({o for s in snaps for o in s.window_orphans})
        acc = account_for_every_task(emulator, store, keys_by_prompt, expected_orphans=orphans)
        assert acc.tasks_created == n + len(orphans)
        assert acc.resubmissions == 0
        assert emulator.stats()["file_requests_with_authorization"] == 0
    figures = {
        "prompts": n,
        "kills": [
            {"collected": s.collected, "in_flight": s.open, "tasks": len(s.task_ids)} for s in snaps
        ],
        "new_tasks_per_resume": new_tasks,
        "orphans_from_kill_windows": len(orphans),
        "tasks_created": acc.tasks_created,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report(name, figures)
    return figures


def build_defs_asset(
    rows: Sequence[Mapping[str, Any]],
    storage: str,
    storage_options: Mapping[str, Any] | None = None,
    retry_policy: dg.RetryPolicy | None = None,
) -> dg.AssetsDefinition:
    from zimage_dagster.assets import build_image_assets

    return image_asset(
        build_image_assets(
            ASSET, rows, storage=storage, storage_options=storage_options, retry_policy=retry_policy
        )
    )
