"""The handles and the console script: URL first, control calls, clean stops."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.emulator._support import VALID, SpecClient
from zimage_dagster.emulator import EmulatorConfig, EmulatorError, EmulatorProcess, EmulatorServer

SCRIPT = Path(sys.executable).parent / "zimage-emulator"


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"console script not installed at {SCRIPT}")
def test_cli_prints_its_url_first_and_serves_it() -> None:
    command = [str(SCRIPT), "--host", "127.0.0.1", "--port", "0", "--latency", "0.05", "--api-key", "sk-cli-key",
               "--image-format", "png", "--config", '{"concurrency_cap": 3}']  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert not url.endswith(":0")
        with SpecClient(url, "sk-cli-key") as api:
            assert api.get("/v1/credits").status_code == 200
        with SpecClient(url, "sk-other") as api:
            assert api.get("/v1/credits").status_code == 401
        config = httpx.get(f"{url}/_emulator/config", trust_env=False).json()
        assert (config["latency_s"], config["image_format"], config["concurrency_cap"]) == (
            0.05,
            "png",
            3,
        )
    finally:
        process.terminate()
        # SIGTERM stops it like Ctrl-C: a graceful shutdown, exit 0 (see test_cli.py)
        assert process.wait(10) == 0
        if process.stdout is not None:
            process.stdout.close()


def test_cli_refuses_bad_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zimage_dagster.emulator", "--config", '{"latency_s": -2}'],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    assert "latency_s" in result.stderr
    assert result.stdout == ""


def test_emulator_server_stops_cleanly() -> None:
    threads_before = set(threading.enumerate())
    with EmulatorServer(EmulatorConfig(latency_s=60, allow_loopback_callbacks=True)) as emu:
        url = emu.url
        assert _port_open(url)
        with SpecClient(url, emu.api_key) as api:
            # a pending callback and a pending render must not hold the shutdown
            api.post(
                "/v1/images/generations", json={**VALID, "callback_url": "http://127.0.0.1:9/cb"}
            )
            assert emu.stats()["tasks_created"] == 1
        with EmulatorServer() as other:  # two at once, each on its own port
            assert other.url != url
    assert not _port_open(url)
    leftover = {t for t in set(threading.enumerate()) - threads_before if t.is_alive()}
    assert leftover == set(), leftover
    with pytest.raises(EmulatorError):
        EmulatorServer().start().start()


def test_emulator_process_has_the_same_handle_api() -> None:
    with EmulatorProcess(EmulatorConfig(latency_s=30, api_keys=["sk-proc"])) as emu:
        assert emu.api_key == "sk-proc"
        with SpecClient(emu.url, emu.api_key) as api:
            task_id = api.post("/v1/images/generations", json=VALID).json()["id"]
            assert api.get(f"/v1/tasks/{task_id}").json()["status"] == "pending"
            emu.advance_clock(31)
            assert api.get(f"/v1/tasks/{task_id}").json()["status"] == "completed"
        assert emu.configure(image_format="jpeg")["image_format"] == "jpeg"
        assert [t["id"] for t in emu.tasks()] == [task_id]
        assert emu.stats()["tasks_created"] == 1
        emu.reset()
        assert emu.tasks() == []
        assert emu.config()["image_format"] == "webp"
        pid = emu.pid
        assert pid is not None
    assert emu.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
