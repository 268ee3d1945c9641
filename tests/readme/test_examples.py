"""Every Python and YAML example of the README, as written.

- Python blocks are run (each in a fresh namespace, in a temporary folder holding a
  ``prompts.csv``, with ``ZIMAGE_BASE_URL`` / ``ZIMAGE_API_KEY`` pointing at the test emulator);
  a ``Definitions`` they make must load, and an unpartitioned asset they define is materialized
  (so an error in an asset's body, e.g. a missing import, fails here).
- YAML blocks: a component's ``defs.yaml`` goes through ``dg check defs`` in a project made by
  ``create-dagster project`` (with the sample ``prompts.csv`` of ``dg scaffold defs``); an
  instance's settings (``dagster.yaml``) load as a Dagster instance.
- Every block is one of those, or a shell block the quick-start walk runs
  (``test_quick_start.py``), or named below with the reason it is not run, or a ``text``
  drawing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tests.readme.blocks import Block, blocks_of, readme_blocks
from zimage_dagster import ZImageResource
from zimage_dagster.component_scaffold import SAMPLE_PROMPTS_CSV
from zimage_dagster.emulator import EmulatorServer

#: The sections whose shell blocks the quick-start walk runs.
WALKED = {"Install", "Quick start"}
#: Shell blocks not run, by section, and why.
NOT_RUN = {
    "The gallery": "a long-running server (its own tests start it: tests/gallery)",
    "The emulator": "a long-running server (tests/emulator starts it the same way)",
    "Working on this repository": "make targets (CI runs them)",
}

BIN = Path(sys.executable).parent


def _id(block: Block) -> str:
    return f"line{block.line}"


def test_every_block_is_run_or_said_not_to_be() -> None:
    for block in readme_blocks():
        if block.language in ("python", "yaml"):
            continue
        if block.language == "text":  # a drawing (the architecture's layers), not a command
            continue
        assert block.language == "bash", f"{block.where}: a block in {block.language!r}"
        assert block.section in WALKED or block.section in NOT_RUN, (
            f"{block.where}: a shell block that no test runs: walk it or say why not"
        )


@pytest.fixture
def readme_env(emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working folder with a prompts.csv, the emulator in the environment."""
    (tmp_path / "prompts.csv").write_text(SAMPLE_PROMPTS_CSV, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZIMAGE_BASE_URL", emulator.url)
    monkeypatch.setenv("ZIMAGE_API_KEY", emulator.api_key)
    monkeypatch.delenv("ZIMAGE_STORAGE_URL", raising=False)
    return tmp_path


@pytest.mark.parametrize("block", blocks_of("python"), ids=_id)
def test_python_block_runs(block: Block, readme_env: Path, emulator: EmulatorServer) -> None:
    namespace: dict[str, object] = {"__name__": "readme_example"}
    # dont_inherit: the example runs without this module's `from __future__ import annotations`.
    exec(compile(block.text, block.where, "exec", dont_inherit=True), namespace)
    for name, value in namespace.items():
        if isinstance(value, dg.Definitions):
            dg.Definitions.validate_loadable(value)
        elif isinstance(value, dg.AssetsDefinition) and value.partitions_def is None:
            result = dg.materialize(
                [value],
                resources={"zimage": ZImageResource(api_key=dg.EnvVar("ZIMAGE_API_KEY"))},
                raise_on_error=False,
            )
            failures = [e.event_specific_data for e in result.all_events if e.is_step_failure]
            assert result.success, f"{block.where}: asset {name} failed: {failures}"


def _component_blocks() -> list[Block]:
    return [b for b in blocks_of("yaml") if "type:" in b.text]


def _instance_blocks() -> list[Block]:
    return [b for b in blocks_of("yaml") if "type:" not in b.text]


def test_yaml_blocks_are_all_checked() -> None:
    assert _component_blocks(), "the README's component example is gone"
    assert len(_component_blocks()) + len(_instance_blocks()) == len(blocks_of("yaml"))


@pytest.fixture(scope="module")
def dg_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project as `create-dagster project` makes it."""
    root = tmp_path_factory.mktemp("dg")
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1", "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0"}
    made = subprocess.run(
        [str(BIN / "create-dagster"), "project", "readme-project", "--no-uv-sync"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return root / "readme-project"


@pytest.mark.slow
@pytest.mark.parametrize("block", _component_blocks(), ids=_id)
def test_component_yaml_passes_dg_check_defs(
    block: Block, dg_project: Path, tmp_path: Path
) -> None:
    folder = dg_project / "src" / "readme_project" / "defs" / f"readme_{block.line}"
    folder.mkdir(parents=True)
    try:
        (folder / "defs.yaml").write_text(block.text, encoding="utf-8")
        (folder / "prompts.csv").write_text(SAMPLE_PROMPTS_CSV, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMAGE_", "DAGSTER_"))}
        env.update(
            ZIMAGE_API_KEY="sk-evo-readme",
            DAGSTER_HOME=str(tmp_path),
            DAGSTER_DISABLE_TELEMETRY="1",
            DAGSTER_DG_UPDATE_CHECK_ENABLED="0",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            VIRTUAL_ENV=str(BIN.parent),
        )
        checked = subprocess.run(
            [str(BIN / "dg"), "check", "defs"],
            cwd=dg_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = checked.stdout + checked.stderr
        assert checked.returncode == 0, f"{block.where}: dg check defs failed:\n{output[-3000:]}"
        assert "All definitions loaded successfully" in output, output[-3000:]
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("block", _instance_blocks(), ids=_id)
def test_instance_yaml_loads(block: Block, tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(block.text, encoding="utf-8")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:  # validates the settings
        if "run_monitoring:" in block.text:
            assert instance.run_monitoring_enabled, block.where
