"""The package as a user gets it: the built wheel in a fresh venv, without the dev group.

`make test` walks the README's quick start against the wheel and the Dagster `pip install` picks
(tests/readme/test_quick_start.py). `make compat` (marker `compat`) runs its plain-Python road on
the oldest supported Dagster and the newest one that installs with `dg`, plus `dg check defs` on a
project using the component.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.readme.walk import QuickStart, readme_emulator, walk_plain_road

REPO = Path(__file__).resolve().parents[2]
#: What every fresh venv is upgraded to first (the same file as the Makefile's venv rule).
VENV_TOOLS = REPO / "requirements" / "venv-tools.txt"
README = REPO / "README.md"
README_PORT = "8765"
# The oldest Dagster the plugin supports (pyproject's floor; `make compat` proves it).
DAGSTER_FLOOR = "1.10.19"

pytestmark = pytest.mark.slow


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, (
        f"{shlex.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("zimage_dagster-*.whl")
    return wheel


def test_license_ships_in_the_sdist_and_the_wheel(dist: Path) -> None:
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text
    (sdist,) = dist.glob("zimage_dagster-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        (name,) = [n for n in names if n.endswith("/LICENSE")]
        member = archive.extractfile(name)
        assert member is not None
        assert member.read().decode() == license_text
    with zipfile.ZipFile(_wheel(dist)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(name).decode() == license_text
        metadata = archive.read(name.replace("licenses/LICENSE", "METADATA")).decode()
    assert "License-Expression: Apache-2.0" in metadata
    # Development tools stay in a dependency group: nothing of them is published.
    assert "Provides-Extra: dev" not in metadata
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}" in metadata
    assert f"Requires-Dist: dagster<1.15,>={DAGSTER_FLOOR}" in metadata
    # The long description reads well on a package index: no image linked relative to the repo.
    assert "pip install zimage-dagster" in metadata
    assert "](docs/" not in metadata
    assert "Screenshot (`docs/ui-asset-page.png` in the source repository)" in metadata
    # What a pip user has: links to open, and no `make` target nor `examples/` file to look for.
    assert "Project-URL: Z-Image-Turbo API, https://api.evolink.ai" in metadata
    assert "Project-URL: Dagster documentation, https://docs.dagster.io" in metadata
    description = metadata.split("\n\n", 1)[1]
    assert "`make" not in description
    assert "make demo" not in description
    assert "examples/" not in description
    assert "source-only" not in description


class Venv:
    """A fresh virtual environment holding the wheel and what pip resolves for it."""

    def __init__(self, root: Path, *requirements: str) -> None:
        """A venv at ``root`` holding ``requirements`` (none: an empty one)."""
        self.root = root
        _run([sys.executable, "-m", "venv", str(root)])
        _run([str(self.bin / "python"), "-m", "pip", "install", "--quiet", "--upgrade",
              "-r", str(VENV_TOOLS)])  # fmt: skip
        if requirements:
            _run([str(self.bin / "python"), "-m", "pip", "install", "--quiet", *requirements])

    @classmethod
    def existing(cls, root: Path) -> Venv:
        """The venv made earlier at ``root`` (by another test of the run)."""
        venv = cls.__new__(cls)
        venv.root = root
        return venv

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMAGE_", "DAGSTER_"))}
        env.pop("PYTHONPATH", None)
        env.update(PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(self.root))
        # create-dagster and dg ask PyPI for a newer release: a test talks to loopback only.
        env.update(DAGSTER_DG_UPDATE_CHECK_ENABLED="0")
        env.update(extra)
        return env

    def installed(self, package: str) -> str:
        code = f"import importlib.metadata as m; print(m.version({package!r}))"
        return _run([str(self.bin / "python"), "-c", code]).stdout.strip()


def run_quick_start(venv: Venv, workdir: Path) -> None:
    """Import, then the README's emulator and plain-Python road (tests/readme/walk.py): its
    `definitions.py` materializing 3 partitions in one run, `dagster dev` showing them, a re-run
    creating no task."""
    python = str(venv.bin / "python")
    code = "import zimage_dagster, zimage_dagster.api, zimage_dagster.emulator; print(zimage_dagster.__version__)"
    assert _run([python, "-c", code]).stdout.strip()
    quick = QuickStart.from_readme()
    env = venv.env(DAGSTER_DISABLE_TELEMETRY="1")
    workdir.mkdir(parents=True, exist_ok=True)
    with readme_emulator(quick.emulator, env, workdir / "emulator.log") as url:
        walk_plain_road(quick, workdir / "plain-road", env, url)


COMPONENT_PROJECT = {
    "pyproject.toml": """\
[project]
name = "compat_project"
version = "0.0.0"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "compat_project"
""",
    "compat_project/__init__.py": "",
    "compat_project/definitions.py": """\
import dagster as dg

import compat_project.defs

defs = dg.components.load_defs(defs_root=compat_project.defs)
""",
    "compat_project/defs/__init__.py": "",
    "compat_project/defs/images/defs.yaml": """\
type: zimage_dagster.ZImageComponent
attributes:
  asset_name: compat_images
  prompts: prompts.csv
  partitioning: static
  resource:
    concurrency: 4
""",
    "compat_project/defs/images/prompts.csv": "key,prompt\nfox,a red fox\ntea,a cup of tea\n",
}


def check_component(venv: Venv, root: Path) -> None:
    """`dg list components` shows the component and `dg check defs` loads a project using it."""
    for name, text in COMPONENT_PROJECT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    env = venv.env(PYTHONPATH=str(root), DAGSTER_HOME=str(root / "dagster_home"))
    (root / "dagster_home").mkdir()
    listed = _run([str(venv.bin / "dg"), "list", "components"], cwd=root, env=env)
    assert "zimage_dagster.ZImageComponent" in listed.stdout
    checked = _run([str(venv.bin / "dg"), "check", "defs"], cwd=root, env=env)
    assert "loaded successfully" in checked.stdout + checked.stderr


def newest_release(package: str) -> str:
    """The newest release of ``package`` on the configured index (``pip index versions``)."""
    out = _run([sys.executable, "-m", "pip", "index", "versions", package]).stdout
    found = re.search(rf"^{re.escape(package)} \(([^)]+)\)", out, re.MULTILINE)
    assert found, out
    return found.group(1)


@pytest.mark.compat
@pytest.mark.timeout(900)
@pytest.mark.parametrize("which", ["floor", "newest"])
def test_compat(dist: Path, tmp_path: Path, which: str) -> None:
    """The wheel on the oldest supported Dagster and on the newest that has a `dg` release
    (dagster-dg-cli's newest; left free, pip would backtrack through Dagster releases)."""
    version = DAGSTER_FLOOR if which == "floor" else newest_release("dagster-dg-cli")
    venv = Venv(
        tmp_path / "venv",
        str(_wheel(dist)),
        f"dagster=={version}",
        f"dagster-dg-cli=={version}",
        f"dagster-webserver=={version}",  # the README's pip line: its road ends in `dagster dev`
    )
    versions = {p: venv.installed(p) for p in ("dagster", "dagster-dg-cli", "pydantic")}
    print(f"compat {json.dumps(versions)}")
    assert versions["dagster"] == version
    run_quick_start(venv, tmp_path / "project")
    check_component(venv, tmp_path / "component")
