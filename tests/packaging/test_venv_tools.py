"""Every venv the Makefile makes gets a setuptools with no known CVE (and the pip it needs).

``python -m venv`` on Python 3.11 seeds setuptools 65.5.0 (CVE-2024-6345, CVE-2025-47273). The
test asks ``make -n`` what the Makefile would run to make a fresh venv, runs exactly those
commands up to (not including) the project's own install, in a temporary folder, and reads the
versions the venv then holds.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUPTOOLS_FLOOR = (78, 1, 1)
PIP_FLOOR = (25, 1)


def _version(python: Path, package: str) -> tuple[int, ...]:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    text = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return tuple(int(p) for p in text.stdout.strip().split(".")[:3] if p.isdigit())


@pytest.mark.timeout(600)  # a venv and one pip install: a minute on a loaded 2-core machine
def test_the_makefile_venv_gets_setuptools_without_known_cves(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    stamp = f"{venv}/.installed-run"
    planned = subprocess.run(
        ["make", "-n", "-C", str(REPO), f"VENV={venv}", f"PYTHON={sys.executable}", stamp],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    commands = [line for line in planned if line.strip() and not line.startswith("make")]
    project = next(i for i, c in enumerate(commands) if " -e ." in c)
    before_project = commands[:project]
    assert any("venv" in c for c in before_project), commands
    for command in before_project:
        subprocess.run(shlex.split(command), cwd=REPO, check=True, capture_output=True)
    python = venv / "bin" / "python"
    assert _version(python, "setuptools") >= SETUPTOOLS_FLOOR
    assert _version(python, "pip") >= PIP_FLOOR
