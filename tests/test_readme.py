"""The README's own example, copied from the README text: it loads and materializes under the
`dagster` CLI exactly as the README says (`dagster asset materialize -f definitions.py`, no `-a`),
and running the command again creates no task."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.store import ImageStore

pytestmark = pytest.mark.heavy

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def readme_definitions() -> str:
    """The Quick start's `definitions.py` (the Python block that starts with that name)."""
    found = [b for b in _blocks("python") if b.startswith("# definitions.py")]
    assert len(found) == 1, "the README has one block starting with '# definitions.py'"
    return found[0]


def readme_materialize_command() -> list[str]:
    """The README's `dagster asset materialize -f definitions.py ...` line, as arguments."""
    for block in _blocks("bash"):
        for line in block.splitlines():
            if line.startswith("dagster asset materialize -f definitions.py"):
                return shlex.split(line.split("#", 1)[0])
    raise AssertionError("no 'dagster asset materialize -f definitions.py' line in the README")


def test_the_readme_example_materializes_under_the_dagster_cli(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    (tmp_path / "definitions.py").write_text(readme_definitions(), encoding="utf-8")
    command = readme_materialize_command()
    assert "-a" not in command
    assert "--attribute" not in command
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMAGE_", "DAGSTER_"))}
    env.update(
        ZIMAGE_BASE_URL=emulator.url,
        ZIMAGE_API_KEY=emulator.api_key,
        DAGSTER_HOME=str(tmp_path / "home"),
        DAGSTER_DISABLE_TELEMETRY="1",
    )
    (tmp_path / "home").mkdir()
    executable = str(Path(sys.executable).with_name("dagster"))

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [executable, *command[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    created = emulator.stats()["tasks_created"]
    stored = ImageStore(tmp_path / "zimage_output").partitions("hero_images")
    assert created == len(stored) == 3
    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert emulator.stats()["tasks_created"] == created  # the stored images were reused
