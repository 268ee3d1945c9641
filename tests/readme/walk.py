"""The README's quick start, walked as a user would: its shell lines run by bash, as written, in
a temporary folder and a virtual environment holding the built wheel.

Three things differ from a user's terminal, each said here: the emulator's port (8765 in the
README) and the UI's port are free ports of the test; the long-running commands (the emulator,
``dg dev`` / ``dagster dev``) run in the background until the test has seen what it needs; and the
README's ``pip install zimage-dagster`` installs the wheel built from this tree.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks._common import stop_process_group
from tests.readme.blocks import blocks_of

README_EMULATOR_PORT = "8765"
MATERIALIZED = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class QuickStart:
    """The Install and Quick start sections, by what each block is for."""

    install: list[str]
    emulator: list[str]
    dg_road: list[str]
    definitions: str
    plain_road: list[str]

    @classmethod
    def from_readme(cls) -> QuickStart:
        (install,) = blocks_of("bash", "Install")
        quick = blocks_of("bash", "Quick start")
        (emulator,) = [b for b in quick if b.text.startswith("zimage-emulator")]
        (dg_road,) = [b for b in quick if b.text.startswith("create-dagster")]
        (plain,) = [b for b in quick if "dagster asset materialize" in b.text]
        (definitions,) = [
            b for b in blocks_of("python", "Quick start") if b.text.startswith("# definitions.py")
        ]
        return cls(
            install.lines(), emulator.lines(), dg_road.lines(), definitions.text, plain.lines()
        )


def _with_emulator_port(lines: list[str], port: int) -> list[str]:
    return [line.replace(README_EMULATOR_PORT, str(port)) for line in lines]


def install_line(lines: list[str], wheel: Path) -> str:
    """The README's one `pip install` line, with the wheel in place of `zimage-dagster`."""
    (line,) = [line for line in lines if line.startswith("pip install")]
    words = shlex.split(line, comments=True)
    assert "zimage-dagster" in words, line
    return shlex.join([str(wheel) if w == "zimage-dagster" else w for w in words])


@contextmanager
def readme_emulator(lines: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """The README's emulator command (on a free port); yields its URL."""
    (line,) = _with_emulator_port(lines, port := free_port())
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {line}"], stdout=subprocess.PIPE, stderr=out, text=True, env=env
        )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}", (url, log.read_text())
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_lines(lines: list[str], cwd: Path, env: dict[str, str], emulator_port: int) -> str:
    """Run shell lines that end (no server) in one bash; their output."""
    script = "set -euo pipefail\n" + "\n".join(_with_emulator_port(lines, emulator_port)) + "\n"
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def walk_to_ui(
    lines: list[str],
    cwd: Path,
    env: dict[str, str],
    emulator_port: int,
    asset: str,
    expected: int,
    log: Path,
) -> dict[str, int]:
    """Run ``lines`` in one bash, the last one (the UI: `dg dev` / `dagster dev`) in the
    foreground on a free port, until the UI's own GraphQL reports ``expected`` partitions of
    ``asset`` materialized; returns the partition stats it reported."""
    *steps, ui = _with_emulator_port(lines, emulator_port)
    assert re.match(r"^(dg|dagster) dev\b", ui), f"the block should end with the UI: {ui}"
    port = free_port()
    ui_command = shlex.join(
        [*shlex.split(ui, comments=True), "--host", "127.0.0.1", "--port", str(port)]
    )
    script = "set -euo pipefail\n" + "\n".join(steps) + f"\nexec {ui_command}\n"
    stats: dict[str, int] = {}
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the UI's own children go with it
        )
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{script}\n{log.read_text()[-4000:]}"
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/graphql",
                    json={"query": MATERIALIZED, "variables": {"path": [asset]}},
                    timeout=10,
                ).json()
                stats = answer["data"]["assetNodeOrError"]["partitionStats"] or {}
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                stats = {}
            if stats.get("numMaterialized") == expected:
                return stats
            time.sleep(1)
        raise AssertionError(
            f"the UI never showed {expected} partitions: {stats}\n{log.read_text()[-4000:]}"
        )
    finally:
        stop_process_group(process)  # a UI that already died must not hide why


def tasks_created(emulator_url: str) -> int:
    return int(httpx.get(f"{emulator_url}/_emulator/stats", timeout=10).json()["tasks_created"])


def session_lines(lines: list[str], command: str) -> list[str]:
    """The `cd` and `export` lines of ``lines``, then ``command`` again (a re-run)."""
    return [line for line in lines if line.startswith(("cd ", "export "))] + [
        next(line for line in lines if line.startswith(command))
    ]


def walk_plain_road(
    quick: QuickStart, workdir: Path, env: dict[str, str], emulator_url: str
) -> None:
    """The second road: the README's definitions.py, its exports, `dagster asset materialize`,
    `dagster dev` showing the 3 partitions; then the materialize again creates no task."""
    port = int(emulator_url.rsplit(":", 1)[1])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "definitions.py").write_text(quick.definitions, encoding="utf-8")
    before = tasks_created(emulator_url)
    stats = walk_to_ui(quick.plain_road, workdir, env, port, "hero_images", 3, workdir / "ui.log")
    assert stats["numPartitions"] == 3, stats
    assert tasks_created(emulator_url) == before + 3
    run_lines(session_lines(quick.plain_road, "dagster asset materialize"), workdir, env, port)
    assert tasks_created(emulator_url) == before + 3, "a re-run paid again for a stored image"
