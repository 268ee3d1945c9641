"""The package as a user gets it: the built wheel in a fresh venv, without the dev group.

`make test` runs the README's own quick start (its `definitions.py`, its emulator command, its
`dagster asset materialize` line, all read from README.md) against the wheel and the Dagster
`pip install` picks. `make compat` (marker `compat`) runs the same on the oldest supported Dagster
and the newest one that installs with `dg`, plus `dg check defs` on a project using the component.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.test_readme import readme_definitions, readme_materialize_command

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_PORT = "8765"
# The oldest Dagster the plugin supports (pyproject's floor; `make compat` proves it).
DAGSTER_FLOOR = "1.10.19"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class QuickStart:
    """The README's quick start, as a user would copy it."""

    definitions: str
    emulator: list[str]
    env: dict[str, str]
    materialize: list[str]


def read_quick_start(text: str) -> QuickStart:
    """Extract the quick start from the README's text (so the two cannot drift apart): its
    `definitions.py` and materialize line as tests/test_readme.py reads them, plus the emulator
    command and the exported variables.

    >>> qs = read_quick_start(README.read_text(encoding="utf-8"))
    >>> qs.emulator[0], qs.materialize[:3]
    ('zimage-emulator', ['dagster', 'asset', 'materialize'])
    """
    start = text.index("\n## Quick start")
    section = text[start : text.index("\n## ", start + 1)]
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        commands += [shlex.split(line, comments=True) for line in block.splitlines()]
    env: dict[str, str] = {}
    for words in commands:
        if words[:1] == ["export"]:
            env.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
    emulator = [words for words in commands if words[:1] == ["zimage-emulator"]]
    assert emulator, "the README's quick start has no `zimage-emulator` command"
    return QuickStart(
        definitions=readme_definitions(),
        emulator=emulator[0],
        env=env,
        materialize=readme_materialize_command(),
    )


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, (
        f"{shlex.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel built from it (`python -m build`), in a temporary folder."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)])
    return out


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


class Venv:
    """A fresh virtual environment holding the wheel and what pip resolves for it."""

    def __init__(self, root: Path, wheel: Path, *requirements: str) -> None:
        self.root = root
        _run([sys.executable, "-m", "venv", str(root)])
        _run(
            [str(self.bin / "python"), "-m", "pip", "install", "--quiet", str(wheel), *requirements]
        )

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZIMAGE_", "DAGSTER_"))}
        env.pop("PYTHONPATH", None)
        env.update(PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(self.root))
        env.update(extra)
        return env

    def installed(self, package: str) -> str:
        code = f"import importlib.metadata as m; print(m.version({package!r}))"
        return _run([str(self.bin / "python"), "-c", code]).stdout.strip()


@dataclass
class Emulator:
    process: subprocess.Popen[str]
    url: str

    def tasks_created(self) -> int:
        # The README's key: the emulator accepts any sk- token.
        stats = httpx.get(f"{self.url}/_emulator/stats", timeout=10).json()
        return int(stats["tasks_created"])


@contextmanager
def _start_emulator(venv: Venv, command: list[str]) -> Iterator[Emulator]:
    """The README's emulator command, on a free port (`--port 0` prints the URL it got)."""
    args = [str(venv.bin / command[0]), *command[1:]]
    args[args.index("--port") + 1] = "0"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=venv.env())
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield Emulator(process, url)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_quick_start(venv: Venv, workdir: Path) -> None:
    """Import, emulator, the README's `definitions.py` materializing its 3 partitions in one run
    (3 tasks), then again (no new task: every image is reused); no warning from the plugin."""
    python = str(venv.bin / "python")
    code = "import zimage_dagster, zimage_dagster.api, zimage_dagster.emulator; print(zimage_dagster.__version__)"
    assert _run([python, "-c", code]).stdout.strip()

    quick = read_quick_start(README.read_text(encoding="utf-8"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "definitions.py").write_text(quick.definitions, encoding="utf-8")
    keys = re.findall(r'"key": "([a-z0-9_-]+)"', quick.definitions)
    assert len(keys) == 3, keys
    (workdir / "dagster_home").mkdir(exist_ok=True)

    with _start_emulator(venv, quick.emulator) as emulator:
        port = emulator.url.rsplit(":", 1)[1]
        env = venv.env(
            DAGSTER_HOME=str(workdir / "dagster_home"),
            **{k: v.replace(README_PORT, port) for k, v in quick.env.items()},
        )
        command = [str(venv.bin / quick.materialize[0]), *quick.materialize[1:]]
        made = _run(command, cwd=workdir, env=env)
        stored = sorted(p.stem for p in (workdir / "zimage_output").rglob("*.webp"))
        assert stored == sorted(keys), made.stderr[-2000:]
        assert emulator.tasks_created() == 3
        # Quiet by default: the plugin's own use of Dagster's APIs warns about nothing.
        for line in made.stderr.splitlines():
            assert "BetaWarning" not in line, line
            assert "PreviewWarning" not in line, line
            assert "zimage_dagster" not in line or "Warning" not in line, line

        _run(command, cwd=workdir, env=env)
        assert emulator.tasks_created() == 3, "a re-run paid again for a stored image"


@pytest.mark.timeout(900)  # a fresh venv's install; minutes on a loaded 2-core machine
def test_readme_quick_start_from_the_wheel(dist: Path, tmp_path: Path) -> None:
    """`pip install zimage-dagster` (the wheel, no dev group) then the README's quick start."""
    venv = Venv(tmp_path / "venv", _wheel(dist))
    assert venv.installed("dagster")  # whatever pip picks within the declared range
    for dev_tool in ("pytest", "mypy", "playwright"):
        code = f"import importlib.util as u; print(u.find_spec({dev_tool!r}) is None)"
        assert _run([str(venv.bin / "python"), "-c", code]).stdout.strip() == "True", dev_tool
    run_quick_start(venv, tmp_path / "project")


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
        tmp_path / "venv", _wheel(dist), f"dagster=={version}", f"dagster-dg-cli=={version}"
    )
    versions = {p: venv.installed(p) for p in ("dagster", "dagster-dg-cli", "pydantic")}
    print(f"compat {json.dumps(versions)}")
    assert versions["dagster"] == version
    run_quick_start(venv, tmp_path / "project")
    check_component(venv, tmp_path / "component")
