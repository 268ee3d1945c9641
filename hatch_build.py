"""Build hook: the README as a package index shows it (the long description of the wheel/sdist).

A package index page cannot show images linked relative to the repository (`docs/ui-*.png`):
each such image becomes a line naming the screenshot and where it is in the source tree. The
README in the repository is unchanged. `tests/packaging/test_wheel.py` checks the result.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface

_RELATIVE_IMAGE = re.compile(r"!\[([^\]]*)\]\((?![a-z][a-z0-9+.-]*:)([^)\s]+)\)")


def readme_for_index(text: str) -> str:
    """``text`` with every relatively linked image replaced by a note naming it."""
    return _RELATIVE_IMAGE.sub(r"*Screenshot (`\2` in the source repository): \1*", text)


class ReadmeForIndex(MetadataHookInterface):
    def update(self, metadata: dict[str, Any]) -> None:
        text = Path(self.root, "README.md").read_text(encoding="utf-8")
        metadata["readme"] = {"content-type": "text/markdown", "text": readme_for_index(text)}
