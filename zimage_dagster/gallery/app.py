"""The gallery as an ASGI app (Starlette), and as a server in a background thread.

Read-only: it serves the pages, the thumbnails (from its own cache folder) and the image files of
partitions the index found, and nothing else. A request names an asset and a storage key; both must
be in the index (built from the store's own listing), and the file is then located by
``ImageStore.find``, which checks every path part and that the path lies under the root. Every
answer carries a Content-Security-Policy without scripts.

>>> import tempfile
>>> with Gallery(tempfile.mkdtemp(), cache_dir=tempfile.mkdtemp()) as gallery:
...     gallery.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from upath import UPath

from zimage_dagster.engine.store import ImageStore
from zimage_dagster.gallery import pages
from zimage_dagster.gallery.index import GalleryIndex, GalleryItem, Query, read_image
from zimage_dagster.gallery.thumbnails import ThumbnailCache, default_cache_dir
from zimage_dagster.serving import Service, ThreadedServer

__all__ = ["Gallery", "create_gallery_app"]

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
        b"base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_MEDIA_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-cache"})


def _not_found(what: str) -> HTMLResponse:
    return _html(pages.not_found_page(what), 404)


def create_gallery_app(
    storage: str | os.PathLike[str] | UPath | ImageStore,
    *,
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    thumbnail_side: int = 320,
    refresh_s: float = 5.0,
) -> Starlette:
    """The gallery over an image store (a folder, an fsspec URL, or an ``ImageStore``).

    ``cache_dir`` holds the thumbnails (default: :func:`default_cache_dir` of the root);
    ``refresh_s`` is how old the index may get before it is read again.
    """
    store = storage if isinstance(storage, ImageStore) else ImageStore(storage, storage_options)
    index = GalleryIndex(store, refresh_s=refresh_s)
    thumbs = ThumbnailCache(
        cache_dir if cache_dir is not None else default_cache_dir(str(store.root)),
        thumbnail_side,
    )

    def home(request: Request) -> Response:
        return _html(pages.home_page(index.snapshot()))

    def css(request: Request) -> Response:
        return Response(pages.CSS, media_type="text/css", headers={"cache-control": "max-age=300"})

    def stats(request: Request) -> Response:
        snapshot = index.snapshot()
        return JSONResponse(
            {
                "assets": len(snapshot.assets),
                "partitions": snapshot.images,
                "index_build_s": round(snapshot.build_s, 4),
                "thumbnails_generated": thumbs.generated,
                "thumbnails_from_cache": thumbs.hits,
            }
        )

    def asset_routes(request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0][len("/assets/") :]
        head, sep, tail = path.partition("/-/")
        parts = [unquote(p) for p in head.strip("/").split("/")] if head.strip("/") else []
        snapshot = index.snapshot()
        asset = snapshot.assets.get("/".join(parts))
        if asset is None or any(not p or "/" in p for p in parts):
            return _not_found("No such asset in this store.")
        if not sep:
            if not path.endswith("/"):
                return RedirectResponse(request.url.path + "/", status_code=308)
            query = Query.from_params(request.query_params)
            return _html(pages.asset_page(asset, query, asset.select(query)))
        what, _, key = tail.partition("/")
        item = asset.by_key.get(unquote(key)) if "/" not in key else None
        if item is None:
            return _not_found("No such partition in this asset.")
        if what == "partition":
            return _html(pages.partition_page(item, request.query_params.get("task")))
        if what == "thumbnail":
            return _thumbnail(item)
        if what == "image":
            return _image(item)
        return _not_found("No such page.")

    def _thumbnail(item: GalleryItem) -> Response:
        data = thumbs.get(store, item) if item.has_image else None
        if data is None:
            return Response(b"", status_code=404)
        return Response(
            data, media_type="image/jpeg", headers={"cache-control": "public, max-age=86400"}
        )

    def _image(item: GalleryItem) -> Response:
        read = read_image(store, item)
        if read is None:
            return Response(b"", status_code=404)
        found, data = read
        headers = {"cache-control": "no-cache"}
        if found.sha256:
            headers["etag"] = f'"{found.sha256}"'
        return Response(
            data,
            media_type=_MEDIA_TYPES.get(found.format, "application/octet-stream"),
            headers=headers,
        )

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/-/gallery.css", css),
            Route("/-/stats", stats),
            Route("/assets/{rest:path}", asset_routes),
        ]
    )
    app.add_middleware(_SecurityHeaders)
    app.state.index = index
    app.state.thumbnails = thumbs
    return app


class Gallery(Service):
    """The gallery on a free loopback port in a background thread (tests, ``make dev``).

    Without ``cache_dir`` the thumbnails go to a temporary folder removed at ``stop()``.
    """

    def __init__(
        self,
        storage: str | os.PathLike[str] | UPath | ImageStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        self._tmp = None if cache_dir is not None else tempfile.TemporaryDirectory(prefix="zg-")
        self.app = create_gallery_app(
            storage, cache_dir=cache_dir or (self._tmp.name if self._tmp else None), **options
        )
        self._serving = ThreadedServer(self.app, host=host, port=port, name="zimage-gallery")
        self.url = ""

    def start(self) -> Gallery:
        self._serving.start()
        self.url = self._serving.url
        return self

    def stop(self) -> None:
        self._serving.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
