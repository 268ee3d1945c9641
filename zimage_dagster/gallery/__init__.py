"""A web gallery over an image store: ``zimage-gallery --storage <root or URL>``; read-only unless
started with ``--review``, when it also takes verdicts (pick, reject, undo).

Modules: :mod:`~zimage_dagster.gallery.links` (every URL, also used by the Dagster side),
:mod:`~zimage_dagster.gallery.index` (what the store holds), :mod:`~zimage_dagster.gallery.verdicts`
(the review verdicts joined to it), :mod:`~zimage_dagster.gallery.candidates` (a partition's
images), :mod:`~zimage_dagster.gallery.thumbnails` (the thumbnail cache),
:mod:`~zimage_dagster.gallery.pages` (HTML), :mod:`~zimage_dagster.gallery.keyboard` (the one
script), :mod:`~zimage_dagster.gallery.access` (the review token, sessions, cross-site checks),
:mod:`~zimage_dagster.gallery.export` (the picks' zip), :mod:`~zimage_dagster.gallery.app` (the ASGI
app and a threaded server) and :mod:`~zimage_dagster.gallery.cli` (the console script).
"""

from __future__ import annotations

from zimage_dagster.gallery.app import Gallery, create_gallery_app

__all__ = ["Gallery", "create_gallery_app"]
