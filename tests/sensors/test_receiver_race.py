"""The callback receiver cannot roll a collected entry back: while it re-reads a task from the
API (made slow here), a collect run stores the image and marks the entry collected; the
receiver's write then leaves it collected (before: it wrote ``completed`` and, a day later, the
sensor regenerated an image already stored)."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import httpx

from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.receiver import CallbackReceiver

from .test_receiver import create_raw, record


def test_a_callback_racing_a_collect_run_never_rolls_collected_back(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    token = secrets.token_urlsafe(32)
    ledger = TaskLedger(ImageStore(tmp_path / "out"))
    task_id = create_raw(emulator, "a lighthouse", 1, None)
    record(ledger, "light", task_id, "a lighthouse", 1)
    deadline = time.monotonic() + 30
    while emulator.tasks()[0]["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The receiver's re-read of the task takes 1.5 s.
    emulator.configure(
        http_faults=[{"route": "task", "action": "slow", "probability": 1.0, "delay_s": 1.5}]
    )
    answers: list[httpx.Response] = []
    with CallbackReceiver(
        tmp_path / "out", token, api_key=emulator.api_key, base_url=emulator.url
    ) as rx:

        def callback() -> None:
            with httpx.Client(trust_env=False, timeout=30) as client:
                answers.append(client.post(rx.callback_url, json={"id": task_id}))

        thread = threading.Thread(target=callback)
        thread.start()
        deadline = time.monotonic() + 10
        while emulator.stats()["faults_fired"] < 1:  # the receiver's re-read has arrived
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ledger.mark_collected("cards", "light", task_id)  # a collect run stored the image
        thread.join(30)
    entry = ledger.get("cards", "light")
    assert entry is not None
    assert entry.status == LedgerStatus.COLLECTED
    assert answers[0].status_code == 200
    assert answers[0].json() == {"recorded": False, "reason": "already collected"}
    assert sum(emulator.stats()["requests"]["task"].values()) == 1  # it did re-read the task
