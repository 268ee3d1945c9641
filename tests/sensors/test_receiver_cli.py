"""``zimage-callback-receiver`` as a user meets it: every setting is checked before its URL is
printed (a missing ``ZIMAGE_API_KEY``, a busy port: one line on stderr, exit 2, no traceback),
and ``--help`` shows every default and an example. Real subprocesses."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

RECEIVER = [
    sys.executable,
    "-c",
    "from zimage_dagster.receiver import main; raise SystemExit(main())",
]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECEIVER, *args], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_")}
    return {**env, "COLUMNS": "200", **extra}


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # no URL printed
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_missing_api_key_is_one_line_before_any_url(tmp_path: Path) -> None:
    result = _run(
        "--port", "0", "--storage", str(tmp_path / "out"), "--token-file", str(tmp_path / "token"),
        env=_env(),
    )  # fmt: skip
    line = _one_line_error(result)
    assert line.startswith("zimage-callback-receiver: no API key")
    assert "ZIMAGE_API_KEY" in line


def test_a_busy_port_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = _run(
            "--port", str(port), "--storage", str(tmp_path / "out"),
            env=_env(ZIMAGE_API_KEY="sk-test", ZIMAGE_CALLBACK_TOKEN="t" * 32),
        )  # fmt: skip
    line = _one_line_error(result)
    assert f"127.0.0.1:{port}" in line
    assert "in use" in line


def test_help_shows_every_default_and_an_example() -> None:
    result = _run("--help", env=_env())
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("options:", 1)[1].split("example:", 1)[0]
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", section) if e.strip()]
    entries = [e for e in entries if not e.startswith("-h")]
    assert len(entries) == 6, entries
    for entry in entries:
        assert "(default: " in entry, entry
    assert "(default: None)" not in result.stdout
    assert "--storage s3://bucket/images --token-file" in result.stdout.split("example:", 1)[1]
