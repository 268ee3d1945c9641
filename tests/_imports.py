"""What a source file imports, read from its syntax tree (the layering tests' one reader)."""

from __future__ import annotations

import ast
from pathlib import Path


def module_imports(path: Path) -> set[str]:
    """Every module a file imports (`import a.b` gives `a.b`, `from a.b import c` gives `a.b`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found
