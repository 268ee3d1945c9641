"""Build hook: the README as a package index shows it (the long description of the wheel/sdist).

A pip user has the package, not the source repository, so the index's text leaves out what only
the repository has:

- passages between ``<!-- source-only -->`` and ``<!-- /source-only -->`` (the `make` targets,
  ``examples/``, the repository's tests and benchmarks) are cut;
- images linked relative to the repository (``docs/ui-*.png``) cannot be shown: each becomes a
  line naming the screenshot and where it is in the source tree.

The README in the repository is unchanged. `tests/packaging/test_wheel.py` checks the result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface

_RELATIVE_IMAGE = re.compile(r"!\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:)([^)\s]+)\)")
_SOURCE_ONLY = re.compile(r"\n?<!-- source-only -->.*?<!-- /source-only -->", re.DOTALL)


def readme_for_index(text: str) -> str:
    """``text`` without its source-only passages, and every relatively linked image replaced
    by a note naming it.

    >>> readme_for_index("Run it.<!-- source-only --> Or `make demo`.<!-- /source-only -->")
    'Run it.'
    """
    text = _SOURCE_ONLY.sub("", text)
    return _RELATIVE_IMAGE.sub(r"*Screenshot (`\2` in the source repository): \1*", text)


class ReadmeForIndex(MetadataHookInterface):
    def update(self, metadata: dict[str, Any]) -> None:
        text = Path(self.root, "README.md").read_text(encoding="utf-8")
        metadata["readme"] = {"content-type": "text/markdown", "text": readme_for_index(text)}
