"""The ledger's file format, byte for byte (``ledger_version`` 3), and its workflow fields listed
once: ``record_submitted`` and ``update`` take each of them, and each is a field of the entry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from zimage_dagster.engine.ledger import WORKFLOW_FIELDS, LedgerEntry, TaskLedger
from zimage_dagster.engine.ledger_entry import WorkflowFields

TASK = "task-unified-1796000000-abcdefgh"


def _ledger(tmp_path: Path) -> TaskLedger:
    ticks = iter(range(1000, 2000))
    return TaskLedger(str(tmp_path), clock=lambda: float(next(ticks)))


def test_an_entry_file_is_written_as_before(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.record_submitted(
        ("cat", "hero"),
        "2026-01-01|fox",
        task_id=TASK,
        request={"prompt": "a fox", "size": "1:1", "seed": 42, "callback_url": "http://x/?t=s"},
        run_id="r1",
        extra={"note": 1, "collect_runs": "2"},
        credits_reserved=1.5,
        deferred=True,
        resubmits=1,
    )
    ledger.update(("cat", "hero"), "2026-01-01|fox", TASK, "completed", completed_at=5.0)
    raw = ledger.path(("cat", "hero"), "2026-01-01|fox").read_bytes()
    # Written by the ledger before the entry's format moved to engine/ledger_entry.py.
    assert raw == (
        b'{"asset":["cat","hero"],"attempt":1,"collect_batch":null,"collect_requested_at":null,'
        b'"collect_runs":2,"completed_at":5.0,"credits_reserved":1.5,"deferred":true,'
        b'"error_code":null,"error_message":null,"extra":{"note":1},"fingerprint":"1481fc74fc3f76fe",'
        b'"handled_at":null,"ledger_version":3,"partition_key":"2026-01-01|fox","previous":[],'
        b'"recovered_from":null,"regenerated":false,"request":{"prompt":"a fox","seed":42,'
        b'"size":"1:1"},"resubmits":1,"run_id":"r1","seed":42,"status":"completed",'
        b'"submitted_at":1000.0,"task_id":"task-unified-1796000000-abcdefgh","updated_at":1001.0,'
        b'"via":null}'
    )
    assert LedgerEntry.from_json(json.loads(raw)).to_json() == json.loads(raw)


def test_the_workflow_fields_are_listed_once(tmp_path: Path) -> None:
    entry_fields = {f.name for f in dataclasses.fields(LedgerEntry)}
    assert set(WORKFLOW_FIELDS) == set(WorkflowFields.__annotations__)
    assert set(WORKFLOW_FIELDS) <= entry_fields
    values: WorkflowFields = {
        "deferred": True,
        "resubmits": 2,
        "regenerated": True,
        "recovered_from": "p.json.unreadable-x",
        "completed_at": 5.0,
        "via": "callback",
        "collect_batch": "b1",
        "collect_requested_at": 6.0,
        "collect_runs": 3,
        "handled_at": 7.0,
    }
    assert set(values) == set(WORKFLOW_FIELDS)
    ledger = _ledger(tmp_path)
    submitted = ledger.record_submitted(
        "imgs", "a", task_id=TASK, request={"prompt": "p", "seed": 1}, **values
    )
    assert {name: getattr(submitted, name) for name in values} == dict(values)
    ledger.record_submitted("imgs", "b", task_id=TASK, request={"prompt": "p", "seed": 1})
    updated = ledger.update("imgs", "b", TASK, "completed", **values)
    assert {name: getattr(updated, name) for name in values} == dict(values)
