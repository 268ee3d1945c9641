"""The README's fenced examples, with the section each one sits in (one parser for every test
that runs them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, text (dedented), ``## section`` and ``### subsection``
    titles and the README line it starts on."""

    language: str
    text: str
    section: str
    subsection: str
    line: int

    @property
    def where(self) -> str:
        return f"README.md line {self.line} ({self.section}{' / ' + self.subsection if self.subsection else ''})"

    def lines(self) -> list[str]:
        """Its non-empty lines."""
        return [line for line in self.text.splitlines() if line.strip()]


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, in order.

    >>> [b.language for b in readme_blocks("## A\\n```bash\\nls\\n```\\n### B\\n  ```yaml\\n  a: 1\\n  ```\\n")]
    ['bash', 'yaml']
    """
    text = README.read_text(encoding="utf-8") if text is None else text
    blocks: list[Block] = []
    section = subsection = ""
    opened: tuple[str, str, int] | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(line)
        if opened is None:
            if line.startswith("## "):
                section, subsection = line[3:].strip(), ""
            elif line.startswith("### "):
                subsection = line[4:].strip()
            elif fence:
                opened, body = (fence.group(1), fence.group(2), number), []
        elif fence and fence.group(2) == "":
            indent, language, start = opened
            dedented = [b[len(indent) :] if b.startswith(indent) else b for b in body]
            blocks.append(Block(language, "\n".join(dedented) + "\n", section, subsection, start))
            opened = None
        else:
            body.append(line)
    assert opened is None, f"README.md line {opened[2]}: a fenced block is never closed"
    return blocks


def blocks_of(language: str, section: str | None = None) -> list[Block]:
    """The README's blocks in ``language`` (and ``section``, when given)."""
    return [
        b
        for b in readme_blocks()
        if b.language == language and (section is None or b.section == section)
    ]
