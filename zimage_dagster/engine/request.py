"""Deprecated path: the seed rule and the request fingerprint moved to
:mod:`zimage_dagster.dataset.request` (below the engine, since a dataset row resolves its own seed
with them). Importing a name from here still works, with a ``DeprecationWarning``.

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     from zimage_dagster.engine.request import derive_seed
>>> caught[0].category.__name__, derive_seed.__module__
('DeprecationWarning', 'zimage_dagster.dataset.request')
"""

from __future__ import annotations

import warnings
from typing import Any

from zimage_dagster.dataset import request as _moved

__all__: list[str] = []


def __getattr__(name: str) -> Any:
    if name not in _moved.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"zimage_dagster.engine.request.{name} moved to zimage_dagster.dataset.request.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_moved, name)
