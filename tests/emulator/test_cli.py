"""``zimage-emulator`` as a user meets it: ``--help``, a busy port, and stopping it.

Real subprocesses (``python -m zimage_dagster.emulator``, the console script's code): a port held
by a socket of this test, and a ``--tls`` emulator stopped by SIGTERM (what ``kill``, systemd and
``docker stop`` send) and by SIGINT (Ctrl-C): both exit 0 and remove the temporary folder that
holds the throwaway CA's certificate and private key.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from zimage_dagster.emulator.cli import parse_args

EMULATOR = [sys.executable, "-m", "zimage_dagster.emulator"]


def _help() -> str:
    result = subprocess.run(
        [*EMULATOR, "--help"], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_shows_every_default_and_an_example() -> None:
    text = _help()
    section = text.split("options:", 1)[1].split("example:", 1)[0]
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", section) if e.strip()]
    entries = [e for e in entries if not e.startswith("-h")]
    assert len(entries) == len(vars(parse_args([]))), entries
    for entry in entries:
        assert "(default: " in entry, entry
    assert "(default: None)" not in text
    assert "(default: 1.0)" in text  # --latency: EmulatorConfig's own default
    example = text.split("example:", 1)[1]
    assert "zimage-emulator --port 8000" in example
    assert "ZIMAGE_BASE_URL=http://127.0.0.1:8000" in example


def test_a_busy_port_is_one_line_naming_it_and_exit_2() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        for option in ("--port", "--files-port"):
            result = subprocess.run(
                [*EMULATOR, option, str(port)], capture_output=True, text=True, timeout=60,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert result.returncode == 2
            assert result.stdout == ""
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert f"127.0.0.1:{port}" in lines[0]
            assert "in use" in lines[0]
            assert option in lines[0]
            assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_tls_emulator_stopped_by_a_signal_exits_0_and_removes_its_ca_folder(signum: int) -> None:
    process = subprocess.Popen(
        [*EMULATOR, "--tls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url, _files, ca_path = (process.stdout.readline().strip() for _ in range(3))
        assert url.startswith("https://127.0.0.1:")
        folder = os.path.dirname(ca_path)
        assert os.path.isfile(os.path.join(folder, "key.pem"))
        _wait_until_it_answers(url, ca_path)  # stopped while serving, as a person stops it
        process.send_signal(signum)
        code = process.wait(20)
        _, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert not os.path.exists(folder), os.listdir(folder)


def _wait_until_it_answers(url: str, ca_path: str, timeout: float = 60.0) -> None:
    """The URLs are printed before uvicorn serves: wait for an answer (any status) over TLS."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url + "/v1/credits", verify=ca_path, timeout=5)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
