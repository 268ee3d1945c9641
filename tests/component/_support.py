"""Helpers for the component tests: defs folders in a sandbox, and dg projects on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster.components.core import component_tree, component_tree_state
from dagster.components.testing import DefsFolderSandbox
from dagster_shared.yaml_utils import load_yaml_from_path

from zimage_dagster import ZImageComponent

TYPE = "zimage_dagster.ZImageComponent"
SMALL = "376x376"
VENV_BIN = Path(sys.executable).parent
DG = VENV_BIN / "dg"

PROMPTS_CSV = """\
key,prompt,size,seed
fox,"a red fox in the snow, picture book",,7
lighthouse,"a lighthouse at dusk, long exposure",,
poster,"an art deco jazz poster, navy and gold",376x512,42
"""


def write_component(
    sandbox: DefsFolderSandbox,
    attributes: Mapping[str, Any],
    *,
    name: str | None = None,
    prompts_csv: str | None = PROMPTS_CSV,
    requirements: list[str] | None = None,
) -> Path:
    """A component folder in the sandbox's defs folder: defs.yaml (+ prompts.csv beside it)."""
    body: dict[str, Any] = {"type": TYPE, "attributes": dict(attributes)}
    if requirements:
        body["requirements"] = {"env": requirements}
    path = sandbox.scaffold_component(
        component_cls=ZImageComponent, defs_path=name, defs_yaml_contents=body
    )
    if prompts_csv is not None:
        (path / "prompts.csv").write_text(prompts_csv, encoding="utf-8")
    else:
        (path / "prompts.csv").unlink(missing_ok=True)
    return path


@contextmanager
def loaded(
    sandbox: DefsFolderSandbox, path: Path
) -> Iterator[tuple[ZImageComponent, dg.Definitions]]:
    with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
        assert isinstance(component, ZImageComponent)
        yield component, defs


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause (Dagster wraps load errors in ComponentTreeException)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def error_text(exc: BaseException) -> str:
    """Every message of the exception chain, outermost first."""
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts.append(str(current))
        current = current.__cause__
    return "\n".join(parts)


# -- dg projects on disk (for the real CLI) -------------------------------------------------


def make_dg_project(root: Path, name: str = "imgproj") -> Path:
    """A minimal dg project: pyproject.toml with [tool.dg], src/<name>/definitions.py loading
    the defs folder, as `create-dagster project` would lay it out (offline)."""
    package = root / "src" / name
    (package / "defs").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "defs" / "__init__.py").write_text("", encoding="utf-8")
    (package / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg


            @dg.definitions
            def defs() -> dg.Definitions:
                return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """
        ),
        encoding="utf-8",
    )
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [project]
            name = "{name}"
            version = "0.1.0"
            requires-python = ">=3.10"

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "{name}"
            """
        ),
        encoding="utf-8",
    )
    return package / "defs"


def run_dg(
    cwd: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`dg <args>` from this virtualenv, in `cwd`, offline (no network is needed or used)."""
    full_env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "NO_COLOR": "1",
        "COLUMNS": "200",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DAGSTER_DG_UPDATE_CHECK_ENABLED": "0",  # no PyPI look-up: loopback only
        **(env or {}),
    }
    return subprocess.run(
        [str(DG), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def yaml_attributes(path: Path) -> dict[str, Any]:
    data = load_yaml_from_path(str(path))
    assert isinstance(data, dict)
    attributes = data["attributes"]
    assert isinstance(attributes, dict)
    return attributes


LOAD_ERRORS: tuple[type[BaseException], ...] = (
    component_tree.ComponentTreeException,
    component_tree_state.ComponentTreeException,
)


def load_error(sandbox: DefsFolderSandbox, path: Path) -> BaseException:
    """The error loading the component at `path` raises (Dagster wraps the cause)."""
    with pytest.raises(LOAD_ERRORS) as info, loaded(sandbox, path):
        pass
    return info.value


def build_all_error(sandbox: DefsFolderSandbox) -> BaseException:
    with pytest.raises(LOAD_ERRORS) as info, sandbox.build_all_defs():
        pass
    return info.value
