"""Self-repair of the task ledger: an entry file that cannot be read (truncated, garbage, ``{}``,
binary) is moved aside to ``<storage key>.json.unreadable-<time>-<random>`` with a warning naming
both files, and the partition is rebuilt. When a task ID can be recovered (from the damaged bytes,
else from the task-ID index), the entry is re-made for that task (``recovered_from``: the aside
file's name), so the run re-attaches to it instead of paying again; otherwise the partition has no
entry and is generated again with its same seed. A recovered entry gets its request back from the
job that re-attaches to it (:func:`with_request`).

:class:`~zimage_dagster.engine.ledger.TaskLedger` calls :func:`repair_entry` when it reads such a
file; nothing else here writes.

>>> import tempfile
>>> from zimage_dagster.engine.ledger import TaskLedger
>>> ledger = TaskLedger(tempfile.mkdtemp())
>>> _ = ledger.path("hero", "fox").parent.mkdir(parents=True)
>>> _ = ledger.path("hero", "fox").write_bytes(b'{"task_id": "task-unified-1-abc", "seed"')
>>> entry = ledger.get("hero", "fox")  # doctest: +ELLIPSIS
>>> entry.task_id, entry.recovered_from.startswith("fox.json.unreadable-"), entry.fingerprint
('task-unified-1-abc', True, '')
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from upath import UPath

from zimage_dagster.engine.atomic import ConditionalFiles, PreconditionFailedError
from zimage_dagster.engine.ledger_entry import (
    REQUEST_FIELDS,
    LedgerEntry,
    LedgerStatus,
    encode_entry,
)
from zimage_dagster.engine.store import ImageStore

__all__ = ["TASK_ID_IN_JSON", "recover_task_id", "repair_entry", "with_request"]

log = logging.getLogger("zimage_dagster.engine.ledger")

#: A task ID as an entry writes it, found in damaged bytes.
TASK_ID_IN_JSON = re.compile(rb'"task_id"\s*:\s*"([A-Za-z0-9_.:-]{1,200})"')


def repair_entry(
    store: ImageStore,
    files: ConditionalFiles,
    *,
    index_folder: UPath,
    asset: tuple[str, ...],
    partition_key: str,
    path: UPath,
    data: bytes,
    version: str,
    error: Exception,
    clock: Callable[[], float],
) -> None:
    """Move the unreadable entry at ``path`` (``data`` at ``version``) aside and re-make it for
    its task if the ID is recoverable. Nothing is repaired when someone rewrote the entry
    meanwhile; either way the caller reads the entry again."""
    aside = store.aside_path(path)
    store.write_atomic(aside, data)
    try:
        files.delete(path, version)
    except PreconditionFailedError:
        store.delete_file(aside)  # someone rewrote it meanwhile: nothing to repair
        return
    task_id = recover_task_id(store, index_folder, asset, partition_key, data)
    log.warning(
        "unreadable ledger entry %s (%s: %s) moved aside to %s; %s",
        path,
        type(error).__name__,
        error,
        aside.name,
        f"re-attaching the partition to task {task_id}"
        if task_id
        else "no task ID recoverable: the partition will be generated again with its seed",
    )
    if task_id is None:
        return
    now = float(clock())
    entry = LedgerEntry(
        asset=asset,
        partition_key=partition_key,
        task_id=task_id,
        seed=0,
        fingerprint="",
        request={},
        status=LedgerStatus.SUBMITTED,
        submitted_at=now,
        updated_at=now,
        recovered_from=aside.name,
    )
    with contextlib.suppress(FileExistsError):
        files.create(path, encode_entry(entry))


def recover_task_id(
    store: ImageStore,
    index_folder: UPath,
    asset: tuple[str, ...],
    partition_key: str,
    data: bytes,
) -> str | None:
    """The task ID in damaged entry bytes, else the newest index file naming this partition."""
    found = TASK_ID_IN_JSON.search(data)
    if found:
        return found.group(1).decode()
    parts = list(asset)
    best: tuple[str, str] | None = None
    for key, raw in store.read_all(index_folder, ".json").items():
        try:
            ref = json.loads(raw)
            if ref["asset"] != parts or ref["partition_key"] != partition_key:
                continue
        except (ValueError, KeyError, TypeError):
            continue
        task_id = key.replace("\\", "/").rsplit("/", 1)[-1][: -len(".json")]
        order = task_id.split("-")[2] if task_id.count("-") >= 3 else task_id  # created at
        if best is None or order > best[0]:
            best = (order, task_id)
    return best[1] if best else None


def with_request(old: LedgerEntry, *, request: Mapping[str, Any], fingerprint: str) -> LedgerEntry:
    """A recovered entry (no fingerprint yet) with the request of the job that re-attaches to
    its task; any other entry as it is."""
    if old.fingerprint:
        return old
    kept = {k: request[k] for k in REQUEST_FIELDS if k in request}
    return replace(old, seed=int(kept["seed"]), fingerprint=fingerprint, request=kept)
