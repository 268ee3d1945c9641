"""``zimage-gallery``: serve the gallery; the first line on stdout is its base URL.

    zimage-gallery --storage zimage_output --host 127.0.0.1 --port 0
    zimage-gallery --storage s3://bucket/images --storage-options '{"anon": false}'

>>> args = parse_args(["--storage", "out", "--refresh", "2"])
>>> (args.storage, args.port, args.refresh)
('out', 8080, 2.0)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zimage_dagster.gallery.app import create_gallery_app
from zimage_dagster.serving import json_object_arg, serve

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="zimage-gallery",
        description="Browse a zimage image store: every asset, image, prompt and failure.",
    )
    p.add_argument("--storage", required=True, help="image store root (folder or fsspec URL)")
    p.add_argument(
        "--storage-options",
        type=json_object_arg,
        default=None,
        help="fsspec options for the root, as a JSON object or @file.json",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0: a free one)")
    p.add_argument(
        "--cache-dir", help="thumbnail cache folder (default ~/.cache/zimage-gallery/<root hash>)"
    )
    p.add_argument(
        "--refresh",
        type=float,
        default=5.0,
        help="seconds before the store is listed again (default 5; 0: at every request)",
    )
    p.add_argument("--thumbnail-side", type=int, default=320, help="thumbnail size in px")
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        app = create_gallery_app(
            args.storage,
            storage_options=args.storage_options,
            cache_dir=args.cache_dir,
            thumbnail_side=args.thumbnail_side,
            refresh_s=args.refresh,
        )
        app.state.index.snapshot()  # read the store before announcing the URL
    except (ValueError, OSError) as exc:
        print(f"zimage-gallery: {exc}", file=sys.stderr)
        return 2
    serve(app, args.host, args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
