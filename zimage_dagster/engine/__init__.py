"""The pure engine: everything that makes, stores and tracks images, with no Dagster import.

``tests/test_architecture.py`` guards that no module here imports Dagster or the top-level
Dagster layer. The Dagster layer (assets, ops, sensors, the IO manager, the component) reads
these modules; they never read it.

- :mod:`~zimage_dagster.engine.keys`: the codec between Dagster partition keys and storage keys.
- :mod:`~zimage_dagster.engine.jobs`: one partition's work (:class:`ImageJob`), planned one way,
  with the seed rule and the fingerprint of :mod:`zimage_dagster.dataset.request` (the dataset
  layer, below the engine; :mod:`~zimage_dagster.engine.request` is its deprecated old path).
- :mod:`~zimage_dagster.engine.store`: the image store (local folder or fsspec URL), and the one
  reader of its file names (``ImageStore.records``).
- :mod:`~zimage_dagster.engine.ledger`: every task created, written before any wait; read back
  with ``iter_entries`` (repairs) or ``entries`` (read-only); one entry and its format:
  :mod:`~zimage_dagster.engine.ledger_entry`; its self-repair:
  :mod:`~zimage_dagster.engine.ledger_repair`.
- :mod:`~zimage_dagster.engine.scan`: rereading a store's folders, only what changed.
- :mod:`~zimage_dagster.engine.atomic` and :mod:`~zimage_dagster.engine.claims`: each storage's
  own atomic create and compare-and-set, and on them the partition claims that let overlapping
  runs agree on who creates a task.
- :mod:`~zimage_dagster.engine.create`: the one place tasks are created (budgets, the provider's
  402, the ledger record); :mod:`~zimage_dagster.engine.credits`: what a run may spend and what
  it spent; :mod:`~zimage_dagster.engine.capacity`: slots freed by our own tasks, which a
  deferred submit waits on at the provider's cap.
- :mod:`~zimage_dagster.engine.provenance` and :mod:`~zimage_dagster.engine.thumbnails`: the
  record stored beside each image, and its small preview.
- :mod:`~zimage_dagster.engine.reviews`: review verdicts (pick, reject, undo) as append-only
  records in the store, and the one rule for which verdict wins.
- :mod:`~zimage_dagster.engine.decide`: the one decision on a unit of work (reuse, re-attach,
  rejected before, create) and the resubmission budget; :mod:`~zimage_dagster.engine.settings`:
  what a run asks of the engine (``GenerationPolicy``, ``RunIdentity``).
- :mod:`~zimage_dagster.engine.outcome`: one report, one error classification, and acting on a
  decision (``look_up``), shared by blocking and deferred mode.
- :mod:`~zimage_dagster.engine.batch`: the batch generator (blocking mode).
- :mod:`~zimage_dagster.engine.submit` and :mod:`~zimage_dagster.engine.collect`: deferred mode.
- :mod:`~zimage_dagster.engine.shards` and :mod:`~zimage_dagster.engine.manifest`: sharded mode:
  which shard holds a row, and a shard's Parquet manifest.

Nothing is imported here, so that importing one module does not load them all.

>>> from zimage_dagster.engine.keys import storage_key
>>> storage_key("2026-01-01|hero")
'2026-01-01__hero'
"""
