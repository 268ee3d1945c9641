"""The gallery's HTML: every value from the store goes through :func:`html.escape`.

Prompts are user data: they are escaped in text and in attributes, and the pages carry no script at
all (the app's Content-Security-Policy forbids scripts), so an injection prompt shows as text.

>>> from zimage_dagster.engine.provenance import ImageRecord
>>> from zimage_dagster.gallery.index import GalleryItem
>>> record = ImageRecord(seed=7, task_id="t1", prompt="<script>alert(1)</script> a fox")
>>> page = partition_page(GalleryItem(("hero",), "fox", "stored", record))
>>> "&lt;script&gt;alert(1)&lt;/script&gt; a fox" in page, "<script>" in page
(True, False)
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Iterable, Sequence
from html import escape
from urllib.parse import urlencode

from zimage_dagster.gallery import links
from zimage_dagster.gallery.index import (
    ORDERS,
    STATUSES,
    AssetIndex,
    GalleryItem,
    Page,
    Query,
    Snapshot,
)

__all__ = ["CSS", "asset_page", "home_page", "not_found_page", "partition_page"]

#: Where a reproduced request goes (the real API; the key comes from the environment).
API_CREATE_URL = "https://api.evolink.ai/v1/images/generations"

CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa;
  --accent: #4f43dd; --bad: #b42318; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
  background: #fff; }
header.top { display: flex; gap: 16px; align-items: baseline; padding: 12px 24px;
  border-bottom: 1px solid var(--line); background: var(--bg); }
header.top a.brand { font-weight: 700; color: var(--ink); text-decoration: none; }
main { padding: 16px 24px 48px; }
a { color: var(--accent); }
h1 { font-size: 22px; margin: 4px 0 12px; word-break: break-word; }
h2 { font-size: 17px; margin: 24px 0 8px; }
.muted { color: var(--muted); }
.counts span { margin-right: 12px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px;
  border: 1px solid var(--line); background: #fff; }
.badge.stored { border-color: #1a7f37; color: #1a7f37; }
.badge.failed { border-color: var(--bad); color: var(--bad); }
.badge.pending { border-color: var(--warn); color: var(--warn); }
.badge.expired { border-color: var(--muted); color: var(--muted); }
.strip { display: flex; gap: 8px; overflow-x: auto; padding: 4px 0 12px; }
.strip img { height: 120px; width: auto; border-radius: 4px; background: var(--bg); }
.asset { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin-bottom: 16px; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin-bottom: 12px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters input, form.filters select, form.filters button { font: inherit; padding: 4px 8px; }
form.filters input[name=q] { width: 280px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; overflow: hidden; background: #fff; }
.card a.pic { display: flex; align-items: center; justify-content: center; height: 220px;
  background: var(--bg); text-decoration: none; color: var(--muted); }
.card a.pic img { max-width: 100%; max-height: 220px; width: auto; height: auto; }
.card .nopic { padding: 12px; text-align: center; overflow-wrap: anywhere; }
.card .caption { padding: 8px 10px; font-size: 13px; }
.card .key { font-weight: 600; overflow-wrap: anywhere; }
.card .prompt { color: var(--muted); display: -webkit-box; -webkit-line-clamp: 3;
  -webkit-box-orient: vertical; overflow: hidden; overflow-wrap: anywhere; }
.pager { display: flex; gap: 16px; margin: 16px 0; align-items: center; }
.full { display: inline-block; overflow: auto; max-width: 100%; border: 1px solid var(--line); background: var(--bg); }
.full img { display: block; }
table.facts { border-collapse: collapse; margin: 8px 0; }
table.facts th { text-align: left; color: var(--muted); font-weight: 500; padding: 3px 16px 3px 0;
  vertical-align: top; white-space: nowrap; }
table.facts td { padding: 3px 0; overflow-wrap: anywhere; }
.prompt-text { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 16px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 10px; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.error { border: 1px solid var(--bad); border-radius: 8px; padding: 12px 16px; background: #fff5f5; }
.error .code { font-family: ui-monospace, monospace; color: var(--bad); }
.note { border-left: 3px solid var(--warn); padding: 4px 12px; background: #fffbea; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
"""


def _text(value: object) -> str:
    return escape(str(value), quote=True)


def _when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _layout(title: str, body: str, crumbs: Sequence[tuple[str, str]] = ()) -> str:
    trail = "".join(f' / <a href="{_text(href)}">{_text(label)}</a>' for href, label in crumbs)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_text(title)} · zimage gallery</title>"
        "<link rel='stylesheet' href='/-/gallery.css'></head><body>"
        f"<header class='top'><a class='brand' href='/'>zimage gallery</a><span>{trail}</span>"
        f"</header><main>{body}</main></body></html>"
    )


def _badge(status: str) -> str:
    return (
        f"<span class='badge {_text(status)}' data-status='{_text(status)}'>{_text(status)}</span>"
    )


def _thumb(item: GalleryItem, *, lazy: bool = True) -> str:
    record = item.record
    version = (record.sha256 or record.task_id)[:16] if record else ""
    src = links.thumbnail_url("", item.asset, item.partition_key) + f"?v={_text(version)}"
    loading = " loading='lazy'" if lazy else ""
    return f"<img src='{src}'{loading} alt='{_text(item.prompt[:200])}'>"


def _counts(index: AssetIndex) -> str:
    counts = index.counts()
    shown = [f"<span>{counts[s]} {_text(s)}</span>" for s in STATUSES if counts[s]]
    return f"<div class='counts muted'>{''.join(shown) or 'nothing yet'}</div>"


def home_page(snapshot: Snapshot, strip: int = 8) -> str:
    """Every asset of the store, with a strip of its latest thumbnails."""
    blocks = []
    for index in snapshot.assets.values():
        grid = links.asset_path(index.asset)
        thumbs = "".join(
            f"<a href='{links.partition_url('', i.asset, i.partition_key)}'>{_thumb(i)}</a>"
            for i in index.latest(strip)
        )
        blocks.append(
            f"<section class='asset' data-asset='{_text(index.name)}'>"
            f"<h2><a href='{grid}'>{_text(index.name)}</a></h2>{_counts(index)}"
            f"<div class='strip'>{thumbs}</div></section>"
        )
    body = "<h1>Assets</h1>" + (
        "".join(blocks) or "<p class='muted'>No image in this store yet.</p>"
    )
    return _layout("Assets", body)


def _select(name: str, label: str, current: str, options: Iterable[tuple[str, str]]) -> str:
    opts = "".join(
        f"<option value='{_text(v)}'{' selected' if v == current else ''}>{_text(t)}</option>"
        for v, t in options
    )
    return f"<label>{_text(label)}<select name='{name}'>{opts}</select></label>"


def _filters(index: AssetIndex, query: Query) -> str:
    dates = index.dates()
    date = (
        _select("date", "Date", query.date, [("", "any"), *((d, d) for d in dates)])
        if dates
        else ""
    )
    return (
        f"<form class='filters' method='get' action='{links.asset_path(index.asset)}' role='search'>"
        f"<label>Search prompts<input type='search' name='q' value='{_text(query.q)}'"
        " placeholder='words in the prompt'></label>"
        f"<label>Partition<input name='partition' value='{_text(query.partition)}'"
        " placeholder='part of the key'></label>"
        f"{date}"
        + _select("status", "Status", query.status, [("", "any"), *((s, s) for s in STATUSES)])
        + _select("size", "Size", query.size, [("", "any"), *((s, s) for s in index.sizes())])
        + _select("order", "Order", query.order, [(o, o) for o in ORDERS])
        + "<button type='submit'>Show</button></form>"
    )


def _card(item: GalleryItem) -> str:
    href = links.partition_url("", item.asset, item.partition_key)
    if item.has_image:
        pic = _thumb(item)
    else:
        detail = item.error_code or item.status
        pic = f"<div class='nopic'>{_text(detail)}</div>"
    seed = f"seed {item.seed} · " if item.seed is not None else ""
    return (
        f"<article class='card' data-key='{_text(item.partition_key)}' data-status='{_text(item.status)}'>"
        f"<a class='pic' href='{href}'>{pic}</a><div class='caption'>"
        f"<div class='key' title='{_text(item.partition_key)}'>{_text(item.partition_key)}</div>"
        f"<div class='muted'>{_text(seed)}{_text(item.size)} {_badge(item.status)}</div>"
        f"<div class='prompt' title='{_text(item.prompt[:500])}'>{_text(item.prompt)}</div>"
        "</div></article>"
    )


def asset_page(index: AssetIndex, query: Query, page: Page) -> str:
    """The asset's grid: filters, one card per partition, and a pager."""
    base = links.asset_path(index.asset)

    def to(n: int) -> str:
        return base + "?" + urlencode(query.params(page=n))

    pager = (
        "<nav class='pager'>"
        + (f"<a rel='prev' href='{_text(to(page.page - 1))}'>← newer</a>" if page.page > 1 else "")
        + f"<span class='muted'>page {page.page} of {page.pages}</span>"
        + (
            f"<a rel='next' href='{_text(to(page.page + 1))}'>next →</a>"
            if page.page < page.pages
            else ""
        )
        + "</nav>"
    )
    cards = "".join(_card(i) for i in page.items) or "<p class='muted'>Nothing matches.</p>"
    body = (
        f"<h1>{_text(index.name)}</h1>{_counts(index)}{_filters(index, query)}"
        f"<p class='muted' id='found'>{page.total} of {len(index.items)} partitions</p>"
        f"<div class='grid'>{cards}</div>{pager}"
    )
    return _layout(index.name, body, [(base, index.name)])


def _rows(rows: Iterable[tuple[str, object]]) -> str:
    return "".join(
        f"<tr data-fact='{_text(k)}'><th>{_text(k)}</th><td>{_text(v)}</td></tr>"
        for k, v in rows
        if v is not None and v != ""
    )


def request_json(item: GalleryItem) -> dict[str, object]:
    """The create request that reproduces the partition's image (same prompt, size and seed)."""
    record, entry = item.record, item.entry
    if record is not None and item.status == "stored":
        return {
            "model": record.model,
            "prompt": record.prompt,
            "size": record.size_requested,
            "seed": record.seed,
            "nsfw_check": record.nsfw_check,
        }
    request = dict(entry.request) if entry is not None else {}
    return {"model": request.pop("model", "z-image-turbo"), **request}


def _earlier(item: GalleryItem) -> str:
    rows = []
    if item.entry is not None:
        for p in item.entry.previous:
            message = f"{p.error_code or ''} {p.error_message or ''}".strip()
            rows.append(
                f"<tr><td class='mono'>{_text(p.task_id)}</td><td>{_badge(p.status.value)}</td>"
                f"<td>{_text(_when(p.submitted_at))}</td><td>{_text(message)}</td></tr>"
            )
    known = {p.task_id for p in item.entry.previous} if item.entry else set()
    if item.record is not None:
        for task_id in item.record.previous_task_ids:
            if task_id not in known:
                rows.append(
                    f"<tr><td class='mono'>{_text(task_id)}</td><td></td><td></td><td></td></tr>"
                )
    if not rows:
        return ""
    return (
        "<h2>Earlier tasks</h2><table class='facts' id='earlier'><tr><th>task ID</th><th>status</th>"
        f"<th>submitted</th><th>message</th></tr>{''.join(rows)}</table>"
    )


def partition_page(item: GalleryItem, wanted_task: str | None = None) -> str:
    """A partition: the image at its natural size and all its facts, or the provider's message."""
    record, entry = item.record, item.entry
    parts = [f"<h1>{_text(item.partition_key)} {_badge(item.status)}</h1>"]
    if wanted_task and record is not None and wanted_task != record.task_id:
        parts.append(
            f"<p class='note' id='replaced'>This link was made for task {_text(wanted_task)}; "
            f"the partition's stored image is now from task {_text(record.task_id)}.</p>"
        )
    if item.status in ("failed", "pending", "expired") and entry is not None:
        what = {
            "failed": "The provider could not make this image.",
            "pending": "The task is not finished (or not collected) yet.",
            "expired": "The task's result link expired before the image was collected: "
            "the next run regenerates it with the same seed.",
        }[item.status]
        parts.append(
            f"<section class='error' id='status'><p>{_text(what)}</p>"
            + (f"<p class='code'>{_text(entry.error_code)}</p>" if entry.error_code else "")
            + (
                f"<p class='message' id='provider-message'>{_text(entry.error_message)}</p>"
                if entry.error_message
                else ""
            )
            + "<table class='facts'>"
            + _rows(
                [
                    ("task ID", entry.task_id),
                    ("attempt", entry.attempt),
                    ("submitted", _when(entry.submitted_at)),
                    ("updated", _when(entry.updated_at)),
                ]
            )
            + "</table></section>"
        )
    parts.append(f"<h2>Prompt</h2><p class='prompt-text' id='prompt'>{_text(item.prompt)}</p>")
    if record is not None:
        src = links.image_url("", item.asset, item.partition_key)
        version = (record.sha256 or record.task_id)[:16]
        size = f" width='{record.width}' height='{record.height}'" if record.width else ""
        parts.append(
            f"<div class='full'><img id='image' src='{src}?v={_text(version)}'{size}"
            f" alt='{_text(item.prompt[:200])}'></div>"
        )
        timings = [
            (f"{name} (s)", getattr(record, f"{name}_s"))
            for name in ("queued", "generating", "downloading")
        ]
        parts.append(
            "<h2>Image</h2><table class='facts' id='facts'>"
            + _rows(
                [
                    ("partition key", item.partition_key),
                    ("seed", record.seed),
                    ("task ID", record.task_id),
                    ("model", record.model),
                    ("size requested", record.size_requested),
                    ("size", f"{record.width}x{record.height}" if record.width else None),
                    ("format", record.format),
                    ("bytes", record.bytes),
                    ("sha256", record.sha256),
                    ("created", _when(record.created_at)),
                    *timings,
                    ("polls", record.polls),
                    ("attempts", record.attempts),
                    ("credits reserved", record.credits_reserved),
                    ("reused", record.reused),
                    ("regenerated", record.regenerated),
                    ("nsfw check", record.nsfw_check),
                    *((str(k), v) for k, v in record.extra.items()),
                ]
            )
            + "</table>"
        )
    parts.append(_earlier(item))
    request = request_json(item)
    body = json.dumps(request, indent=2, ensure_ascii=False)
    curl = (
        f"curl -s {API_CREATE_URL} -H 'Authorization: Bearer '\"$ZIMAGE_API_KEY\" "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(request, ensure_ascii=False))}"
    )
    parts.append(
        "<h2>Reproduce</h2><p class='muted'>The same request (prompt, size, seed) makes the same "
        f"image.</p><pre id='request'>{_text(body)}</pre><pre id='curl'>{_text(curl)}</pre>"
    )
    grid = links.asset_path(item.asset)
    return _layout(
        item.partition_key,
        "".join(parts),
        [
            (grid, item.asset_name),
            (links.partition_url("", item.asset, item.partition_key), item.partition_key),
        ],
    )


def not_found_page(what: str) -> str:
    """404."""
    return _layout("Not found", f"<h1>Not found</h1><p>{_text(what)}</p>")
