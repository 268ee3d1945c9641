"""Deprecated path: the deferred mode's collection moved to :mod:`zimage_dagster.engine.collect`
(it collects; the sensor is what watches). Importing a name from here still works, with a
``DeprecationWarning``.

>>> import warnings
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     from zimage_dagster.engine.watcher import record_end
>>> caught[0].category.__name__, record_end.__module__
('DeprecationWarning', 'zimage_dagster.engine.collect')
"""

from zimage_dagster.engine.moved import forwarder

__all__: list[str] = []
__getattr__ = forwarder(__name__, "zimage_dagster.engine.collect")
