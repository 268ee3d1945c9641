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

from zimage_dagster.engine.moved import forwarder

__all__: list[str] = []
__getattr__ = forwarder(__name__, "zimage_dagster.dataset.request")
