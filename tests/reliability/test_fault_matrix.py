"""The fault matrix: 200 prompts in one run of the image asset while about 20% of HTTP requests
fail (429 with Retry-After, 500, 502, 503, dropped and truncated connections, answers slower than
the client's timeout; on create, task and file routes), 5% of tasks fail with retryable provider
errors and 2% are refused by content policy.

The user's flow is modelled: run every partition in one run, then back-fill the failed ones
(not the rejected ones) until done, at most five rounds. Then every task the emulator made is
accounted for (tasks_created == partitions + resubmissions + creates whose answer was lost) and a
last run over everything pays nothing.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tests.reliability._support import run_fault_matrix
from zimage_dagster.emulator.server import EmulatorProcess


def test_fault_matrix_200_prompts_lose_nothing_and_pay_once(
    emulator_proc: EmulatorProcess, tmp_path: Path
) -> None:
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        figures = run_fault_matrix(
            emulator_proc,
            instance,
            n=200,
            storage=str(tmp_path / "images"),
            name="fault_matrix_local",
        )
    assert figures["delivered"] == 196
    assert figures["rejected"] == 4
    assert 0.12 <= figures["fault_rate"] <= 0.28
