"""The emulator counts each fault rule's firings (``fault_rules_fired``): the fault matrix needs
them to tell a lost-answer create (the task exists) from one that made no task."""

from __future__ import annotations

import httpx

from zimage_dagster.emulator.server import EmulatorProcess

BODY = {"model": "z-image-turbo", "prompt": "a fox", "seed": 1, "size": "376x376"}


def test_fault_rules_fired_counts_each_rule_apart(emulator_proc: EmulatorProcess) -> None:
    emulator_proc.configure(
        http_faults=[
            {
                "route": "create",
                "action": "status",
                "status": 502,
                "after_create": True,
                "count": 2,
            },
            {"route": "create", "action": "status", "status": 502, "count": 1},
            {"route": "task", "action": "status", "status": 503, "count": 1},
        ]
    )
    headers = {"Authorization": f"Bearer {emulator_proc.api_key}"}
    with httpx.Client(base_url=emulator_proc.url, headers=headers, trust_env=False) as http:
        codes = [http.post("/v1/images/generations", json=BODY).status_code for _ in range(4)]
    stats = emulator_proc.stats()
    assert codes == [502, 502, 502, 200]
    assert stats["fault_rules_fired"] == [2, 1, 0]
    assert stats["tasks_created"] == 3  # two lost answers, one refusal, one success
    assert stats["faults_fired"] == 3
