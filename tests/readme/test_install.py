"""`make demo` / `make install` put `dg` in the repository's .venv (the README's first road)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.readme.blocks import REPO


def test_the_demo_group_brings_dg() -> None:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    demo = re.search(r"^demo = \[(.*?)\]$", text, re.MULTILINE | re.DOTALL)
    assert demo is not None, "no `demo` dependency group"
    assert '"dagster-dg-cli' in demo.group(1)
    assert '"dagster-webserver' in demo.group(1)


def test_dg_is_in_the_venv_the_tests_run_in() -> None:
    assert (Path(sys.executable).parent / "dg").exists()
