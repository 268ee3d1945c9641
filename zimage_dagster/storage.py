"""Deprecated path: the IO manager moved to :mod:`zimage_dagster.io_manager` (``storage`` read
like the image store, which is :mod:`zimage_dagster.engine.store`). Importing a name from here
still works, with a ``DeprecationWarning``.

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     from zimage_dagster.storage import ImageStoreIOManager
>>> caught[0].category.__name__, ImageStoreIOManager.__module__
('DeprecationWarning', 'zimage_dagster.io_manager')
"""

from zimage_dagster.engine.moved import forwarder

__all__: list[str] = []
__getattr__ = forwarder(__name__, "zimage_dagster.io_manager")
