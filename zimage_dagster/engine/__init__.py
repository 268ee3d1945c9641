"""The pure engine: everything that makes, stores and tracks images, with no Dagster import.

A test guards that no module here imports Dagster. The Dagster layer (assets, ops, sensors, the
IO manager, the component) reads these modules; they never read it.

- :mod:`~zimage_dagster.engine.request`: a request's identity: the one seed rule, the fingerprint.
- :mod:`~zimage_dagster.engine.keys`: the codec between Dagster partition keys and storage keys.
- :mod:`~zimage_dagster.engine.jobs`: one partition's work (:class:`ImageJob`), planned one way.
- :mod:`~zimage_dagster.engine.store`: the image store (local folder or fsspec URL).
- :mod:`~zimage_dagster.engine.ledger`: every task created, written before any wait.
- :mod:`~zimage_dagster.engine.atomic` and :mod:`~zimage_dagster.engine.claims`: each storage's
  own atomic create and compare-and-set, and on them the partition claims that let overlapping
  runs agree on who creates a task.
- :mod:`~zimage_dagster.engine.provenance` and :mod:`~zimage_dagster.engine.thumbnails`: the
  record stored beside each image, and its small preview.
- :mod:`~zimage_dagster.engine.outcome`: one report, one error classification, one reuse and
  reject decision, shared by blocking and deferred mode.
- :mod:`~zimage_dagster.engine.batch`: the batch generator (blocking mode).
- :mod:`~zimage_dagster.engine.submit` and :mod:`~zimage_dagster.engine.watcher`: deferred mode.

Nothing is imported here, so that importing one module does not load them all.

>>> from zimage_dagster.engine.keys import storage_key
>>> storage_key("2026-01-01|hero")
'2026-01-01__hero'
"""
