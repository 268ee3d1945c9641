"""The gallery as an ASGI app (Starlette), and as a server in a background thread.

Read-only by default: every request but GET and HEAD answers 405, and the app serves the pages,
the thumbnails (from its own cache folder), the image files of partitions the index found, the
picks' zip, the stylesheet and its one script, and nothing else. A request names an asset and a
storage key; both must be in the index (built from the store's own listing), and the file is then
located by ``ImageStore.find``, which checks every path part and that the path lies under the
root. Every answer carries a Content-Security-Policy that allows the gallery's own stylesheet,
images and script only.

With a review token (``--review``) it also takes verdicts: ``POST`` to a partition's verdict URL,
written as review records through :mod:`zimage_dagster.engine.reviews`; who may is in
:mod:`~zimage_dagster.gallery.access`.

>>> import tempfile
>>> with Gallery(tempfile.mkdtemp(), cache_dir=tempfile.mkdtemp()) as gallery:
...     gallery.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from upath import UPath

from zimage_dagster.engine.keys import candidate_key
from zimage_dagster.engine.ledger import LedgerEntry, LedgerStatus, TaskLedger
from zimage_dagster.engine.reviews import (
    MAX_CANDIDATES,
    NothingToUndoError,
    ReviewError,
    current_verdicts,
    read_records,
    record_verdict,
)
from zimage_dagster.engine.store import ImageStore, file_stem
from zimage_dagster.gallery import links, pages
from zimage_dagster.gallery.access import SESSION_COOKIE, ReviewAccess, Visitor, cross_site_reason
from zimage_dagster.gallery.candidates import (
    Candidate,
    candidate_at,
    candidates_of,
    read_candidate,
)
from zimage_dagster.gallery.export import export_picks
from zimage_dagster.gallery.index import AssetIndex, GalleryIndex, GalleryItem, Query, read_image
from zimage_dagster.gallery.keyboard import SCRIPT
from zimage_dagster.gallery.thumbnails import ThumbnailCache, default_cache_dir
from zimage_dagster.gallery.verdicts import VerdictCache, neighbours
from zimage_dagster.serving import BodyTooLargeError, Service, ThreadedServer, read_body

__all__ = ["Gallery", "create_gallery_app", "default_reviewer"]

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Origin "null"
    (b"x-frame-options", b"DENY"),
]
_MEDIA_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
_READ_METHODS = frozenset({"GET", "HEAD"})
#: The largest verdict or sign-in form body read (a note is at most 2,000 characters).
_MAX_FORM_BYTES = 16_384


def default_reviewer() -> str:
    """The login name of the user running the gallery (``reviewer`` if there is none)."""
    try:
        return getpass.getuser() or "reviewer"
    except (OSError, KeyError):
        return "reviewer"


def _is_write_path(path: str) -> bool:
    return path in (links.SIGN_IN_PATH, links.SIGN_OUT_PATH) or (
        path.startswith("/assets/") and "/-/verdict/" in path
    )


class _Guard:
    """Security headers on every answer; 405 to every method but GET and HEAD, except the
    review's POSTs when the gallery takes verdicts."""

    def __init__(self, app: ASGIApp, *, review: bool) -> None:
        self.app = app
        self.review = review

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        method = scope["method"]
        allowed = method in _READ_METHODS or (
            self.review and method == "POST" and _is_write_path(scope["path"])
        )
        if not allowed:
            said = "read-only gallery" if not self.review else "not a verdict URL"
            refusal = PlainTextResponse(
                f"405: {method} is not allowed here ({said})",
                status_code=405,
                headers={"allow": "GET, HEAD"},
            )
            await refusal(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-cache"})


def _not_found(what: str) -> HTMLResponse:
    return _html(pages.not_found_page(what), 404)


async def _form(request: Request) -> dict[str, str] | Response:
    """The URL-encoded form of a POST (at most 16 KiB), or the answer refusing it."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return PlainTextResponse(
            "415: send the form as application/x-www-form-urlencoded", status_code=415
        )
    try:
        body = await read_body(request, _MAX_FORM_BYTES)
    except BodyTooLargeError:
        return PlainTextResponse("413: form too large", status_code=413)
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        return PlainTextResponse("400: not a form", status_code=400)


@dataclass(frozen=True)
class _Located:
    """What an ``/assets/...`` URL names: the asset, what is asked, and the partition's key."""

    asset: AssetIndex
    what: str
    key: str


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def create_gallery_app(
    storage: str | os.PathLike[str] | UPath | ImageStore,
    *,
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    thumbnail_side: int = 320,
    refresh_s: float = 5.0,
    review_token: str | None = None,
    reviewer: str | None = None,
    ready_s: float = 1.0,
) -> Starlette:
    """The gallery over an image store (a folder, an fsspec URL, or an ``ImageStore``).

    ``cache_dir`` holds the thumbnails (default: :func:`default_cache_dir` of the root);
    ``refresh_s`` is how old the index (and the verdicts) may get before they are read again:
    with ``refresh_s > 0`` the index is brought up to date in a background thread (its file,
    ``index.sqlite``, is in ``cache_dir`` too), and the app waits up to ``ready_s`` for its
    first pass, then serves what is indexed so far; ``refresh_s=0`` brings it up to date at
    every request instead.
    ``review_token`` turns on verdicts (``--review``), written as ``reviewer`` (default: the
    user's login name); without it the gallery answers 405 to every write.
    """
    store = storage if isinstance(storage, ImageStore) else ImageStore(storage, storage_options)
    index = GalleryIndex(
        store,
        refresh_s=refresh_s,
        cache_dir=cache_dir if cache_dir is not None else default_cache_dir(str(store.root)),
    )
    if refresh_s > 0:
        index.start(wait_s=ready_s)
    verdicts = VerdictCache(store, refresh_s=refresh_s)
    access = (
        ReviewAccess(review_token, reviewer=reviewer or default_reviewer())
        if review_token is not None
        else None
    )
    thumbs = ThumbnailCache(
        cache_dir if cache_dir is not None else default_cache_dir(str(store.root)),
        thumbnail_side,
    )
    ledger = TaskLedger(store)

    def snapshot_assets() -> Mapping[str, AssetIndex]:
        return index.snapshot().assets

    def visitor(request: Request) -> Visitor:
        return access.visitor(request.cookies) if access is not None else Visitor()

    def home(request: Request) -> Response:
        return _html(
            pages.home_page(index.snapshot(), store=str(store.root), visitor=visitor(request))
        )

    def css(request: Request) -> Response:
        return Response(pages.CSS, media_type="text/css", headers={"cache-control": "max-age=300"})

    def script(request: Request) -> Response:
        return Response(
            SCRIPT, media_type="text/javascript", headers={"cache-control": "max-age=300"}
        )

    def stats(request: Request) -> Response:
        snapshot = index.snapshot()
        return JSONResponse(
            {
                "assets": len(snapshot.assets),
                "partitions": snapshot.images,
                "indexing": snapshot.indexing,
                "index_build_s": round(snapshot.build_s, 4),
                "index_files_read": index.indexer.files_read,
                "thumbnails_generated": thumbs.generated,
                "thumbnails_from_cache": thumbs.hits,
            }
        )

    def locate(request: Request) -> _Located | Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0][len("/assets/") :]
        head, sep, tail = path.partition("/-/")
        parts = [unquote(p) for p in head.strip("/").split("/")] if head.strip("/") else []
        asset = snapshot_assets().get("/".join(parts))
        if asset is None or any(not p or "/" in p for p in parts):
            return _not_found("No such asset in this store.")
        if not sep:
            if not path.endswith("/"):
                return RedirectResponse(request.url.path + "/", status_code=308)
            return _Located(asset, "", "")
        what, _, key = tail.partition("/")
        return _Located(asset, what, key)

    def item_of(located: _Located) -> GalleryItem | None:
        key = located.key
        return located.asset.get(unquote(key)) if "/" not in key else None

    def asset_routes(request: Request) -> Response:
        located = locate(request)
        if isinstance(located, Response):
            return located
        asset = located.asset
        query = Query.from_params(request.query_params)
        if not located.what:
            page = asset.select(query, verdicts.keep(asset, query.review))
            return _html(
                pages.asset_page(
                    asset,
                    query,
                    page,
                    verdicts.of(asset.asset),
                    visitor(request),
                    indexing=index.catalog.partitions() if index.indexing else None,
                )
            )
        if located.what == "export" and located.key == "picks.zip":
            return _export(asset)
        item = item_of(located)
        if item is None:
            return _not_found("No such partition in this asset.")
        if located.what == "partition":
            around = neighbours(
                asset, item.partition_key, query, verdicts.keep(asset, query.review)
            )
            history = read_records(store, item.asset, item.partition_key)
            shown = candidates_of(item, store)
            return _html(
                pages.partition_page(
                    item,
                    request.query_params.get("task"),
                    query=query,
                    around=around,
                    verdict=verdicts.of(asset.asset).get(item.partition_key),
                    history=history,
                    visitor=visitor(request),
                    candidates=shown,
                    failed=_failed_candidates(item, shown),
                )
            )
        if located.what == "thumbnail":
            wanted = request.query_params.get("candidate", "0")
            if wanted == "0":
                return _thumbnail(item)
            candidate = candidate_at(item, wanted, store)
            if candidate is None:
                return _not_found("No such candidate in this partition.")
            return _thumbnail(
                replace(item, partition_key=candidate.unit_key, record=candidate.record)
            )
        if located.what == "image":
            wanted = request.query_params.get("candidate", "0")
            candidate = candidate_at(item, wanted, store) if wanted != "0" else None
            if wanted != "0" and candidate is None:
                return _not_found("No such candidate in this partition.")
            return _image(
                item, download=request.query_params.get("download") == "1", candidate=candidate
            )
        return _not_found("No such page.")

    def _export(asset: AssetIndex) -> Response:
        name = quote(f"{'-'.join(asset.asset)}-picks.zip")
        return StreamingResponse(
            export_picks(store, asset, current_verdicts(store, asset.asset)),
            media_type="application/zip",
            headers={
                "content-disposition": f"attachment; filename*=UTF-8''{name}",
                "cache-control": "no-store",
            },
        )

    def _failed_candidates(
        item: GalleryItem, shown: Sequence[Candidate]
    ) -> list[tuple[int, LedgerEntry]]:
        """The candidates ``i >= 1`` with no stored image whose ledger entry says their task
        failed for good: the gaps among the stored ones, then upwards until a candidate the
        ledger does not know (one read for a partition of one image)."""
        have = {c.index for c in shown}
        failed: list[tuple[int, LedgerEntry]] = []
        for index in range(1, MAX_CANDIDATES):
            if index in have:
                continue
            entry = ledger.get(item.asset, candidate_key(item.partition_key, index))
            if entry is None:
                if index > max(have, default=0):
                    break
                continue
            if entry.status == LedgerStatus.FAILED:
                failed.append((index, entry))
        return failed

    def _thumbnail(item: GalleryItem) -> Response:
        data = thumbs.get(store, item) if item.has_image else None
        if data is None:
            return Response(b"", status_code=404)
        return Response(
            data, media_type="image/jpeg", headers={"cache-control": "public, max-age=86400"}
        )

    def _image(
        item: GalleryItem, *, download: bool = False, candidate: Candidate | None = None
    ) -> Response:
        read = read_image(store, item) if candidate is None else read_candidate(store, candidate)
        if read is None:
            return Response(b"", status_code=404)
        found, data = read
        headers = {"cache-control": "no-cache"}
        if found.sha256:
            headers["etag"] = f'"{found.sha256}"'
        if download:
            stem = file_stem(item.partition_key if candidate is None else candidate.unit_key)
            name = quote(f"{stem}{found.path.suffix}")
            headers["content-disposition"] = f"attachment; filename*=UTF-8''{name}"
        return Response(
            data,
            media_type=_MEDIA_TYPES.get(found.format, "application/octet-stream"),
            headers=headers,
        )

    async def assets(request: Request) -> Response:
        if request.method == "POST":
            return await verdict(request)
        return await run_in_threadpool(asset_routes, request)

    def refused(request: Request, message: str, status: int = 403) -> Response:
        if request.headers.get("authorization"):
            return JSONResponse({"error": message}, status_code=status)
        return _html(pages.message_page("Refused", message, visitor(request)), status)

    async def same_site_form(request: Request) -> dict[str, str] | Response:
        """The POST's form, or the answer refusing it (cross-site, too large, not a form)."""
        reason = cross_site_reason(request.headers, _own_origin(request))
        if reason is not None:
            return refused(request, f"cross-site request refused: {reason}")
        return await _form(request)

    async def verdict(request: Request) -> Response:
        assert access is not None  # _Guard lets a POST through only with --review
        located = await run_in_threadpool(locate, request)
        if isinstance(located, Response):
            return located
        item = item_of(located) if located.what == "verdict" else None
        if item is None:
            return _not_found("No such partition in this asset.")
        form = await same_site_form(request)
        if isinstance(form, Response):
            return form
        reason = access.refusal(request.headers, request.cookies, form)
        if reason is not None:
            return refused(request, reason)
        kind = form.get("verdict", "")
        candidate = None
        if kind == "pick":
            found = candidate_at(item, form.get("candidate", ""), store)
            if found is None:
                return _not_found("No such candidate in this partition.")
            candidate = found.index
        try:
            record = await run_in_threadpool(
                lambda: record_verdict(
                    store,
                    item.asset,
                    item.partition_key,
                    kind,
                    reviewer=access.reviewer,
                    candidate=candidate,
                    note=form.get("note", "").strip() if kind == "reject" else "",
                )
            )
        except NothingToUndoError as exc:
            return refused(request, str(exc), 409)
        except ReviewError as exc:
            return refused(request, str(exc), 400)
        finally:
            verdicts.forget(item.asset)
        if request.headers.get("authorization"):
            return JSONResponse(record.to_json(), status_code=201)
        back = Query.from_params(dict(parse_qsl(form.get("back", "")))).params(page=1)
        target = links.partition_url("", item.asset, item.partition_key)
        return RedirectResponse(target + ("?" + urlencode(back) if back else ""), 303)

    async def sign_in(request: Request) -> Response:
        if access is None:
            return _not_found("This gallery is read-only: it takes no verdicts.")
        next_path = request.query_params.get("next", "/")
        if request.method != "POST":
            return _html(pages.sign_in_page(_local(next_path)))
        form = await same_site_form(request)
        if isinstance(form, Response):
            return form
        if not access.token_matches(form.get("token", "")):
            return _html(pages.sign_in_page(_local(form.get("next", "/")), "Wrong token."), 403)
        answer = RedirectResponse(_local(form.get("next", "/")), 303)
        answer.set_cookie(
            SESSION_COOKIE, access.new_session(), httponly=True, samesite="strict", path="/"
        )
        return answer

    async def sign_out(request: Request) -> Response:
        form = await same_site_form(request)
        if isinstance(form, Response):
            return form
        answer = RedirectResponse("/", 303)
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/-/gallery.css", css),
            Route("/-/review.js", script),
            Route("/-/stats", stats),
            Route(links.SIGN_IN_PATH, sign_in, methods=["GET", "POST"]),
            Route(links.SIGN_OUT_PATH, sign_out, methods=["POST"]),
            Route("/assets/{rest:path}", assets, methods=["GET", "POST"]),
        ]
    )
    app.add_middleware(_Guard, review=access is not None)
    app.state.index = index
    app.state.thumbnails = thumbs
    app.state.review = access
    return app


def _local(path: str) -> str:
    """``path`` when it is a path of this gallery (no other host), else ``/``."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


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
        self.app.state.index.close()
        if self._tmp is not None:
            self._tmp.cleanup()
