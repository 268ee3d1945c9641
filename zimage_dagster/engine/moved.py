"""Old import paths kept working: a module that moved leaves a shim that forwards to its new home.

Every name read from the old path comes from the new module, with a ``DeprecationWarning`` that
names both paths. One helper, so that each shim is two lines and every shim says the same.

>>> import warnings
>>> getattr_ = forwarder("old_place", "zimage_dagster.engine.keys")
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     storage_key = getattr_("storage_key")
>>> storage_key("2026-01-01|fox"), caught[0].category.__name__
('2026-01-01__fox', 'DeprecationWarning')
>>> getattr_("no_such_name")
Traceback (most recent call last):
...
AttributeError: module 'old_place' has no attribute 'no_such_name'
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["forwarder"]


def forwarder(old: str, new: str) -> Callable[[str], Any]:
    """The module ``__getattr__`` of the shim left at ``old`` for the module now at ``new``."""

    def __getattr__(name: str) -> Any:
        module = importlib.import_module(new)
        if name.startswith("__") or not hasattr(module, name):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {new}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(module, name)

    return __getattr__
