"""The callback receiver with the emulator's real callbacks over loopback."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from zimage_dagster.assets import build_image_definitions
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.collect import batch_digest
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.receiver import (
    MAX_BODY_BYTES,
    CallbackReceiver,
    create_receiver_app,
    load_or_create_token,
)
from zimage_dagster.sensors import build_task_status_sensor

from ._support import ROWS, make_resource, make_spec, tick, wait_for

TOKEN = secrets.token_urlsafe(32)


@pytest.fixture
def receiver(tmp_path: Path, emulator: EmulatorServer) -> Iterator[CallbackReceiver]:
    emulator.configure(allow_loopback_callbacks=True)
    with CallbackReceiver(
        tmp_path / "out", TOKEN, api_key=emulator.api_key, base_url=emulator.url
    ) as rx:
        yield rx


def create_raw(emulator: EmulatorServer, prompt: str, seed: int, callback_url: str | None) -> str:
    """A task made with raw HTTP: the client refuses loopback callback URLs, as it should."""
    body: dict[str, object] = {"model": "z-image-turbo", "prompt": prompt, "seed": seed}
    if callback_url:
        body["callback_url"] = callback_url
    response = httpx.post(
        f"{emulator.url}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def record(ledger: TaskLedger, key: str, task_id: str, prompt: str, seed: int) -> None:
    ledger.record_submitted(
        "cards",
        key,
        task_id=task_id,
        request={"prompt": prompt, "seed": seed},
        extra={"deferred": True, "partition_key": key},
    )


def test_callbacks_update_the_ledger_and_spare_the_polls(
    tmp_path: Path, emulator: EmulatorServer, receiver: CallbackReceiver
) -> None:
    ledger = TaskLedger(ImageStore(tmp_path / "out"))
    good = create_raw(emulator, "a lighthouse", 1, receiver.callback_url)
    record(ledger, "light", good, "a lighthouse", 1)
    bad = create_raw(emulator, "a forbidden scene", 2, receiver.callback_url)
    record(ledger, "bad", bad, "a forbidden scene", 2)

    def settled() -> bool:
        a, b = ledger.get("cards", "light"), ledger.get("cards", "bad")
        return bool(a and b and a.status == "completed" and b.status == "failed")

    wait_for(settled, timeout=60, what="callbacks recorded in the ledger")
    light = ledger.get("cards", "light")
    assert light is not None
    assert light.via == "callback"
    assert (light.completed_at or 0) > 0
    failed = ledger.get("cards", "bad")
    assert failed is not None
    assert failed.error_code == "content_policy_violation"
    # The emulator counts a delivery once it has read the answer, after the ledger was written.
    wait_for(lambda: emulator.stats()["callbacks_delivered"] == 2, what="both deliveries counted")

    # The sensor acts on them without polling the provider.
    spec = make_spec(tmp_path / "out")
    polls = emulator.stats()["requests"].get("task", {})
    with dg.instance_for_test() as instance:
        result = tick(
            build_task_status_sensor(spec, "cards_job"), instance, make_resource(emulator)
        )
    [request] = result.run_requests
    assert request.partition_key == "light"
    assert request.run_key == f"collect:{batch_digest([(good, 0)])}"
    [event] = result.asset_events
    assert event.partition == "bad"
    assert event.metadata["error_code"].value == "content_policy_violation"
    # the receiver re-read each task once; the sensor read none
    assert emulator.stats()["requests"].get("task", {}) == polls


def test_wrong_token_and_other_paths_are_404(receiver: CallbackReceiver) -> None:
    with httpx.Client(base_url=receiver.url, trust_env=False) as client:
        assert client.post("/callbacks/" + "x" * 43, json={"id": "t"}).status_code == 404
        assert client.post("/callbacks/" + TOKEN[:-1], json={"id": "t"}).status_code == 404
        assert client.post("/callbacks", json={}).status_code == 404
        assert client.get("/").status_code == 404
        assert client.get(f"/callbacks/{TOKEN}").status_code == 404  # POST only, and say nothing
        assert client.get("/healthz").text == "ok"


def test_forged_bodies_record_nothing(
    tmp_path: Path, emulator: EmulatorServer, receiver: CallbackReceiver
) -> None:
    ledger = TaskLedger(ImageStore(tmp_path / "out"))
    emulator.configure(latency_s=60)
    pending = create_raw(emulator, "a slow painting", 3, None)
    record(ledger, "slow", pending, "a slow painting", 3)
    ghost = "task-unified-1700000000-abcdefgh"  # well formed, in the ledger, unknown to the API
    record(ledger, "ghost", ghost, "a ghost", 4)
    with httpx.Client(base_url=receiver.url, trust_env=False) as client:
        url = f"/callbacks/{TOKEN}"
        # The body claims completion; the API says pending: nothing is recorded.
        forged = {"id": pending, "status": "completed", "results": ["https://evil.example/x.png"]}
        answer = client.post(url, json=forged)
        assert answer.status_code == 202
        assert answer.json()["recorded"] is False
        answer = client.post(url, json={"id": ghost, "status": "completed"})
        assert answer.status_code == 200
        assert answer.json()["recorded"] is False
        unknown = client.post(url, json={"id": "task-unified-1-zzzzzzzz", "status": "completed"})
        assert unknown.json() == {"recorded": False, "reason": "unknown task"}
        assert client.post(url, json={"id": "../../etc/passwd"}).status_code == 400
        assert client.post(url, content=b"not json").status_code == 400
        assert client.post(url, content=b"x" * 70_000).status_code == 413
    assert ledger.get("cards", "slow").status == LedgerStatus.SUBMITTED  # type: ignore[union-attr]
    assert ledger.get("cards", "ghost").status == LedgerStatus.SUBMITTED  # type: ignore[union-attr]


def test_token_rules_and_token_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        create_receiver_app(tmp_path, "short")
    path = tmp_path / "token"
    token = load_or_create_token(path)
    assert len(token) >= 32
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_token(path) == token


def test_console_script_prints_its_url_first(tmp_path: Path, emulator: EmulatorServer) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from zimage_dagster.receiver import main; main()",
            "--port",
            "0",
            "--storage",
            str(tmp_path / "out"),
            "--token-file",
            str(tmp_path / "token"),
            "--base-url",
            emulator.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"ZIMAGE_API_KEY": emulator.api_key, "PATH": "/usr/bin:/bin"},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        token = (tmp_path / "token").read_text().strip()
        answer = wait_for(
            lambda: _try(f"{url}/callbacks/{token}"), timeout=20, what="receiver answering"
        )
        assert answer.json() == {"recorded": False, "reason": "unknown task"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def _try(url: str) -> httpx.Response | None:
    try:
        return httpx.post(url, json={"id": "task-unified-1-aaaaaaaa"}, trust_env=False)
    except httpx.HTTPError:
        return None


# -- hardening: real HTTP on loopback, raw sockets where a client library would hide the point --


@pytest.fixture
def strict(tmp_path: Path, emulator: EmulatorServer) -> Iterator[CallbackReceiver]:
    """A receiver with short read timeouts, so that a slow client is cut off quickly."""
    with CallbackReceiver(
        tmp_path / "out",
        TOKEN,
        api_key=emulator.api_key,
        base_url=emulator.url,
        header_timeout_s=0.5,
        body_timeout_s=0.5,
    ) as rx:
        yield rx


def _connect(rx: CallbackReceiver) -> socket.socket:
    host, port = rx.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _head(content: str) -> bytes:
    return (
        f"POST /callbacks/{TOKEN} HTTP/1.1\r\nHost: hooks.example.com\r\n"
        f"Content-Type: application/json\r\n{content}\r\n"
    ).encode()


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    strict: CallbackReceiver,
) -> None:
    with _connect(strict) as sock:
        sock.sendall(_head(f"Content-Length: {10 * MAX_BODY_BYTES}\r\n"))  # no body byte sent
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413")


def test_a_chunked_body_is_cut_off_once_past_the_limit(strict: CallbackReceiver) -> None:
    chunk = b"x" * 16384
    sent = 0
    with _connect(strict) as sock:
        sock.sendall(_head("Transfer-Encoding: chunked\r\n"))
        # Send just past the limit, then stop: the answer comes without the rest of the body.
        while sent <= MAX_BODY_BYTES:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert sent < 2 * MAX_BODY_BYTES


def test_a_body_over_the_limit_without_content_length_is_refused(
    strict: CallbackReceiver,
) -> None:
    def body() -> Iterator[bytes]:  # a generator: httpx sends it chunked, no Content-Length
        yield b"[" * 40_000
        yield b"]" * 40_000

    with httpx.Client(base_url=strict.url, trust_env=False) as client:
        answer = client.post(f"/callbacks/{TOKEN}", content=body())
    assert answer.status_code == 413


def test_slow_headers_are_cut_off(strict: CallbackReceiver) -> None:
    with _connect(strict) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /callbacks/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: a\r\n")
        answer = _answer(sock)  # ... and never the rest of the headers
        elapsed = time.monotonic() - started
    assert answer == b""  # closed without an answer
    assert 0.4 < elapsed < 5.0, elapsed


def test_a_slow_body_is_cut_off(strict: CallbackReceiver) -> None:
    with _connect(strict) as sock:
        started = time.monotonic()
        sock.sendall(_head("Content-Length: 100\r\n") + b'{"id": "task-')  # then nothing
        answer = _answer(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert 0.4 < elapsed < 5.0, elapsed


def test_deeply_nested_json_is_a_400_not_a_500(strict: CallbackReceiver) -> None:
    depth = 30_000  # 60 KB: under the body limit, far over Python's recursion limit
    with httpx.Client(base_url=strict.url, trust_env=False) as client:
        answer = client.post(f"/callbacks/{TOKEN}", content=b"[" * depth + b"]" * depth)
        assert answer.status_code == 400
        nested = b'{"id": ' + b'{"a":' * 8_000 + b"1" + b"}" * 8_000 + b"}"  # 48 KB
        assert client.post(f"/callbacks/{TOKEN}", content=nested).status_code == 400
        # ... and the receiver still answers.
        assert client.get("/healthz").text == "ok"


def test_a_refused_callback_url_is_named_without_its_token(
    tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = secrets.token_urlsafe(32)
    monkeypatch.setenv("ZIMAGE_CALLBACK_URL", f"http://hooks.example.com/callbacks/{secret}")
    spec = make_spec(tmp_path, ROWS[:1], mode="deferred")
    resource = make_resource(emulator)
    defs = dg.Definitions.merge(
        build_image_definitions(spec), dg.Definitions(resources={"zimage": resource})
    )
    with dg.instance_for_test() as instance:
        run = defs.resolve_job_def("cards_job").execute_in_process(
            instance=instance, partition_key="fox", raise_on_error=False
        )
        logs = instance.all_logs(run.run_id)
        text = "\n".join(
            f"{entry.user_message} {entry.dagster_event.event_specific_data!r}"
            if entry.dagster_event
            else entry.user_message
            for entry in logs
        )
    assert not run.success
    assert "callback_url: must use https" in text
    assert "http://hooks.example.com/..." in text  # the problem and where, ...
    assert secret not in text  # ... never the token
    assert emulator.stats()["tasks_created"] == 0
