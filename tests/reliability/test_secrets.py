"""Secrets: the example flow (``build_image_assets`` over ``examples/prompts.csv``) runs against
the emulator with a canary API key the emulator accepts, on a Dagster instance in a temp
DAGSTER_HOME (sqlite storage, compute logs on), with errors forced (a wrong key -> 401, 500s,
502 on create, dropped file downloads). The canary (and the wrong key) must appear nowhere:
not in the sqlite files (grepped as bytes), the event log or run storage, compute logs, stored
images, provenance records, ledger files, exception texts and reprs, logs and captured output;
and no file request ever carried an Authorization header.
"""

from __future__ import annotations

import base64
import logging
import pickle
import secrets
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg
import pytest

from tests.reliability._support import image_asset, run_range, write_dagster_home
from zimage_dagster.api import GenerationRequest, ZImageClient, ZImageError
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator.server import EmulatorProcess
from zimage_dagster.prompts import load_prompts
from zimage_dagster.resource import ZImageResource

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "examples" / "prompts.csv"


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [
        raw,
        raw[len("sk-") :],  # the random part alone
        base64.b64encode(raw),
        base64.b64encode(b"Bearer " + raw),
        secret.encode("utf-16-le"),
    ]


def _scan_files(root: Path, needles: Iterable[bytes]) -> tuple[int, list[str]]:
    hits, count = [], 0
    for path in root.rglob("*"):
        if path.is_file():
            count += 1
            data = path.read_bytes()
            hits += [f"{path}: {n!r}" for n in needles if n in data]
    return count, hits


def _errors_seen(canary: str, wrong: str, emulator: EmulatorProcess) -> list[BaseException]:
    """Errors raised by the client with the canary key (and a wrong one) configured."""
    seen: list[BaseException] = []
    request = GenerationRequest(prompt="a fox", seed=1, size="376x376")
    with ZImageClient(api_key=wrong, base_url=emulator.url) as client:
        calls: list[Callable[[], object]] = [
            lambda: client.create_task(request),
            client.get_credits,
        ]
        for call in calls:
            with pytest.raises(ZImageError) as caught:
                call()
            seen.append(caught.value)
    emulator.configure(
        http_faults=[
            {"route": "credits", "action": "status", "status": 500},
            {"route": "create", "action": "drop"},
            {"route": "task", "action": "status", "status": 502},
        ]
    )
    with ZImageClient(api_key=canary, base_url=emulator.url, timeout=2.0) as client:
        calls = [
            client.get_credits,
            lambda: client.create_task(request),
            lambda: client.get_task("task-unified-1-abcdefgh"),
            lambda: client.download(f"{emulator.files_url}/_files/nothing.webp"),
        ]
        for call in calls:
            with pytest.raises(ZImageError) as caught:
                call()
            seen.append(caught.value)
        seen.append(RuntimeError(repr(client)))
    emulator.configure(http_faults=[])
    return seen


def test_the_canary_key_appears_nowhere(
    emulator_proc: EmulatorProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = f"sk-canary-{secrets.token_hex(16)}"
    wrong = f"sk-canary-wrong-{secrets.token_hex(16)}"
    needles = _forms(canary) + _forms(wrong)
    emulator_proc.configure(api_keys=[canary], latency_s=0.2, estimated_time=1)
    assert emulator_proc.api_key == canary
    monkeypatch.setenv("ZIMAGE_API_KEY", canary)
    home = write_dagster_home(
        tmp_path / "home",
        yaml=(
            "telemetry:\n  enabled: false\n"
            "compute_logs:\n"
            "  module: dagster._core.storage.local_compute_log_manager\n"
            "  class: LocalComputeLogManager\n"
            f"  config:\n    base_dir: {tmp_path / 'home' / 'compute_logs'}\n"
        ),
    )
    storage = tmp_path / "images"
    keys = load_prompts(PROMPTS).keys
    asset = image_asset(
        build_image_assets("catalogue_images", PROMPTS, storage=storage, retry_policy=None)
    )
    good = ZImageResource(
        api_key=dg.EnvVar("ZIMAGE_API_KEY"), base_url=emulator_proc.url, max_poll_interval=0.5
    )
    bad = ZImageResource(api_key=wrong, base_url=emulator_proc.url)
    errors = _errors_seen(canary, wrong, emulator_proc)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # 1. The example flow, with faults: some partitions fail with error texts in the log.
        emulator_proc.configure(
            http_faults=[
                {"route": "create", "action": "status", "status": 502, "count": 1},
                {"route": "task", "action": "status", "status": 500, "count": 3},
                {"route": "files", "action": "drop", "count": 2},
            ]
        )
        run_range(asset, instance, good, keys[0], keys[-1])
        # 2. A wrong key: every create answers 401, every partition fails.
        second = run_range(asset, instance, bad, keys[0], keys[-1])
        assert not second.success
        # 3. Again with the right key: everything is stored in the end.
        third = run_range(asset, instance, good, keys[0], keys[-1])
        assert third.success
        runs = instance.get_runs()
        texts = [dg.serialize_value(r) for r in runs]
        for run in runs:
            texts += [dg.serialize_value(e) for e in instance.all_logs(run.run_id)]
    assert {r.status for r in runs} >= {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS}
    assert len(runs) == 3
    assert any("401" in t or "unauthorized" in t for t in texts)  # the 401s were recorded
    for exc in errors:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        texts.append(repr(pickle.loads(pickle.dumps(exc))))
    texts += [repr(good), str(good), repr(bad), str(bad), repr(errors)]
    out, err = capfd.readouterr()
    texts += [out, err, caplog.text]
    blob = "\n".join(texts).encode("utf-8", "surrogatepass")
    assert [n for n in needles if n in blob] == []
    # The files: sqlite databases, compute logs, images, provenance records, the ledger.
    home_files, home_hits = _scan_files(home, needles)
    store_files, store_hits = _scan_files(storage, needles)
    assert home_hits + store_hits == []
    assert any(p.suffix == ".db" for p in home.rglob("*"))
    assert list((home / "compute_logs").rglob("*")), "no compute log was written"
    assert len(list(storage.rglob("*.webp"))) == len(keys)
    assert list((storage / "_ledger").rglob("*.json"))
    assert home_files > 3
    assert store_files > 2 * len(keys)
    assert emulator_proc.stats()["file_requests_with_authorization"] == 0
