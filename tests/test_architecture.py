"""The map made true and kept true: the layers of the package, read from its source (an AST import
scan) and from a fresh interpreter's ``sys.modules``; every ``zimage_dagster.x.y`` named in the
README or in a docstring resolves; the README's Architecture section names every module."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import zimage_dagster
from tests._imports import module_imports

PACKAGE_DIR = Path(zimage_dagster.__file__).parent
README = PACKAGE_DIR.parent / "README.md"

# What each layer may import of this package (any other zimage_dagster module is refused), and
# whether Dagster is refused. ``serving`` is the dependency-free ASGI serving helper;
# ``_version`` is the version string. The top-level modules are the Dagster layer.
NEUTRAL = ("zimage_dagster._version",)
LAYERS: dict[str, tuple[str, ...]] = {
    # api: the provider in Python: no engine, no dataset, no Dagster.
    "api": ("zimage_dagster.api", *NEUTRAL),
    # emulator: the provider's stand-in: no client (api), no engine, no Dagster.
    "emulator": ("zimage_dagster.emulator", "zimage_dagster.serving", *NEUTRAL),
    # dataset: rows and readers on the client's rules: no engine, no Dagster.
    "dataset": ("zimage_dagster.dataset", "zimage_dagster.api", *NEUTRAL),
    # engine: nothing from the top-level Dagster layer, and no Dagster.
    "engine": (
        "zimage_dagster.engine",
        "zimage_dagster.dataset",
        "zimage_dagster.api",
        *NEUTRAL,
    ),
    # gallery: reads the store through the engine: no Dagster, no Dagster layer.
    "gallery": (
        "zimage_dagster.gallery",
        "zimage_dagster.engine",
        "zimage_dagster.dataset",
        "zimage_dagster.api",
        "zimage_dagster.serving",
        *NEUTRAL,
    ),
}
# The modules every layer above may use that import no Dagster either.
DAGSTER_FREE_MODULES = ("serving", "_version")


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def _sources(layer: str) -> list[Path]:
    folder = PACKAGE_DIR / layer
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE_DIR / f"{layer}.py"]


@pytest.mark.parametrize("layer", [*LAYERS, *DAGSTER_FREE_MODULES])
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    allowed = LAYERS.get(layer, ())
    problems = []
    for path in _sources(layer):
        for module in module_imports(path):
            if module.split(".")[0].startswith("dagster"):
                problems.append(f"{path.name} imports {module} (Dagster)")
            elif module.split(".")[0] == "zimage_dagster" and not _allowed(module, allowed):
                problems.append(f"{path.name} imports {module}")
    assert problems == [], f"zimage_dagster.{layer}: {problems}"


@pytest.mark.parametrize("layer", list(LAYERS))
def test_importing_a_layer_loads_nothing_above_it(layer: str) -> None:
    """The same rule in a fresh interpreter: importing every module of the layer (the lazy
    package root included) loads neither Dagster nor a module of a layer above."""
    modules = [
        name
        for _, name, _ in pkgutil.walk_packages(
            [str(PACKAGE_DIR / layer)], f"zimage_dagster.{layer}."
        )
        if not name.endswith("__main__")
    ]
    allowed = ("zimage_dagster", *LAYERS[layer])
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in [f"zimage_dagster.{layer}", *modules])
        + "print('\\n'.join(sorted(m for m in sys.modules"
        " if m.split('.')[0].startswith('dagster') or m.startswith('zimage_dagster'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = result.stdout.split()
    above = [
        m
        for m in loaded
        if m.split(".")[0].startswith("dagster")
        or (m != "zimage_dagster" and not _allowed(m, allowed))
    ]
    assert above == [], f"importing zimage_dagster.{layer} loads {above}"


# -- every dotted name resolves ------------------------------------------------------------------

DOTTED = re.compile(r"(?<![\w./-])zimage_dagster(?:\.[A-Za-z_]\w*)+")


def _resolves(name: str) -> bool:
    """An importable module, or an attribute reached from the longest importable module."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree, *ast.walk(tree)]
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in nodes if isinstance(node, kinds) and (doc := ast.get_docstring(node))]


def _named() -> dict[str, set[str]]:
    """Every dotted name, with where it is written."""
    found: dict[str, set[str]] = {}
    for name in DOTTED.findall(README.read_text(encoding="utf-8")):
        found.setdefault(name, set()).add("README.md")
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for doc in _docstrings(path):
            for name in DOTTED.findall(doc):
                found.setdefault(name, set()).add(str(path.relative_to(PACKAGE_DIR.parent)))
    return found


def test_every_dotted_name_in_the_readme_and_the_docstrings_resolves() -> None:
    named = _named()
    assert len(named) > 40  # the scan finds the names (the README and docstrings use many)
    broken = {name: sorted(where) for name, where in named.items() if not _resolves(name)}
    assert broken == {}


def test_a_name_that_does_not_resolve_is_caught() -> None:
    assert _resolves("zimage_dagster.engine.store.ImageStore.records")
    assert not _resolves("zimage_dagster.ledger.TaskLedger")  # moved into engine/ long ago
    assert not _resolves("zimage_dagster.engine.store.NoSuchThing")


# -- the README's Architecture section names every module ----------------------------------------


def _architecture_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Architecture\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_architecture_section_names_every_module_and_package() -> None:
    section = _architecture_section()
    names = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        relative = path.relative_to(PACKAGE_DIR)
        if relative.parent != Path("."):
            names.add(f"{relative.parts[0]}/")
        if relative.name not in ("__init__.py", "__main__.py", "_version.py"):
            names.add(relative.as_posix())
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert missing == []
