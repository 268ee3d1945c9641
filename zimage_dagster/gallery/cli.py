"""``zimage-gallery``: serve the gallery; the first line on stdout is its base URL.

    zimage-gallery --storage zimage_output --host 127.0.0.1 --port 0
    zimage-gallery --storage s3://bucket/images --storage-options '{"anon": false}'
    zimage-gallery --storage zimage_output --review --reviewer ana

With ``--review`` the review token is printed once on stderr (or read from
``--review-token-file``); it is never written anywhere else.

>>> args = parse_args(["--storage", "out", "--refresh", "2"])
>>> (args.storage, args.port, args.refresh, args.review)
('out', 8080, 2.0, False)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zimage_dagster.engine.reviews import ReviewError, check_reviewer
from zimage_dagster.gallery.access import new_token, read_token_file
from zimage_dagster.gallery.app import create_gallery_app, default_reviewer
from zimage_dagster.serving import PortUnavailableError, json_object_arg, serve

__all__ = ["main", "parse_args"]

_EXAMPLE = """\
example:
  zimage-gallery --storage zimage_output --port 8080 --review --reviewer ana
      serves http://127.0.0.1:8080 (the first line on stdout) and prints the review token once
      on stderr: open the URL, "sign in to review", paste the token; then j/k or the arrows
      move, 1-8 pick, x rejects, u undoes.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="zimage-gallery",
        description="Browse a zimage image store: every asset, image, prompt and failure; "
        "with --review, pick and reject images.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--storage", required=True, help="image store root (folder or fsspec URL)")
    p.add_argument(
        "--storage-options",
        type=json_object_arg,
        default=None,
        help="fsspec options for the root, as a JSON object or @file.json (default: none)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=int, default=8080, help="port, 0 for a free one (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="thumbnail cache folder (default: ~/.cache/zimage-gallery/<hash of the root>)",
    )
    p.add_argument(
        "--refresh",
        type=float,
        default=5.0,
        help="seconds before the store and its verdicts are read again, 0 at every request "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--thumbnail-side",
        type=int,
        default=320,
        help="thumbnail size in px (default: %(default)s)",
    )
    p.add_argument(
        "--review",
        action="store_true",
        help="take verdicts (pick, reject, undo), written to <storage>/_reviews/; without it "
        "every request but GET and HEAD answers 405 (default: off, read-only)",
    )
    p.add_argument(
        "--review-token-file",
        default=None,
        help="file holding the review token, at least 16 characters; implies --review "
        "(default: a new token, printed once on stderr)",
    )
    p.add_argument(
        "--reviewer",
        default=default_reviewer(),
        help="the name the verdicts are written under (default: your login name, %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (default: %(default)s)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    review = bool(args.review or args.review_token_file)
    token = None
    try:
        if review:
            check_reviewer(args.reviewer)
            token = read_token_file(args.review_token_file) if args.review_token_file else None
        generated = new_token() if review and token is None else None
        app = create_gallery_app(
            args.storage,
            storage_options=args.storage_options,
            cache_dir=args.cache_dir,
            thumbnail_side=args.thumbnail_side,
            refresh_s=args.refresh,
            review_token=token or generated,
            reviewer=args.reviewer,
        )
    except (ValueError, OSError, ReviewError) as exc:
        print(f"zimage-gallery: {exc}", file=sys.stderr)
        return 2
    if generated is not None:
        print(
            "zimage-gallery: review token (shown once; paste it on the sign-in page, or send "
            f"'Authorization: Bearer <token>'): {generated}",
            file=sys.stderr,
            flush=True,
        )
    try:
        serve(app, args.host, args.port, log_level=args.log_level)
    except PortUnavailableError as exc:
        print(f"zimage-gallery: {exc}", file=sys.stderr)
        return 2
    finally:
        app.state.index.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
