"""How downstream assets load stored images: :class:`ImageStoreIOManager` (Dagster's face of the
image store in :mod:`zimage_dagster.engine.store`).

Example:
    >>> import tempfile
    >>> from zimage_dagster.engine.store import ImageStore, resolve_storage
    >>> root = tempfile.mkdtemp()
    >>> _ = ImageStore(root).save("hero", "2026-01-01|fox", b"img", "png", {"sha256": "ab"})
    >>> ImageStoreIOManager(root=root)._store().find("hero", "2026-01-01|fox").path.name
    '2026-01-01__fox.png'
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from typing import Any

import dagster as dg
from PIL import Image
from pydantic import Field
from upath import UPath

from zimage_dagster._docs import ui_docstring
from zimage_dagster.engine.shards import is_shard_key
from zimage_dagster.engine.store import ImageStore, resolve_storage

if typing.TYPE_CHECKING:
    from zimage_dagster.engine.manifest import ShardManifest

__all__ = ["ImageStoreIOManager"]


_AS_VALUES = ("bytes", "pil", "path")


def _wanted_kind(context: dg.InputContext) -> tuple[str, bool]:
    """``(kind, force_dict)`` from input metadata ``{"as": ...}`` or the type annotation."""
    meta = context.definition_metadata or {}
    as_ = meta.get("as")
    typ: Any = context.dagster_type.typing_type if context.dagster_type else None
    force_dict = False
    origin = typing.get_origin(typ)
    if origin is not None and origin in (dict, Mapping, typing.Dict, typing.Mapping):  # noqa: UP006
        force_dict = True
        args = typing.get_args(typ)
        typ = args[1] if len(args) == 2 else Any
    if isinstance(as_, str):
        if as_ not in _AS_VALUES:
            raise dg.DagsterInvariantViolationError(
                f"input metadata 'as' must be one of {_AS_VALUES}, got {as_!r}"
            )
        return as_, force_dict
    if isinstance(typ, type) and issubclass(typ, Image.Image):
        return "pil", force_dict
    if isinstance(typ, type) and issubclass(typ, (UPath, os.PathLike)):
        return "path", force_dict
    return "bytes", force_dict


@ui_docstring
class ImageStoreIOManager(dg.ConfigurableIOManager):
    """Loads stored images into downstream assets; the image asset itself writes through the store.

    Why ``handle_output`` takes only ``None``: an image asset materializes many partitions in one
    step (a single-run backfill) and records an ``AssetMaterialization`` per finished partition;
    an IO manager's ``handle_output`` sees one output for the whole range and could not write
    per-partition files or report partial success. So the asset writes each image with
    `ImageStore` as it arrives and returns `None`.

    ``load_input`` reads ``<root>/<asset>/<partition_key>.<ext>`` for each upstream partition the
    input needs. A sharded image asset (``partitioning="shards"``) loads each shard as its
    manifest instead: a ``ShardManifest`` of ``zimage_dagster.engine.manifest`` (its
    ``pyarrow.Table`` in ``.table``, and its images read only when asked), or the bare
    ``pyarrow.Table`` for an input annotated so. What each value is:

    * input metadata ``{"as": "pil"}`` / ``"bytes"`` / ``"path"``, else
    * the annotation: ``PIL.Image.Image`` -> decoded image, ``UPath`` -> path, anything else -> bytes.

    One partition gives the value itself; several (or a ``dict[str, ...]`` annotation) give a
    dict ``partition_key -> value``. A missing partition raises ``FileNotFoundError`` unless the
    input metadata has ``{"allow_missing_partitions": True}`` (then it is left out of the dict).

    Example:

        >>> import dagster as dg
        >>> from PIL import Image
        >>> @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a"]))
        ... def thumbs(hero: Image.Image) -> None: ...
        >>> io_manager = ImageStoreIOManager(root="memory://doctest-io")
    """

    root: str | None = Field(
        default=None,
        description=(
            "Folder or fsspec URL of the image store (s3://bucket/prefix, memory://x). Unset: "
            "$ZIMAGE_STORAGE_URL, else zimage_output (as the image assets)."
        ),
    )
    storage_options: dict[str, Any] | None = Field(
        default=None,
        description="fsspec storage options for the root (use dagster.EnvVar for credentials).",
    )

    def _store(self) -> ImageStore:
        return ImageStore(resolve_storage(self.root), self.storage_options)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Accept ``None`` only: images are written by the asset through :class:`ImageStore`."""
        if obj is not None:
            raise dg.DagsterInvariantViolationError(
                "ImageStoreIOManager stores nothing itself: the image asset writes each partition "
                "through ImageStore and must return None (or MaterializeResult/Output(None))."
            )

    def load_input(self, context: dg.InputContext) -> Any:
        """Stored images for the upstream partitions this input needs (see the class doc)."""
        if not context.has_asset_key:
            raise dg.DagsterInvariantViolationError(
                "ImageStoreIOManager loads asset inputs only (the input has no asset key)."
            )
        store = self._store()
        asset = context.asset_key
        kind, force_dict = _wanted_kind(context)
        allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))
        if not context.has_asset_partitions:
            raise dg.DagsterInvariantViolationError(
                f"{asset.to_user_string()} is not partitioned: ImageStoreIOManager loads "
                "partitioned image assets."
            )
        keys = list(context.asset_partition_keys)
        values: dict[str, Any] = {}
        if keys and all(is_shard_key(str(k)) for k in keys):
            shards = _load_shards(store, asset, [str(k) for k in keys], context, allow_missing)
            if shards is not None:
                if len(keys) == 1 and not force_dict:
                    return shards.get(str(keys[0]))
                return shards
        for key in keys:
            found = store.find(asset, str(key))
            if found is None:
                if allow_missing:
                    continue
                raise FileNotFoundError(
                    f"no stored image for {asset.to_user_string()} partition {key!r} "
                    f"under {store.root}"
                )
            if kind == "path":
                values[str(key)] = found.path
            elif kind == "pil":
                values[str(key)] = store.open_image(asset, str(key))
            else:
                values[str(key)] = store.read_bytes_or_none(found.path)
        if len(keys) == 1 and not force_dict:
            return values.get(str(keys[0]))
        return values


def _load_shards(
    store: ImageStore,
    asset: dg.AssetKey,
    keys: list[str],
    context: dg.InputContext,
    allow_missing: bool,
) -> dict[str, ShardManifest | Any] | None:
    """Shards of a sharded image asset (``partitioning="shards"``), each as its manifest: a
    :class:`~zimage_dagster.engine.manifest.ShardManifest` (the ``pyarrow.Table`` in
    ``.table``, images read when asked), or the bare table for an input annotated
    ``pyarrow.Table``. ``None`` when the asset has no manifest at all (not a sharded asset)."""
    from zimage_dagster.engine.manifest import ShardManifest

    if not store.manifests(asset):
        return None
    typ: Any = context.dagster_type.typing_type if context.dagster_type else None
    if typing.get_origin(typ) in (dict, Mapping, typing.Dict, typing.Mapping):  # noqa: UP006
        args = typing.get_args(typ)
        typ = args[1] if len(args) == 2 else Any
    bare_table = getattr(typ, "__name__", "") == "Table" and "pyarrow" in getattr(
        typ, "__module__", ""
    )
    shards: dict[str, Any] = {}
    for key in keys:
        try:
            shard = ShardManifest.load(store, asset, key)
        except FileNotFoundError:
            if allow_missing:
                continue
            raise
        shards[key] = shard.table if bare_table else shard
    return shards
