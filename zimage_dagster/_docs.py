"""Docstrings that Dagster shows in its UI.

Dagster uses a resource's or IO manager's raw ``__doc__`` as its description, which the UI renders
as Markdown: the source indentation would turn every line after the first into a code block or
run it all together. :func:`ui_docstring` dedents it once, at class creation (doctests still run).
Such docstrings use Markdown, not Sphinx roles (no ``:meth:``), and leave a blank line before an
indented example.

>>> @ui_docstring
... class Thing:
...     '''First line.
...
...     Second paragraph.
...     '''
>>> Thing.__doc__
'First line.\\n\\nSecond paragraph.'
"""

from __future__ import annotations

import inspect
from typing import TypeVar

T = TypeVar("T", bound=type)


def ui_docstring(cls: T) -> T:
    """Dedent ``cls.__doc__`` (as ``inspect.cleandoc``) so that the Dagster UI renders it."""
    if cls.__doc__:
        cls.__doc__ = inspect.cleandoc(cls.__doc__)
    return cls
